"""The guard and the matcher without the model: which details refuse a hit, and which
differences (politeness, case, typos, a moved clause) do not."""

from __future__ import annotations

import pytest
from clasp_cache.semantic.guard import overlap, refusal, similar
from clasp_cache.semantic.matcher import Matcher, MatcherSettings
from clasp_cache.semantic.request import split_request
from clasp_cache.semantic.tokens import for_embedding, read

REFUSED = [
    ("Convert 100 degrees Celsius to Fahrenheit.", "Convert 10 degrees Celsius to Fahrenheit.", "number"),
    ("Is 2024 a leap year?", "Is 2023 a leap year?", "number"),
    ("Scale the web deployment to 5 replicas", "Scale the web deployment to three replicas", "number"),
    ("Weighs 70 kg and is 1.75 m tall", "Weighs 1.75 kg and is 70 m tall", "number"),
    ("Fix the failing test in tests/test_api.py", "Fix the failing test in tests/test_auth.py", "path"),
    ("Add a GET /health endpoint", "Add a GET /status endpoint", "path"),
    ("Explain the function load_settings", "Explain the function save_settings", "identifier"),
    ("What is the difference between asyncio.gather and asyncio.wait?",
     "What is the difference between asyncio.gather and asyncio.wait_for?", "identifier"),
    ("How do I reverse a list in Python?", "How do I reverse a list in Rust?", "language"),
    ("Translate 'hello' into French.", "Translate 'hello' into German.", "language"),
    ("Translate 'good morning' into French.", "Translate 'good evening' into French.", "quoted"),
    ("What does `git rebase -i HEAD~3` do?", "What does `git rebase -i HEAD~5` do?", "code"),
    ("Why does this print None?\n```python\nprint(f(3))\n```", "Why does this print None?\n```python\nprint(f(4))\n```", "code"),
    ("Sort this array in descending order: [3, 1, 2]", "Sort this array in descending order: [1, 3, 2]", "code"),
    ("Run the tests and summarise the failures", "Don't run the tests, summarise the failures", "negation"),
    ("Generate a password with symbols", "Generate a password without symbols", "negation"),
    ("How do I enable CORS in FastAPI?", "How do I disable CORS in FastAPI?", "contrast"),
    ("Add logging to the retry loop", "Remove logging from the retry loop", "contrast"),
    ("Find the maximum value in the array", "Find the minimum value in the array", "contrast"),
    ("Convert this JSON to YAML", "Convert this YAML to JSON", "language"),
    ("Convert 100 degrees Celsius to Fahrenheit", "Convert 100 degrees Fahrenheit to Celsius", "swap"),
    ("Is a blue whale bigger than an elephant?", "Is an elephant bigger than a blue whale?", "swap"),
    ("What time is it in Tokyo when it is 9am in London?", "What time is it in London when it is 9am in Tokyo?", "order"),
    # conservative: two names trading places is refused even when the clause moved with them
    ("What time is it in Tokyo when it is 9am in London?", "If it's 9am in London, what time is it in Tokyo?", "order"),
    ("What is the capital of France?", "What is the capital of Germany?", "name"),
    ("Read config.yaml and tell me which port the server listens on",
     "Read config.yaml and tell me which host the server listens on", "substitution"),
    ("How do I find the maximum value in a NumPy array?",
     "How do I find the index of the maximum value in a NumPy array?", "addition"),
]

ACCEPTED = [
    ("How do I reverse a list in Python?", "how do i reverse a list in python"),
    ("How do I reverse a list in Python?", "In Python, how do I reverse a list?"),
    ("Fix the failing test in tests/test_api.py", "Please fix the failing test in tests/test_api.py. Thanks!"),
    ("Add logging to the retry loop in client.py", "Add logging to the rerty loop in client.py"),
    ("Scale the web deployment to 5 replicas", "Scale the web deployment to five replicas"),
    ("What is the monthly payment on a $300,000 mortgage at 6% over 30 years?",
     "Monthly payment for a 30-year $300,000 mortgage at 6 percent?"),
    ("Is 2024 a leap year?", "2024: leap year or not?"),
    ("Write a recursive Fibonacci function in Python.", "Could you write a recursive Python function computing Fibonacci?"),
]


@pytest.mark.parametrize(("stored", "query", "reason"), REFUSED, ids=[r[2] + ":" + r[1][:30] for r in REFUSED])
def test_the_guard_refuses_a_changed_detail(stored: str, query: str, reason: str) -> None:
    assert refusal(read(stored), read(query)) == reason
    assert refusal(read(query), read(stored)) == reason  # both directions


@pytest.mark.parametrize(("stored", "query"), ACCEPTED, ids=[a[1][:40] for a in ACCEPTED])
def test_the_guard_lets_rewordings_through(stored: str, query: str) -> None:
    assert refusal(read(stored), read(query)) is None
    assert refusal(read(query), read(stored)) is None


def test_overlap_matches_typos_and_stems() -> None:
    assert overlap(read("Deploy the current branch to staging"), read("Deploy the current barnch to stagng")) == 1.0
    assert overlap(read("failing tests"), read("the test fails")) == 1.0
    assert overlap(read("capital of France"), read("weather in Spain")) == 0.0
    assert similar("branch", "barnch") and similar("staging", "stagng") and not similar("port", "host")
    assert not similar("cat", "car")  # short words are never "typos" of each other


def test_the_matcher_combines_cosine_guard_and_overlap() -> None:
    m = Matcher(MatcherSettings(threshold=0.6, threshold_reworded=0.86, min_overlap=0.6))
    assert m.judge("Is 2024 a leap year?", "Is 2024 a leap year?", 0.0).reason == "exact"
    assert m.judge("Is 2023 a leap year?", "Is 2024 a leap year?", 0.99).reason == "number"
    assert m.judge("is 2024 a leap year", "Is 2024 a leap year?", 0.65).hit  # every content word matches
    assert not m.judge("is 2024 a leap year", "Is 2024 a leap year?", 0.55).hit
    reworded = m.judge("Which city is the capital of France?", "What is the capital of France?", 0.85)
    assert not reworded.hit and m.judge("Which city is the capital of France?", "What is the capital of France?", 0.9).hit
    assert m.judge("Tell me about the weather in Paris", "What is the capital of France?", 0.95).reason == "name"


def test_politeness_is_not_embedded() -> None:
    assert for_embedding("Hi! Could you please explain closures in JavaScript? Thanks in advance!") == \
        "explain closures in JavaScript?"
    assert for_embedding("Thank you.") == "Thank you."  # nothing else: kept as is


def test_the_request_split_scopes_everything_but_the_last_turn() -> None:
    def req(last: str, *, system: str = "s", tools: list[str] | None = None, temperature: float = 0) -> dict[str, object]:
        return {"model": "m", "temperature": temperature, "stream": True, "metadata": {"user_id": "u"},
                "tools": [{"type": "function", "function": {"name": t}} for t in (tools or ["Read"])],
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": "earlier"},
                             {"role": "assistant", "content": "ok"}, {"role": "user", "content": last}]}

    base = split_request(req("Explain X"), tenant="team:a", route="r")
    assert base is not None and base.text == "Explain X"
    assert split_request(req("Explain Y"), tenant="team:a", route="r").scope == base.scope  # type: ignore[union-attr]
    for other in (split_request(req("Explain X", system="t"), tenant="team:a", route="r"),
                  split_request(req("Explain X", tools=["Read", "Bash"]), tenant="team:a", route="r"),
                  split_request(req("Explain X", temperature=0.5), tenant="team:a", route="r"),
                  split_request(req("Explain X"), tenant="team:b", route="r"),
                  split_request(req("Explain X"), tenant="team:a", route="r2")):
        assert other is not None and other.scope != base.scope
    unstreamed = {**req("Explain X"), "stream": False, "metadata": {"user_id": "other"}}
    assert split_request(unstreamed, tenant="team:a", route="r").scope == base.scope  # type: ignore[union-attr]

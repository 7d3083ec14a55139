"""Request classes: one primary class per request, every matching class as a trait."""

from __future__ import annotations

import pytest

from clasp_gateway.classes import Classifier, RequestClass, build_classifier, features
from clasp_gateway.types import RequestHints

TOOLS = [{"type": "function", "function": {"name": "Bash", "parameters": {"type": "object"}}}]


def classify(request: dict, hints: RequestHints | None = None, **settings: int) -> tuple[str, frozenset[str]]:
    return build_classifier(dict(settings)).classify(features(request, hints))


def test_claude_code_quota_probe_and_titles_are_background() -> None:
    assert classify({"messages": [{"role": "user", "content": "quota"}], "max_tokens": 1})[0] == "background"
    assert classify({"messages": [{"role": "user", "content": "title?"}], "max_tokens": 512})[0] == "background"
    # The format plugin's own hint wins even with a large max_tokens.
    assert classify({"messages": [{"role": "user", "content": "x"}]}, RequestHints(task="background"))[0] == "background"


def test_a_structured_answer_without_tools_is_background_unless_long() -> None:
    """Claude Code 2.1's session title: no tools, ``max_tokens: 128000``, an effort, and
    a JSON schema for the answer (``output_config.format``, a hint once translated)."""
    title = {"messages": [{"role": "system", "content": "You are naming a coding session"},
                          {"role": "user", "content": "<session>fix the login bug</session>"}], "max_tokens": 128000}
    hints = RequestHints(reasoning_effort="medium", structured_output=True)
    assert classify(title, hints)[0] == "background"
    assert classify(title, RequestHints(reasoning_effort="medium"))[0] == "thinking"  # no schema: a question
    schema = {"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "object"}}}
    assert classify({**title, "response_format": schema})[0] == "background"  # OpenAI's spelling
    assert classify({**title, "response_format": {"type": "text"}})[0] == "question"
    assert classify({**title, "response_format": schema}, long_context_tokens=5)[0] == "long_context"
    assert classify({**title, "response_format": schema, "tools": TOOLS})[0] == "coding"


def test_a_coding_turn_that_asks_for_thinking_is_coding() -> None:
    """Claude Code's main loop always sends an effort (or ``thinking``): tools decide."""
    turn = {"messages": [{"role": "user", "content": "run the tests"}], "tools": TOOLS, "max_tokens": 128000}
    primary, traits = classify(turn, RequestHints(reasoning_effort="medium"))
    assert primary == "coding" and {"coding", "thinking"} <= traits


def test_a_small_max_tokens_with_tools_is_a_coding_turn_not_background() -> None:
    primary, traits = classify({"messages": [{"role": "user", "content": "ls"}], "tools": TOOLS, "max_tokens": 100})
    assert primary == "coding"
    assert "background" not in traits


def test_priority_and_traits() -> None:
    big = "word " * 500_000  # ~625k tokens by the estimate
    request = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": big},
                                                  {"type": "image_url", "image_url": {"url": "data:"}}]}],
        "tools": TOOLS, "reasoning_effort": "high", "max_tokens": 32000,
    }
    primary, traits = classify(request)
    assert primary == "long_context"
    assert traits == {"long_context", "images", "thinking", "coding", "question"}


def test_thresholds_come_from_settings() -> None:
    request = {"messages": [{"role": "user", "content": "x" * 4000}], "max_tokens": 2000}
    assert classify(request)[0] == "question"
    assert classify(request, long_context_tokens=1000)[0] == "long_context"
    assert classify(request, background_max_tokens=4096)[0] == "background"


def test_thinking_from_hints() -> None:
    request = {"messages": [{"role": "user", "content": "why?"}], "max_tokens": 8000}
    assert classify(request, RequestHints(thinking_budget=4000))[0] == "thinking"


def test_plugin_classes_go_first_or_after_a_named_class() -> None:
    review = RequestClass("review", lambda f: f.tools > 0 and f.tool_results == 0)
    late = RequestClass("late", lambda f: True)
    classifier = build_classifier({}, [(review, None), (late, "coding")])
    assert classifier.names[:2] == ["review", "background"]
    assert classifier.names.index("late") == classifier.names.index("coding") + 1
    request = {"messages": [{"role": "user", "content": "review"}], "tools": TOOLS, "max_tokens": 4000}
    assert classifier.classify(features(request))[0] == "review"


def test_a_raising_predicate_never_fails_the_request() -> None:
    def boom(_: object) -> bool:
        raise RuntimeError("plugin bug")

    classifier = build_classifier({}, [(RequestClass("broken", boom), None)])
    assert classifier.classify(features({"messages": []}))[0] == "question"


def test_duplicate_and_dangling_names_are_errors() -> None:
    with pytest.raises(ValueError, match="twice"):
        Classifier([RequestClass("a", bool), RequestClass("a", bool)])
    with pytest.raises(ValueError, match="names no class"):
        build_classifier({}, [(RequestClass("x", bool), "nope")])


def test_malformed_requests_do_not_raise() -> None:
    feats = features({"messages": "not a list", "tools": {"x": 1}, "max_tokens": "9"})
    assert feats.messages == 0 and feats.tools == 0 and feats.max_tokens is None


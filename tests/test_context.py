"""Context windows: trimming rules, rerouting, summaries, upstream overflows.

Unit tests check the trimming rules on Claude-Code-like histories (translated by the
real clasp-claude translator); gateway tests drive the anthropic SDK through a real
gateway to fake upstreams whose deployments declare tiny windows
(``max_input_tokens`` overrides), and check the ``x-clasp-context`` header and what
went upstream.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from clasp_claude.request import to_canonical

from clasp_gateway import hookimpl, strip_marks
from clasp_gateway.config import ConfigError
from clasp_gateway.errors import UpstreamError
from clasp_gateway.shaping.context import (
    CHARS_PER_TOKEN,
    choose_drops,
    drop_groups,
    estimate_tokens,
    is_context_overflow,
    overflow_error,
)
from clasp_gateway.shaping.tokens import count_canonical, get_encoding
from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import GATEWAY_KEY, Error, FakeUpstream, GatewayServer, Text, config_from

UPSTREAM_KEY = "sk-upstream-test-1234567890"
MODEL = "claude-sonnet-4-5"

TOOLS: list[dict[str, Any]] = [
    {
        "name": "Bash",
        "description": "Executes a given bash command and returns its output.",
        "input_schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"command": {"type": "string"}, "description": {"type": "string"}},
            "required": ["command"],
            "additionalProperties": False,
        },
    },
    {
        "name": "Read",
        "description": "Reads a file from the local filesystem.",
        "input_schema": {
            "type": "object",
            "properties": {"file_path": {"type": "string"}, "offset": {"type": "number"}},
            "required": ["file_path"],
        },
    },
]
SYSTEM = [
    {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
    {"type": "text", "text": "You help with software engineering tasks. Be concise.", "cache_control": {"type": "ephemeral"}},
]


def _output(turn: int, step: str, lines: int) -> str:
    return "\n".join(
        f"src/module_{turn}/{step}_{i}.py:{i * 7}: def handler_{turn}_{i}(request): return render(request, 'page_{i}.html')"
        for i in range(lines)
    )


def claude_code_messages(turns: int, *, lines: int = 12, final_prompt: bool = True) -> list[dict[str, Any]]:
    """An Anthropic history like Claude Code's: per turn a prompt with a
    system-reminder, a Bash call, two parallel Reads (one failing), thinking, an answer."""
    messages: list[dict[str, Any]] = []
    for t in range(turns):
        messages.append({"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>The user opened src/app.py</system-reminder>"},
            {"type": "text", "text": f"Task {t}: find why handler_{t} renders the wrong page and fix it."},
        ]})
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": f"Let me search module_{t}."},
            {"type": "tool_use", "id": f"toolu_{t}_grep", "name": "Bash",
             "input": {"command": f"grep -rn handler_{t} src/", "description": "search"}},
        ]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{t}_grep", "content": _output(t, "grep", lines)},
        ]})
        messages.append({"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Two files to read.", "signature": "sig"},
            {"type": "tool_use", "id": f"toolu_{t}_r1", "name": "Read", "input": {"file_path": f"/src/module_{t}/a.py"}},
            {"type": "tool_use", "id": f"toolu_{t}_r2", "name": "Read", "input": {"file_path": f"/src/module_{t}/b.py"}},
        ]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{t}_r1", "content": [{"type": "text", "text": _output(t, "read", lines)}]},
            {"type": "tool_result", "tool_use_id": f"toolu_{t}_r2", "content": "File does not exist.", "is_error": True},
        ]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": f"Fixed handler_{t}: it now renders page_{t}."}]})
    if final_prompt:
        messages.append({"role": "user", "content": "Now run the whole test suite and report."})
    return messages


def agentic_session(steps: int, *, lines: int = 12) -> list[dict[str, Any]]:
    """One prompt then many tool steps: the last message is a tool result."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Refactor every handler in src/."}]
    for s in range(steps):
        messages.append({"role": "assistant", "content": [
            {"type": "tool_use", "id": f"toolu_s{s}", "name": "Bash", "input": {"command": f"sed -n 1,80p src/h{s}.py"}},
        ]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_s{s}", "content": _output(s, "step", lines)},
        ]})
    return messages


def canonical(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The canonical messages as an OpenAI upstream gets them (cache breakpoints stripped)."""
    body = {"model": MODEL, "max_tokens": 1000, "system": SYSTEM, "tools": TOOLS, "messages": messages}
    return list(strip_marks(to_canonical(body).body)["messages"])


# --- what makes a trimmed history valid --------------------------------------------------------


def assert_valid_trim(original: list[dict[str, Any]], kept: list[dict[str, Any]]) -> None:
    """Pair integrity and the never-dropped messages."""
    ids = [id(m) for m in original]
    kept_ids = {id(m) for m in kept}
    head = 0
    while head < len(original) and original[head]["role"] == "system":
        head += 1
    assert all(id(m) in kept_ids for m in original[:head]), "a leading system message was dropped"
    last_user = max((i for i, m in enumerate(original) if m["role"] == "user"), default=None)
    if last_user is not None:
        assert id(original[last_user]) in kept_ids, "the last user message was dropped"
    assert id(original[-1]) in kept_ids, "the most recent message was dropped"
    for i, message in enumerate(kept):
        if message["role"] == "assistant" and message.get("tool_calls"):
            call_ids = [c["id"] for c in message["tool_calls"]]
            answers = kept[i + 1 : i + 1 + len(call_ids)]
            assert [m["role"] for m in answers] == ["tool"] * len(call_ids), f"calls {call_ids} lost their results"
            assert [m["tool_call_id"] for m in answers] == call_ids
        if message["role"] == "tool":
            j = i - 1
            while j >= 0 and kept[j]["role"] == "tool":
                j -= 1
            assert j >= 0 and kept[j]["role"] == "assistant" and kept[j].get("tool_calls"), "orphaned tool result"
            assert message["tool_call_id"] in [c["id"] for c in kept[j]["tool_calls"]]
        if i and message["role"] == "user" and kept[i - 1]["role"] == "user":
            a, b = ids.index(id(kept[i - 1])), ids.index(id(message))
            assert b == a + 1, "trimming put two user messages side by side"


def apply(messages: list[dict[str, Any]], dropped: set[int]) -> list[dict[str, Any]]:
    return [m for i, m in enumerate(messages) if i not in dropped]


@pytest.mark.parametrize(
    "history",
    [
        pytest.param(lambda: claude_code_messages(6), id="multi-turn"),
        pytest.param(lambda: claude_code_messages(5, final_prompt=False), id="ends-with-answer"),
        pytest.param(lambda: agentic_session(20), id="one-prompt-many-tool-steps"),
        pytest.param(lambda: claude_code_messages(3) + agentic_session(4)[1:], id="mixed"),
    ],
)
def test_every_drop_prefix_keeps_pairs_intact(history: Any) -> None:
    messages = canonical(history())
    groups = drop_groups(messages)
    assert groups, "a long history must have something to drop"
    dropped: set[int] = set()
    assert_valid_trim(messages, apply(messages, dropped))
    for group in groups:
        assert not dropped & set(group), "a message is in two groups"
        dropped |= set(group)
        assert_valid_trim(messages, apply(messages, dropped))
    # Oldest first (a turn's user message leaves with the turn's last unit).
    lasts = [max(g) for g in groups]
    assert lasts == sorted(lasts)


def test_groups_keep_each_call_with_its_results() -> None:
    messages = canonical(claude_code_messages(2))
    roles = [m["role"] for m in messages]
    assert roles[:2] == ["system", "user"]
    groups = drop_groups(messages)
    for group in groups:
        for i in group:
            if messages[i]["role"] == "assistant" and messages[i].get("tool_calls"):
                n = len(messages[i]["tool_calls"])
                assert set(range(i, i + 1 + n)) <= set(group)
    # The first turn's user message leaves together with that turn's last unit.
    first_user = roles.index("user")
    [with_user] = [g for g in groups if first_user in g]
    assert len(with_user) > 1 and messages[with_user[-1]]["role"] == "assistant"


def test_agentic_session_keeps_the_prompt_and_the_last_step() -> None:
    messages = canonical(agentic_session(10))
    groups = drop_groups(messages)
    everything = {i for g in groups for i in g}
    assert 1 not in everything  # the only user message
    assert len(messages) - 1 not in everything and len(messages) - 2 not in everything  # the last call + result
    assert len(groups) == 9  # every other step may go, one call+result at a time


def test_random_histories_stay_valid() -> None:
    rng = random.Random(7)
    for _ in range(200):
        messages: list[dict[str, Any]] = [{"role": "system", "content": "sys"}]
        n_calls = 0
        for _ in range(rng.randint(1, 25)):
            kind = rng.choice(["user", "user", "text", "calls", "calls", "system"])
            if kind == "user":
                messages.append({"role": "user", "content": "u"})
            elif kind == "text":
                messages.append({"role": "assistant", "content": "a"})
            elif kind == "system":
                messages.append({"role": "system", "content": "note"})
            else:
                calls = [{"id": f"c{n_calls + k}", "type": "function", "function": {"name": "Bash", "arguments": "{}"}}
                         for k in range(rng.randint(1, 3))]
                n_calls += len(calls)
                messages.append({"role": "assistant", "content": None, "tool_calls": calls})
                messages += [{"role": "tool", "tool_call_id": c["id"], "content": "r"} for c in calls]
        groups = drop_groups(messages)
        dropped: set[int] = set()
        for group in groups:
            dropped |= set(group)
            assert_valid_trim(messages, apply(messages, dropped))


def test_choose_drops_stops_at_the_target() -> None:
    groups = [[1], [2, 3], [4]]
    counts = [10, 100, 50, 50, 30, 5]
    assert choose_drops(groups, counts, 245, 200) == ([1], 145)
    assert choose_drops(groups, counts, 245, 100) == ([1, 2, 3], 45)
    assert choose_drops(groups, counts, 245, 1) == ([1, 2, 3, 4], 15)


def test_estimate_runs_high_enough_to_trigger_exact_counts() -> None:
    enc = get_encoding("o200k_base")
    for text in (
        _output(1, "x", 40),
        "The quick brown fox jumps over the lazy dog. " * 200,
        "数据库连接失败，请检查配置文件中的主机名和端口。" * 100,
        "Ünïcödé façade naïve café résumé — “quotes” " * 100,
    ):
        body = {"messages": [{"role": "user", "content": text}]}
        exact = count_canonical(body)
        assert estimate_tokens(body) >= 0.8 * exact, (text[:30], estimate_tokens(body), exact)
        assert len(enc.encode_ordinary(text)) > 0
    assert CHARS_PER_TOKEN <= 3.5


@pytest.mark.parametrize(
    "status, message, expected",
    [
        (400, "This model's maximum context length is 128000 tokens. However, your messages resulted in 130542 tokens. "
              "Please reduce the length of the messages.", True),
        (400, "prompt is too long: 210443 tokens > 200000 maximum", True),
        (400, "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
              "(4000 in the messages, 1000 in the completion).", True),
        (400, "the request exceeds the available context size, try increasing it", True),
        (400, "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).", True),
        (400, "Trying to keep the first 9000 tokens when context the overflows. However, the model is loaded "
              "with context length of only 4096 tokens, which is not enough.", True),
        (400, "Your input exceeds the context window of this model. Please adjust your input and try again.", True),
        (413, "Request too large for model llama3-70b in organization org_x on tokens per minute (TPM): "
              "Limit 6000, Requested 7000", False),
        (429, "maximum context length reached for this minute", False),
        (400, "Invalid 'user': string too long. Expected a string with maximum length 64 (string_above_max_length)", False),
        (400, "messages.1.content: field required", False),
    ],
)
def test_overflow_errors_are_recognised(status: int, message: str, expected: bool) -> None:
    error = UpstreamError(f"dep: provider answered {status}: {message}", upstream_status=status, deployment="dep")
    assert is_context_overflow(error) is expected
    if expected:
        renamed = overflow_error(error)
        assert "prompt is too long" in renamed.message and renamed.status == 400


# --- through the gateway -------------------------------------------------------------------------


def deployment(up: FakeUpstream, ident: str, model: str, **extra: Any) -> dict[str, Any]:
    return {"id": ident, "model": f"openai/{model}", "api_base": up.base_url, "api_key": UPSTREAM_KEY, **extra}


SMALL = {"max_input_tokens": 3000, "max_output_tokens": 512}
BIG = {"max_input_tokens": 200_000, "max_output_tokens": 8192}


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as fake:
        yield fake


def serve(models: dict[str, Any], **top: Any) -> GatewayServer:
    return GatewayServer(config_from({"models": models, **top}))


def ask(server: GatewayServer, messages: list[dict[str, Any]], *, stream: bool = False, max_tokens: int = 400) -> Any:
    client = anthropic.Anthropic(base_url=server.base_url, api_key=GATEWAY_KEY, max_retries=0)
    kwargs: dict[str, Any] = {"model": MODEL, "max_tokens": max_tokens, "system": SYSTEM, "tools": TOOLS, "messages": messages}
    if stream:
        with client.messages.with_streaming_response.create(stream=True, **kwargs) as raw:
            return raw.headers, list(raw.iter_lines())
    raw = client.messages.with_raw_response.create(**kwargs)
    return raw.headers, raw.parse()


def chat_requests(up: FakeUpstream, model: str | None = None) -> list[dict[str, Any]]:
    return [r.json for r in up.requests if r.path.endswith("/chat/completions") and (model is None or r.json.get("model") == model)]


def test_small_request_is_sent_unchanged_without_counting(up: FakeUpstream) -> None:
    with serve({"claude-*": [deployment(up, "small", "small-model", **SMALL)]}) as server:
        headers, message = ask(server, [{"role": "user", "content": "hi"}])
        assert headers["x-clasp-context"] == "fit"
        assert message.content[0].text == "ok"
        # Far below the window: only the character estimate ran, never the tokenizer.
        assert server.gateway.context.tokens._data == {}
    [sent] = chat_requests(up)
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]


def test_unknown_window_says_so(up: FakeUpstream) -> None:
    with serve({"claude-*": [deployment(up, "nowindow", "mystery-model")]}) as server:
        headers, _ = ask(server, canonical_free_history())
        assert headers["x-clasp-context"] == "unknown"


def canonical_free_history() -> list[dict[str, Any]]:
    return claude_code_messages(8)


def test_rerouted_to_a_larger_candidate_of_the_chain(up: FakeUpstream) -> None:
    history = claude_code_messages(8)
    models = {"claude-*": [deployment(up, "small", "small-model", **SMALL), deployment(up, "big", "big-model", **BIG)]}
    with serve(models) as server:
        headers, message = ask(server, history, stream=True)
        assert headers["x-clasp-context"] == "rerouted; to=big"
        assert headers["x-clasp-deployment"] == "big"
    sent = chat_requests(up)
    assert [b["model"] for b in sent] == ["big-model"]  # the small one was never called
    assert len(sent[0]["messages"]) == len(canonical(history))


def test_rerouted_to_a_context_fallback_deployment(up: FakeUpstream) -> None:
    history = claude_code_messages(8)
    models = {
        "claude-*": {"deployments": [deployment(up, "small", "small-model", **SMALL)], "context_fallback": ["long-context"]},
        "long-context": [deployment(up, "big", "big-model", **BIG)],
    }
    with serve(models) as server:
        headers, _ = ask(server, history)
        assert headers["x-clasp-context"] == "rerouted; to=big"
        # A request that fits stays on the route's own deployment.
        headers, _ = ask(server, [{"role": "user", "content": "hi"}])
        assert headers["x-clasp-context"] == "fit" and headers["x-clasp-deployment"] == "small"
    assert [b["model"] for b in chat_requests(up)] == ["big-model", "small-model"]


def test_trimmed_when_no_candidate_is_large_enough(up: FakeUpstream) -> None:
    history = claude_code_messages(8)
    original = canonical(history)
    with serve({"claude-*": [deployment(up, "small", "small-model", **SMALL)]}) as server:
        headers, message = ask(server, history, stream=True)
    value = headers["x-clasp-context"]
    assert value.startswith("trimmed; dropped="), value
    dropped = int(value.split("dropped=")[1].split(" ")[0])
    before, after = (int(x) for x in value.split("tokens=")[1].split("->"))
    assert before > 3000 >= after
    [sent] = chat_requests(up)
    kept = sent["messages"]
    assert len(kept) == len(original) - dropped
    assert kept[0] == original[0]  # the system prompt
    assert kept[-1]["content"] == "Now run the whole test suite and report."
    # The budget: 3000 - 400 (max_tokens, under the 512 limit); aimed at 80% of it.
    assert count_canonical({"messages": kept, "tools": sent["tools"]}) <= 2600
    by_content = {repr(m): m for m in original}
    assert_valid_trim(original, [by_content[repr(m)] for m in kept])
    assert sent["max_tokens"] == 400


def test_trimmed_agentic_session_keeps_the_task_and_latest_steps(up: FakeUpstream) -> None:
    history = agentic_session(30)
    original = canonical(history)
    with serve({"claude-*": [deployment(up, "small", "small-model", **SMALL)]}) as server:
        headers, _ = ask(server, history)
    assert headers["x-clasp-context"].startswith("trimmed;")
    [sent] = chat_requests(up)
    kept = sent["messages"]
    assert [m["role"] for m in kept[:2]] == ["system", "user"]
    assert kept[1]["content"] == "Refactor every handler in src/."
    assert kept[-2:] == original[-2:]  # the latest call and its result
    assert 4 < len(kept) < len(original)
    # What remains is the most recent steps, contiguous.
    assert kept[2:] == original[len(original) - len(kept) + 2 :]


def test_summarized_with_a_cheap_model_and_reused_next_turn(up: FakeUpstream) -> None:
    with FakeUpstream("openai") as cheap:
        cheap.script = lambda body, rec: Text("The user fixed handlers 0-5; grep and Read were used.")
        models = {
            "claude-*": {"deployments": [deployment(up, "small", "small-model", **SMALL)],
                         "context": {"summarize_with": "summarizer", "summary_max_tokens": 200}},
            "cheap": [deployment(cheap, "summarizer", "cheap-model")],
        }
        history = claude_code_messages(8)
        with serve(models) as server:
            headers, _ = ask(server, history)
            value = headers["x-clasp-context"]
            assert value.startswith("summarized; dropped=") and value.endswith("; by=summarizer"), value
            [summary_request] = chat_requests(cheap)
            transcript = summary_request["messages"][1]["content"]
            assert "Task 0: find why handler_0" in transcript and "[tool result]" in transcript
            assert summary_request["max_tokens"] == 200 and not summary_request.get("stream")
            [sent] = chat_requests(up)
            assert sent["messages"][0]["role"] == "system"
            note = sent["messages"][1]
            assert note["role"] == "user" and "Summary of" in note["content"]
            assert "handlers 0-5" in note["content"]

            # Next turn: the same conversation plus an answer and a new prompt. The trim
            # is reused (same kept prefix, same summary): no second summariser call.
            history2 = history + [
                {"role": "assistant", "content": "All 112 tests pass."},
                {"role": "user", "content": "Thanks. Commit it."},
            ]
            headers2, _ = ask(server, history2)
            assert headers2["x-clasp-context"].startswith("summarized;")
            assert len(chat_requests(cheap)) == 1
            sent2 = chat_requests(up)[1]
            assert sent2["messages"][: len(sent["messages"])] == sent["messages"]
            assert sent2["messages"][-1]["content"] == "Thanks. Commit it."


class SideCallVeto:
    """Refuses the summariser ``refused`` and records what was asked."""

    def __init__(self, refused: str) -> None:
        self.refused = refused
        self.asked: list[tuple[str, str]] = []

    @hookimpl
    def before_side_call(self, ctx: Any, deployment: Any, purpose: str) -> bool | None:
        self.asked.append((deployment.id, purpose))
        return False if deployment.id == self.refused else None


def test_a_plugin_keeps_the_conversation_off_a_summariser(up: FakeUpstream) -> None:
    """``before_side_call``: the refused summariser is never called; the next one is."""
    with FakeUpstream("openai") as refused, FakeUpstream("openai") as allowed:
        allowed.script = lambda body, rec: Text("The user fixed handlers 0-5.")
        models = {
            "claude-*": {"deployments": [deployment(up, "small", "small-model", **SMALL)],
                         "context": {"summarize_with": "summarizers"}},
            "summarizers": [deployment(refused, "third-party", "cheap-model"),
                            deployment(allowed, "in-house", "cheap-model")],
        }
        veto = SideCallVeto("third-party")
        with GatewayServer(config_from({"models": models}), plugins=[veto]) as server:
            headers, _ = ask(server, claude_code_messages(8))
        assert headers["x-clasp-context"].endswith("; by=in-house"), headers["x-clasp-context"]
        assert refused.requests == [] and len(chat_requests(allowed)) == 1
        assert veto.asked == [("third-party", "context_summary"), ("in-house", "context_summary")]


def test_summarizer_failure_falls_back_to_trimming(up: FakeUpstream) -> None:
    with FakeUpstream("openai") as cheap:
        cheap.script = lambda body, rec: Error(500)
        models = {
            "claude-*": {"deployments": [deployment(up, "small", "small-model", **SMALL)],
                         "context": {"summarize_with": "cheap"}},
            "cheap": [deployment(cheap, "summarizer", "cheap-model")],
        }
        with serve(models) as server:
            headers, message = ask(server, claude_code_messages(8))
        assert headers["x-clasp-context"].startswith("trimmed;")
        assert message.content[0].text == "ok"
        assert len(chat_requests(cheap)) == 1


OVERFLOW = ("This model's maximum context length is 2500 tokens. However, your messages resulted in {n} tokens. "
            "Please reduce the length of the messages.")


def overflow_reply(n: int = 9000) -> Error:
    return Error(400, {"error": {"message": OVERFLOW.format(n=n), "type": "invalid_request_error",
                                 "param": "messages", "code": "context_length_exceeded"}})


def test_upstream_overflow_is_retried_trimmed(up: FakeUpstream) -> None:
    history = claude_code_messages(8)
    with serve({"claude-*": [deployment(up, "local", "local-model")]}) as server:  # window unknown
        up.queue(overflow_reply(), Text("done"))
        headers, message = ask(server, history)
    assert message.content[0].text == "done"
    assert headers["x-clasp-context"].startswith("trimmed;")
    first, second = chat_requests(up)
    assert len(second["messages"]) < len(first["messages"])
    assert count_canonical({"messages": second["messages"]}) < 2500


def test_upstream_overflow_goes_to_a_larger_candidate(up: FakeUpstream) -> None:
    history = claude_code_messages(8)
    models = {"claude-*": [deployment(up, "local", "local-model"), deployment(up, "big", "big-model", **BIG)]}
    with serve(models) as server:
        up.queue(overflow_reply())
        headers, message = ask(server, history)
    assert headers["x-clasp-deployment"] == "big" and headers["x-clasp-context"] == "fit"
    assert [b["model"] for b in chat_requests(up)] == ["local-model", "big-model"]


def test_upstream_overflow_twice_says_prompt_is_too_long(up: FakeUpstream) -> None:
    with serve({"claude-*": [deployment(up, "local", "local-model")]}) as server:
        up.queue(overflow_reply(), overflow_reply(2600))
        client = anthropic.Anthropic(base_url=server.base_url, api_key=GATEWAY_KEY, max_retries=0)
        with pytest.raises(anthropic.BadRequestError) as info:
            client.messages.create(model=MODEL, max_tokens=400, system=SYSTEM, tools=TOOLS,  # type: ignore[arg-type]
                                   messages=claude_code_messages(8))  # type: ignore[arg-type]
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert info.value.body["error"]["message"].startswith("prompt is too long")  # type: ignore[index]
    assert len(chat_requests(up)) == 2


def test_answer_room_is_cut_to_half_a_small_window(up: FakeUpstream) -> None:
    text = _output(0, "x", 20)  # ~700 tokens
    with serve({"claude-*": [deployment(up, "tiny", "tiny-model", max_input_tokens=3000)]}) as server:
        headers, _ = ask(server, [{"role": "user", "content": text}], max_tokens=2800)
    assert headers["x-clasp-context"] == "fit"
    [sent] = chat_requests(up)
    assert sent["max_tokens"] == 1500  # 2800 would overflow: the reserve is half the window


def test_openai_route_reports_too(up: FakeUpstream) -> None:
    messages = canonical(claude_code_messages(8))
    with serve({"gpt-small": [deployment(up, "small", "small-model", **SMALL)]}) as server:
        response = httpx.post(
            server.base_url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {GATEWAY_KEY}"},
            json={"model": "gpt-small", "messages": messages, "max_tokens": 300},
            timeout=30,
        )
    assert response.status_code == 200, response.text
    assert response.headers["x-clasp-context"].startswith("trimmed;")


def test_disabled_per_route(up: FakeUpstream) -> None:
    models = {"claude-*": {"deployments": [deployment(up, "small", "small-model", **SMALL)], "context": {"enabled": False}}}
    with serve(models) as server:
        headers, _ = ask(server, claude_code_messages(8))
    assert "x-clasp-context" not in headers
    assert len(chat_requests(up)[0]["messages"]) == len(canonical(claude_code_messages(8)))


@pytest.mark.parametrize(
    "models, top, fragment",
    [
        ({"claude-*": {"deployments": [{"model": "openai/gpt-4o"}], "context_fallback": ["nope"]}}, {},
         "models.claude-*.context_fallback.0: 'nope' is neither a deployment id"),
        ({"claude-*": [{"model": "openai/gpt-4o"}]}, {"context": {"trim_to": 3}},
         "context.trim_to: expected a fraction"),
        ({"claude-*": [{"model": "openai/gpt-4o"}]}, {"context": {"summarize_with": "ghost"}},
         "test-config: context.summarize_with: 'ghost' is neither"),
        ({"claude-*": {"deployments": [{"model": "openai/gpt-4o"}], "context": {"bogus": 1}}}, {},
         "models.claude-*.context.bogus: unknown key"),
    ],
)
def test_bad_settings_fail_at_start_up(models: dict[str, Any], top: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_app(config_from({"models": models, **top}), load_plugins=False)
    assert fragment in str(info.value)

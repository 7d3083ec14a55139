"""OpenAI chunks -> Anthropic stream events (stream.py, sse.py).

Every test runs its events through :func:`check_grammar`, a checker of Anthropic's
stream grammar and of what Claude Code needs (no blank text block, complete tool
inputs, signed thinking, valid tool ids).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

import orjson
import pytest
from clasp_claude.message import MessageBuilder
from clasp_claude.sse import encode_event, encode_events
from clasp_claude.stream import (
    THINKING_SIGNATURE,
    StreamTranslator,
    completion_to_chunk,
    error_event,
    parse_tool_input,
    ping_event,
    repair_json_suffix,
)

Event = tuple[str, dict[str, Any]]

_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_STOP_REASONS = {"end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal", "pause_turn"}
_DELTAS = {"text": {"text_delta"}, "tool_use": {"input_json_delta"}, "thinking": {"thinking_delta", "signature_delta"}}


def check_grammar(events: list[Event]) -> None:
    """Assert that *events* form one valid Anthropic message stream."""
    assert events, "no events"
    for name, payload in events:
        assert payload["type"] == name, (name, payload)
    assert events[0][0] == "message_start"
    message = events[0][1]["message"]
    assert message["role"] == "assistant" and message["type"] == "message" and message["content"] == []
    assert message["id"].startswith("msg_")
    assert message["stop_reason"] is None and message["stop_sequence"] is None
    assert isinstance(message["usage"]["input_tokens"], int)
    next_index = 0
    open_block: dict[str, Any] | None = None
    acc = ""
    signed = False
    thinking_done = False
    ended = False
    saw_delta = False
    for name, payload in events[1:]:
        assert not ended, f"{name} after message_stop"
        if name == "ping":
            continue
        if name == "error":
            assert payload["error"]["type"] and payload["error"]["message"]
            ended = True
            continue
        assert not saw_delta or name == "message_stop", f"{name} after message_delta"
        if name == "content_block_start":
            assert open_block is None, "two blocks open at once"
            assert payload["index"] == next_index, f"index {payload['index']} != {next_index}"
            next_index += 1
            open_block = payload["content_block"]
            btype = open_block["type"]
            assert btype in _DELTAS
            if btype == "text":
                assert open_block == {"type": "text", "text": ""}
            elif btype == "tool_use":
                assert _TOOL_ID.match(open_block["id"]), open_block["id"]
                assert open_block["name"] and open_block["input"] == {}
            else:
                assert open_block == {"type": "thinking", "thinking": "", "signature": ""}
            acc, signed, thinking_done = "", False, False
        elif name == "content_block_delta":
            assert open_block is not None and payload["index"] == next_index - 1
            delta = payload["delta"]
            assert delta["type"] in _DELTAS[open_block["type"]], (open_block["type"], delta)
            if delta["type"] == "text_delta":
                assert isinstance(delta["text"], str) and delta["text"]
                acc += delta["text"]
            elif delta["type"] == "input_json_delta":
                assert isinstance(delta["partial_json"], str)
                acc += delta["partial_json"]
            elif delta["type"] == "thinking_delta":
                assert not thinking_done, "thinking after its signature"
                acc += delta["thinking"]
            else:
                assert delta["signature"], "empty signature"
                signed = thinking_done = True
        elif name == "content_block_stop":
            assert open_block is not None and payload["index"] == next_index - 1
            if open_block["type"] == "text":
                assert acc.strip(), "blank text block"
            elif open_block["type"] == "tool_use":
                assert isinstance(orjson.loads(acc), dict), f"tool input is not an object: {acc!r}"
            else:
                assert signed, "thinking block closed without a signature"
            open_block = None
        elif name == "message_delta":
            assert open_block is None, "message_delta with a block open"
            assert payload["delta"]["stop_reason"] in _STOP_REASONS
            usage = payload["usage"]
            assert isinstance(usage["output_tokens"], int) and isinstance(usage["input_tokens"], int)
            assert isinstance(usage["cache_read_input_tokens"], int)
            saw_delta = True
        elif name == "message_stop":
            assert saw_delta, "message_stop without message_delta"
            ended = True
        else:
            raise AssertionError(f"unknown event {name}")
    assert ended, "stream did not end"


def run(chunks: Iterable[dict[str, Any]], **kw: Any) -> list[Event]:
    kw.setdefault("input_tokens", 42)
    t = StreamTranslator("claude-sonnet-4-5", **kw)
    events = t.start()
    for chunk in chunks:
        events += t.feed(chunk)
        if t.done and t._stopped:  # the caller must stop reading after a stop sequence
            break
    events += t.finish()
    check_grammar(events)
    return events


def build(events: list[Event]) -> dict[str, Any]:
    b = MessageBuilder()
    b.add(events)
    return b.result()


def content(chunks: Iterable[dict[str, Any]], **kw: Any) -> list[dict[str, Any]]:
    return build(run(chunks, **kw))["content"]


def stop_reason(events: list[Event]) -> str:
    return [p for n, p in events if n == "message_delta"][0]["delta"]["stop_reason"]


def c(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """One chunk."""
    chunk: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }
    chunk.update(extra)
    return chunk


def tc(index: int | None, id: str | None = None, name: str | None = None, args: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"function": {}}
    if index is not None:
        call["index"] = index
    if id is not None:
        call["id"] = id
        call["type"] = "function"
    if name is not None:
        call["function"]["name"] = name
    if args is not None:
        call["function"]["arguments"] = args
    return call


USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 35,
    "total_tokens": 1235,
    "prompt_tokens_details": {"cached_tokens": 1000},
}


# -- text ---------------------------------------------------------------------------------------


def test_text_only() -> None:
    events = run(
        [
            c({"role": "assistant", "content": ""}),
            c({"content": "Hello"}),
            c({"content": ", world"}),
            c({}, "stop"),
            {"choices": [], "usage": USAGE},
        ]
    )
    assert [n for n, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    msg = build(events)
    assert msg["content"] == [{"type": "text", "text": "Hello, world"}]
    assert msg["stop_reason"] == "end_turn" and msg["stop_sequence"] is None
    assert msg["usage"] == {
        "input_tokens": 200,
        "output_tokens": 35,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 0,
    }
    assert events[0][1]["message"]["usage"]["input_tokens"] == 42  # the estimate, never 0
    assert events[0][1]["message"]["model"] == "claude-sonnet-4-5"


def test_empty_stream_has_no_blocks() -> None:
    events = run([c({"role": "assistant"}), c({"content": ""}), c({}, "stop")])
    assert build(events)["content"] == []
    assert stop_reason(events) == "end_turn"


def test_whitespace_before_a_tool_call_opens_no_text_block() -> None:
    events = run(
        [
            c({"content": "\n\n"}),
            c({"content": " "}),
            c({"tool_calls": [tc(0, "call_1", "Read", '{"a":1}')]}),
            c({}, "tool_calls"),
        ]
    )
    assert build(events)["content"] == [{"type": "tool_use", "id": "call_1", "name": "Read", "input": {"a": 1}}]


def test_leading_whitespace_is_kept_once_real_text_arrives() -> None:
    assert content([c({"content": "\n"}), c({"content": "Hi"}), c({}, "stop")]) == [{"type": "text", "text": "\nHi"}]


def test_content_as_parts_refusal_and_message_key() -> None:
    assert content([c({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}), c({}, "stop")]) == [
        {"type": "text", "text": "ab"}
    ]
    events = run([c({"refusal": "I can't help with that."}), c({}, "content_filter")])
    assert build(events)["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert stop_reason(events) == "refusal"
    chunk = {"choices": [{"index": 0, "message": {"content": "via message"}, "finish_reason": "stop"}]}
    assert content([chunk]) == [{"type": "text", "text": "via message"}]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("content_filter", "refusal"),
        ("tool_calls", "end_turn"),
        ("eos", "end_turn"),
        (None, "end_turn"),
    ],
)
def test_finish_reason_mapping_without_tools(reason: str | None, expected: str) -> None:
    assert stop_reason(run([c({"content": "x"}), c({}, reason)])) == expected


# -- azure, usage ------------------------------------------------------------------------------------


def test_azure_empty_choices_first_chunk_and_prompt_filter_results() -> None:
    first = {
        "id": "",
        "object": "",
        "created": 0,
        "model": "",
        "choices": [],
        "prompt_filter_results": [{"prompt_index": 0}],
    }
    events = run([first, c({"role": "assistant"}), c({"content": "ok"}), c({}, "stop")])
    assert build(events)["content"] == [{"type": "text", "text": "ok"}]


def test_usage_only_in_last_chunk_replaces_estimate() -> None:
    t = StreamTranslator("m", input_tokens=999)
    events = t.start() + t.feed(c({"content": "hi"})) + t.feed(c({}, "stop"))
    assert t.saw_finish and not t.done  # usage still expected
    events += t.feed({"id": "x", "choices": [], "usage": USAGE})
    assert t.done
    events += t.finish()
    check_grammar(events)
    delta = [p for n, p in events if n == "message_delta"][0]
    assert delta["usage"] == {
        "input_tokens": 200,
        "output_tokens": 35,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 0,
    }
    assert t.usage.input_tokens == 200 and t.usage.cache_read_input_tokens == 1000


def test_usage_in_finish_chunk_and_without_any_usage() -> None:
    t = StreamTranslator("m", input_tokens=10)
    t.feed(c({"content": "x" * 40}, "stop", usage={"prompt_tokens": 7, "completion_tokens": 3}))
    assert t.done
    assert t.usage.input_tokens == 7 and t.usage.output_tokens == 3
    t = StreamTranslator("m", input_tokens=10)
    events = t.feed(c({"content": "x" * 40}, "stop")) + t.finish()
    check_grammar(events)
    assert t.usage.input_tokens == 10 and t.usage.output_tokens == 10  # 40 chars / 4
    # Placeholder zeros from a provider do not erase the estimate.
    t = StreamTranslator("m", input_tokens=10)
    t.feed(c({"content": "abcd"}, "stop", usage={"prompt_tokens": 0, "completion_tokens": 0}))
    assert t.usage.input_tokens == 10 and t.usage.output_tokens == 1


# -- thinking ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
def test_reasoning_becomes_a_signed_thinking_block(key: str) -> None:
    events = run(
        [c({key: "Let me "}), c({key: "think."}), c({"content": "\n\n"}), c({"content": "Answer."}), c({}, "stop")]
    )
    msg = build(events)
    assert msg["content"] == [
        {"type": "thinking", "thinking": "Let me think.", "signature": THINKING_SIGNATURE},
        {"type": "text", "text": "\n\nAnswer."},
    ]
    names = [(n, p.get("delta", {}).get("type")) for n, p in events]
    sig = names.index(("content_block_delta", "signature_delta"))
    assert names[sig + 1] == ("content_block_stop", None)


def test_reasoning_details_and_thinking_before_tool() -> None:
    events = run(
        [
            c({"reasoning_details": [{"type": "reasoning.text", "text": "plan"}]}),
            c({"tool_calls": [tc(0, "call_1", "Bash", '{"command":"ls"}')]}),
            c({}, "tool_calls"),
        ]
    )
    assert build(events)["content"] == [
        {"type": "thinking", "thinking": "plan", "signature": THINKING_SIGNATURE},
        {"type": "tool_use", "id": "call_1", "name": "Bash", "input": {"command": "ls"}},
    ]


def test_reasoning_field_ignored_when_reasoning_content_present() -> None:
    # OpenRouter sends the same text as "reasoning" and "reasoning_details": count it once.
    chunk = c({"reasoning": "once", "reasoning_details": [{"type": "reasoning.text", "text": "once"}]})
    assert content([chunk, c({}, "stop")])[0]["thinking"] == "once"


# -- tool calls ------------------------------------------------------------------------------------


def test_text_then_two_sequential_tool_calls_stream_incrementally() -> None:
    chunks = [
        c({"role": "assistant", "content": "I'll check."}),
        c({"tool_calls": [tc(0, "call_A", "Read", "")]}),
        c({"tool_calls": [tc(0, args='{"file_')]}),
        c({"tool_calls": [tc(0, args='path": "/a"}')]}),
        c({"tool_calls": [tc(1, "call_B", "Grep", "")]}),
        c({"tool_calls": [tc(1, args='{"pattern"')]}),
        c({"tool_calls": [tc(1, args=': "x"}')]}),
        c({}, "tool_calls"),
        {"choices": [], "usage": USAGE},
    ]
    t = StreamTranslator("m", input_tokens=5)
    events = t.start()
    per_chunk = [t.feed(ch) for ch in chunks]
    events += [e for evs in per_chunk for e in evs] + t.finish()
    check_grammar(events)
    # Tool B's block opens while streaming (at its first chunk), not at the end.
    assert any(p.get("content_block", {}).get("id") == "call_B" for _, p in per_chunk[4])
    msg = build(events)
    assert msg["content"] == [
        {"type": "text", "text": "I'll check."},
        {"type": "tool_use", "id": "call_A", "name": "Read", "input": {"file_path": "/a"}},
        {"type": "tool_use", "id": "call_B", "name": "Grep", "input": {"pattern": "x"}},
    ]
    assert msg["stop_reason"] == "tool_use"
    assert [p["index"] for n, p in events if n == "content_block_start"] == [0, 1, 2]


def test_interleaved_parallel_tool_calls_lose_nothing() -> None:
    chunks = [
        c({"tool_calls": [tc(0, "call_A", "Read", '{"file_path":'), tc(1, "call_B", "Read", '{"file_')]}),
        c({"tool_calls": [tc(1, args='path": "/b"')]}),
        c({"tool_calls": [tc(0, args=' "/a"')]}),
        c({"tool_calls": [tc(0, args="}"), tc(1, args="}")]}),
        c({"tool_calls": [tc(2, "call_C", "Bash", '{"command": "ls"}')]}),
        c({}, "tool_calls"),
    ]
    events = run(chunks)
    assert build(events)["content"] == [
        {"type": "tool_use", "id": "call_A", "name": "Read", "input": {"file_path": "/a"}},
        {"type": "tool_use", "id": "call_B", "name": "Read", "input": {"file_path": "/b"}},
        {"type": "tool_use", "id": "call_C", "name": "Bash", "input": {"command": "ls"}},
    ]


def test_interleaved_random_splits() -> None:
    import random

    rng = random.Random(7)
    args = [orjson.dumps({"path": f"/f{i}", "n": i, "text": 'é✓ "q" ' * i}).decode() for i in range(4)]
    for _ in range(50):
        pieces: list[tuple[int, str]] = []
        for i, a in enumerate(args):
            cuts = sorted(rng.sample(range(1, len(a)), min(4, len(a) - 1)))
            bounds = [0, *cuts, len(a)]
            pieces += [(i, a[x:y]) for x, y in zip(bounds, bounds[1:], strict=False)]
        # Shuffle while keeping each call's own pieces in order.
        order = sorted(range(len(pieces)), key=lambda k: (rng.random(), k))
        queues: dict[int, list[str]] = {i: [p for j, p in pieces if j == i] for i in range(4)}
        chunks = [c({"tool_calls": [tc(i, f"call_{i}", "Write", "")]}) for i in range(4)]
        for k in order:
            i = pieces[k][0]
            chunks.append(c({"tool_calls": [tc(i, args=queues[i].pop(0))]}))
        chunks.append(c({}, "tool_calls"))
        got = content(chunks)
        assert [b["input"] for b in got] == [orjson.loads(a) for a in args]
        assert [b["id"] for b in got] == [f"call_{i}" for i in range(4)]


def test_ollama_whole_call_with_finish_stop() -> None:
    chunks = [
        c(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "call_x1", "function": {"name": "Bash", "arguments": '{"command":"pwd"}'}}],
            }
        ),
        c(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "call_x2", "function": {"name": "Bash", "arguments": '{"command":"ls"}'}}],
            }
        ),
        c({"content": ""}, "stop"),
    ]
    events = run(chunks)
    assert stop_reason(events) == "tool_use"
    assert build(events)["content"] == [
        {"type": "tool_use", "id": "call_x1", "name": "Bash", "input": {"command": "pwd"}},
        {"type": "tool_use", "id": "call_x2", "name": "Bash", "input": {"command": "ls"}},
    ]


def test_index_reused_for_a_new_call_and_object_arguments() -> None:
    chunks = [
        c({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "X", "arguments": {"k": 1}}}]}),
        c({"tool_calls": [{"index": 0, "id": "b", "function": {"name": "Y", "arguments": {"k": 2}}}]}),
        c({}, "tool_calls"),
    ]
    assert [(b["id"], b["name"], b["input"]) for b in content(chunks)] == [("a", "X", {"k": 1}), ("b", "Y", {"k": 2})]


def test_fragmented_one_char_chunks_with_escaped_unicode() -> None:
    args = '{"content": "caf\\u00e9 \\ud83d\\ude00 \\"quoted\\" \\\\ back\\nline", "path": "/tmp/\u00fc.txt"}'
    chunks = [c({"tool_calls": [tc(0, "call_frag", "Write", "")]})]
    chunks += [c({"tool_calls": [tc(0, args=ch)]}) for ch in args]
    chunks.append(c({}, "tool_calls"))
    events = run(chunks)
    assert build(events)["content"][0]["input"] == {"content": 'café 😀 "quoted" \\ back\nline', "path": "/tmp/ü.txt"}
    joined = "".join(p["delta"]["partial_json"] for n, p in events if n == "content_block_delta")
    assert joined == args  # streamed verbatim, nothing re-encoded


def test_tool_name_arrives_after_id() -> None:
    chunks = [
        c({"tool_calls": [tc(0, "call_1")]}),
        c({"tool_calls": [tc(0, name="Read")]}),
        c({"tool_calls": [tc(0, args='{"a":1}')]}),
        c({}, "tool_calls"),
    ]
    assert content(chunks) == [{"type": "tool_use", "id": "call_1", "name": "Read", "input": {"a": 1}}]


def test_missing_and_invalid_tool_ids() -> None:
    chunks = [
        c({"tool_calls": [tc(0, name="A", args="{}")]}),
        c({"tool_calls": [tc(1, "functions.Read:0", "B", "{}")]}),
        c({"tool_calls": [tc(1, "functions.Read:0", args="")]}),
        c({}, "tool_calls"),
    ]
    blocks = content(chunks)
    assert re.fullmatch(r"toolu_[0-9a-f]{24}", blocks[0]["id"])
    assert _TOOL_ID.match(blocks[1]["id"]) and blocks[1]["id"].startswith("functions_Read_0_")
    again = content([c({"tool_calls": [tc(0, "functions.Read:0", "B", "{}")]}), c({}, "tool_calls")])
    assert again[0]["id"] == blocks[1]["id"]  # same upstream id -> same client id


def test_calls_without_index_keyed_by_id() -> None:
    chunks = [
        c({"tool_calls": [{"id": "p", "function": {"name": "A", "arguments": '{"x":'}}]}),
        c({"tool_calls": [{"function": {"arguments": "1}"}}]}),
        c({"tool_calls": [{"id": "q", "function": {"name": "B", "arguments": "{}"}}]}),
        c({}, "stop"),
    ]
    assert [(b["id"], b["input"]) for b in content(chunks)] == [("p", {"x": 1}), ("q", {})]


def test_legacy_function_call() -> None:
    chunks = [
        c({"function_call": {"name": "get_weather", "arguments": '{"city"'}}),
        c({"function_call": {"arguments": ': "Paris"}'}}),
        c({}, "function_call"),
    ]
    events = run(chunks)
    block = build(events)["content"][0]
    assert block["name"] == "get_weather" and block["input"] == {"city": "Paris"} and block["id"].startswith("toolu_")
    assert stop_reason(events) == "tool_use"


def test_tool_names_map_back_to_the_client_name() -> None:
    chunks = [c({"tool_calls": [tc(0, "c1", "mcp__srv__x_1a2b3c4d", "{}")]}), c({}, "tool_calls")]
    blocks = content(chunks, tool_names={"mcp__srv__x_1a2b3c4d": "mcp__srv__x.y"})
    assert blocks[0]["name"] == "mcp__srv__x.y"


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        ([""], {}),
        (["  ", ""], {}),
        (['{"a": "tru'], {"a": "tru"}),
        (['{"a": [1, 2'], {"a": [1, 2]}),
        (['{"a": {"b": "c\\'], {"a": {"b": "c\\"}}),
        (['{"a":'], {"a": None}),
        (['"{\\"cmd\\": \\"ls\\"}"'], {"cmd": "ls"}),
        (["not json"], {"_raw": "not json"}),
        (["[1, 2]"], {"_raw": "[1, 2]"}),
        (["  ", '{"k"', ": 1}"], {"k": 1}),
    ],
)
def test_tool_input_is_always_a_complete_object(pieces: list[str], expected: dict[str, Any]) -> None:
    chunks = [c({"tool_calls": [tc(0, "t1", "X", pieces[0])]})]
    chunks += [c({"tool_calls": [tc(0, args=p)]}) for p in pieces[1:]]
    chunks.append(c({}, "length" if expected and "_raw" not in expected else "tool_calls"))
    blocks = content(chunks)  # check_grammar parses the streamed JSON as an object
    assert blocks == [{"type": "tool_use", "id": "t1", "name": "X", "input": expected}]


def test_length_with_tool_call_is_max_tokens() -> None:
    events = run([c({"tool_calls": [tc(0, "t", "Write", '{"content": "abc')]}), c({}, "length")])
    assert stop_reason(events) == "max_tokens"
    assert build(events)["content"][0]["input"] == {"content": "abc"}


def test_text_after_tool_calls_comes_after_them() -> None:
    chunks = [
        c({"content": "Before."}),
        c({"tool_calls": [tc(0, "t1", "A", '{"x":')]}),
        c({"content": " After."}),
        c({"reasoning_content": "late thought"}),
        c({"tool_calls": [tc(0, args="1}")]}),
        c({"content": "\n"}),
        c({}, "tool_calls"),
    ]
    assert content(chunks) == [
        {"type": "text", "text": "Before."},
        {"type": "tool_use", "id": "t1", "name": "A", "input": {"x": 1}},
        {"type": "thinking", "thinking": "late thought", "signature": THINKING_SIGNATURE},
        {"type": "text", "text": " After.\n"},
    ]
    # Blank trailing text is dropped entirely.
    assert len(content([c({"tool_calls": [tc(0, "t1", "A", "{}")]}), c({"content": "\n\n"}), c({}, "stop")])) == 1


def test_tool_call_without_name_still_closes_cleanly() -> None:
    blocks = content([c({"tool_calls": [tc(0, "t1", None, '{"a":1}')]}), c({}, "tool_calls")])
    assert blocks == [{"type": "tool_use", "id": "t1", "name": "unknown_tool", "input": {"a": 1}}]


# -- stop sequences ------------------------------------------------------------------------------------


def test_stop_sequence_split_across_chunks() -> None:
    t = StreamTranslator("m", stop_sequences=["END"])
    events = t.start() + t.feed(c({"content": "Hello EN"}))
    assert "".join(p["delta"]["text"] for n, p in events if n == "content_block_delta") == "Hello "
    events += t.feed(c({"content": "D and more"}))
    assert t.done
    assert t.feed(c({"content": "ignored"})) == []
    events += t.finish()
    check_grammar(events)
    msg = build(events)
    assert msg["content"] == [{"type": "text", "text": "Hello "}]
    assert msg["stop_reason"] == "stop_sequence" and msg["stop_sequence"] == "END"


def test_partial_match_that_fails_is_released() -> None:
    t = StreamTranslator("m", stop_sequences=["END"])
    events = t.start() + t.feed(c({"content": "THE E"}))
    assert "".join(p["delta"]["text"] for n, p in events if n == "content_block_delta") == "THE "
    events += t.feed(c({"content": "Nx"})) + t.feed(c({"content": " E"}, "stop")) + t.finish()
    check_grammar(events)
    assert build(events)["content"] == [{"type": "text", "text": "THE ENx E"}]
    assert build(events)["stop_reason"] == "end_turn"


@pytest.mark.parametrize(
    ("pieces", "stops", "text", "matched"),
    [
        (["abc", "STOP", "def"], ["STOP"], "abc", "STOP"),
        (["S", "T", "O", "P"], ["STOP"], None, "STOP"),
        (["x</ans", "wer>y"], ["</answer>", "\n\nHuman:"], "x", "</answer>"),
        (["one two", " three"], ["three", "two"], "one ", "two"),
        (["aaEN", "D"], ["END", "AEND"], "aa", "END"),
        (["no match here"], ["zzz"], "no match here", None),
    ],
)
def test_stop_sequences_table(pieces: list[str], stops: list[str], text: str | None, matched: str | None) -> None:
    events = run([c({"content": p}) for p in pieces] + [c({}, "stop")], stop_sequences=stops)
    msg = build(events)
    assert msg["content"] == ([{"type": "text", "text": text}] if text else [])
    assert msg["stop_sequence"] == matched
    assert msg["stop_reason"] == ("stop_sequence" if matched else "end_turn")


def test_held_text_is_flushed_before_a_tool_block() -> None:
    chunks = [c({"content": "Call E"}), c({"tool_calls": [tc(0, "t1", "A", "{}")]}), c({}, "tool_calls")]
    assert content(chunks, stop_sequences=["END"]) == [
        {"type": "text", "text": "Call E"},
        {"type": "tool_use", "id": "t1", "name": "A", "input": {}},
    ]


def test_stop_sequence_in_trailing_text() -> None:
    chunks = [c({"tool_calls": [tc(0, "t1", "A", "{}")]}), c({"content": "after END more"}), c({}, "stop")]
    events = run(chunks, stop_sequences=["END"])
    assert build(events)["content"][-1] == {"type": "text", "text": "after "}
    assert stop_reason(events) == "stop_sequence"


def test_stop_sequences_do_not_apply_to_thinking_or_tools() -> None:
    chunks = [
        c({"reasoning_content": "END of thought"}),
        c({"tool_calls": [tc(0, "t1", "A", '{"q": "END"}')]}),
        c({}, "tool_calls"),
    ]
    events = run(chunks, stop_sequences=["END"])
    assert build(events)["content"][1]["input"] == {"q": "END"}
    assert stop_reason(events) == "tool_use"


# -- lifecycle -------------------------------------------------------------------------------------


def test_lifecycle_is_idempotent_and_implicit() -> None:
    t = StreamTranslator("m", message_id="msg_fixed")
    first = t.feed(c({"content": "a"}))
    assert first[0][0] == "message_start" and first[0][1]["message"]["id"] == "msg_fixed"
    assert t.start() == []
    assert not t.saw_finish
    end = t.finish()
    assert t.finish() == [] and t.feed(c({"content": "b"})) == []
    check_grammar(first + end)
    t2 = StreamTranslator("m")
    only = t2.finish()
    check_grammar(only)
    assert [n for n, _ in only] == ["message_start", "message_delta", "message_stop"]


def test_error_and_ping_events() -> None:
    assert error_event("overloaded_error", "busy") == (
        "error",
        {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
    )
    assert ping_event() == ("ping", {"type": "ping"})
    t = StreamTranslator("m")
    events = t.start() + [ping_event()] + t.feed(c({"content": "partial"})) + [error_event("api_error", "upstream cut")]
    check_grammar(events)  # a stream may end with an error event instead of message_stop


def test_junk_chunks_are_ignored() -> None:
    junk: list[Any] = [
        None,
        {},
        {"choices": None},
        {"choices": [None]},
        {"choices": [{"delta": None}]},
        c({"tool_calls": [None, "x"]}),
        c({"content": "ok"}),
        c({}, "stop"),
    ]
    events = run(junk)
    assert build(events)["content"] == [{"type": "text", "text": "ok"}]


# -- non-streaming through the same path ----------------------------------------------------------


def test_completion_to_chunk_round_trip() -> None:
    completion = {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "reasoning_content": "why not",
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "Read", "arguments": '{"p": 1}'}},
                        {"id": "call_2", "type": "function", "function": {"name": "Read", "arguments": ""}},
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    }
    chunk = completion_to_chunk(completion)
    assert chunk["object"] == "chat.completion.chunk" and chunk["usage"] == completion["usage"]
    assert [call["index"] for call in chunk["choices"][0]["delta"]["tool_calls"]] == [0, 1]
    msg = build(run([chunk]))
    assert msg["content"] == [
        {"type": "thinking", "thinking": "why not", "signature": THINKING_SIGNATURE},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "Read", "input": {"p": 1}},
        {"type": "tool_use", "id": "call_2", "name": "Read", "input": {}},
    ]
    assert msg["stop_reason"] == "tool_use" and msg["usage"]["input_tokens"] == 10
    assert completion_to_chunk({"choices": []})["choices"] == []


# -- helpers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "suffix"),
    [
        ('{"a": 1}', ""),
        ('{"a": "x', '"}'),
        ('{"a": [1, {"b": 2', "}]}"),
        ('{"a":', "null}"),
        ('{"a": 1}}', None),
        ("", None),
        ('{"a": "\\', '\\"}'),
    ],
)
def test_repair_json_suffix(text: str, suffix: str | None) -> None:
    assert repair_json_suffix(text) == suffix


def test_parse_tool_input_cases() -> None:
    assert parse_tool_input("") == {} and parse_tool_input('{"a":1}') == {"a": 1}
    assert parse_tool_input('"not an object"') == {"_raw": '"not an object"'}


def test_sse_encoding() -> None:
    assert encode_event("ping", {"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'
    events = run([c({"content": "h\u00e9 \U0001f600"}), c({}, "stop")])
    raw = encode_events(events)
    assert raw == b"".join(encode_event(n, p) for n, p in events)
    frames = raw.decode().split("\n\n")[:-1]
    decoded = [(f.split("\n")[0][7:], orjson.loads(f.split("\n")[1][6:])) for f in frames]
    assert decoded == events


def test_sdk_accumulator_agrees() -> None:
    """Claude Code and the anthropic SDK fold events the same way as MessageBuilder."""
    from anthropic.lib.streaming._messages import accumulate_event

    chunks = [
        c({"reasoning_content": "hmm"}),
        c({"content": "Text "}),
        c({"content": "here."}),
        c({"tool_calls": [tc(0, "call_A", "Read", '{"file_path":'), tc(1, "call_B", "Bash", '{"command"')]}),
        c({"tool_calls": [tc(1, args=': "ls"}'), tc(0, args='"/a"}')]}),
        c({}, "tool_calls"),
        {"choices": [], "usage": USAGE},
    ]
    events = run(chunks)
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for _name, payload in events:
        snapshot = accumulate_event(event=payload, current_snapshot=snapshot, json_bufs=json_bufs)  # type: ignore[arg-type]
    assert snapshot is not None
    sdk: dict[str, Any] = snapshot.to_dict()
    ours = build(events)
    assert [
        {k: v for k, v in b.items() if k in ("type", "text", "thinking", "signature", "id", "name", "input")}
        for b in sdk["content"]
    ] == ours["content"]
    assert sdk["stop_reason"] == ours["stop_reason"] == "tool_use"
    assert sdk["usage"]["output_tokens"] == 35 and sdk["usage"]["input_tokens"] == 200


def test_per_chunk_cost_is_small() -> None:
    chunks = [c({"content": "word "}) for _ in range(200)] + [c({}, "stop"), {"choices": [], "usage": USAGE}]
    tool_chunks = [c({"tool_calls": [tc(0, "t", "Write", '{"content": "')]})]
    tool_chunks += [c({"tool_calls": [tc(0, args="more text ")]}) for _ in range(200)]
    tool_chunks += [c({"tool_calls": [tc(0, args='"}')]}), c({}, "tool_calls")]
    for stream, stops in ((chunks, ()), (chunks, ("END", "</done>")), (tool_chunks, ())):
        best = float("inf")
        for _ in range(5):
            t = StreamTranslator("m", stop_sequences=stops)
            start = time.perf_counter()
            t.start()
            for ch in stream:
                t.feed(ch)
            t.finish()
            best = min(best, (time.perf_counter() - start) / len(stream))
        assert best < 20e-6, f"{best * 1e6:.1f} µs per chunk"  # typically 1-3 µs


def test_the_translator_reports_text_deltas_exactly_as_the_core_tests_them() -> None:
    """``StreamTranslator.text_delta`` (the encoder's ``reports_text_deltas``) stands in
    for ``clasp_gateway.is_text_delta``: calling a chunk a text delta wrongly would hide
    a finish reason or a tool call from plugins that skip text deltas."""
    from clasp_gateway import is_text_delta

    def chunk(delta: Any, **extra: Any) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": delta}
        if "finish" in extra:
            choice["finish_reason"] = extra.pop("finish")
        return {"id": "c", "object": "chat.completion.chunk", "choices": [choice], **extra}

    two = chunk({"content": "a"})
    two["choices"].append({"index": 1, "delta": {"content": "b"}, "finish_reason": None})
    cases = [
        chunk({"content": "hi"}), chunk({"content": "hi"}, finish=None), chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "hmm"}), chunk({"role": "assistant"}), chunk({}),
        chunk({"content": "hi"}, finish="length"), chunk({"content": "hi"}, finish="stop"), chunk({"content": "x"}, finish=""),
        chunk({"content": "x"}, usage={"completion_tokens": 3}), chunk({"content": "x"}, usage=None),
        chunk({"content": None, "tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}),
        chunk({"content": "x", "refusal": None}), chunk({"reasoning": "vllm's name"}), chunk({"content": "x", "audio": {}}),
        chunk({"function_call": {"name": "f"}}), chunk(None), chunk("text"), chunk([{"type": "text", "text": "x"}]),
        {"choices": [{"index": 0, "message": {"content": "whole"}, "finish_reason": None}]},
        {"choices": []}, {"usage": {"prompt_tokens": 1}}, {"choices": "x"}, {"choices": ["x"]}, two,
    ]
    for case in cases:
        translator = StreamTranslator("claude-sonnet-4-5")
        translator.reports_text_deltas = True
        translator.feed(case)
        assert translator.text_delta is is_text_delta(case), case
    # Once the answer is over (a stop sequence matched, or finished), no chunk is one.
    translator = StreamTranslator("claude-sonnet-4-5", stop_sequences=["STOP"])
    translator.reports_text_deltas = True
    translator.feed(chunk({"content": "plain"}))
    assert translator.text_delta is True
    translator.feed(chunk({"content": "before STOP after"}))
    translator.feed(chunk({"content": "more"}))
    assert translator.text_delta is False
    # Unless asked (no plugin needs it), the translator does not work it out.
    translator = StreamTranslator("claude-sonnet-4-5")
    translator.feed(chunk({"content": "hi"}))
    assert translator.text_delta is False

"""Events -> a whole Anthropic message (message.py), and non-streaming answers."""

from __future__ import annotations

import importlib.util
import pathlib
from collections.abc import Callable
from typing import Any

import pytest
from clasp_claude.message import MessageBuilder
from clasp_claude.stream import THINKING_SIGNATURE, StreamTranslator, completion_to_chunk, error_event


def _grammar_checker() -> Callable[[list[Any]], None]:
    # Tests run with --import-mode=importlib, where test modules cannot import each
    # other by name: load the checker from the sibling file.
    path = pathlib.Path(__file__).with_name("test_stream.py")
    spec = importlib.util.spec_from_file_location("_clasp_claude_stream_checks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.check_grammar  # type: ignore[no-any-return]


check_grammar = _grammar_checker()


def non_stream(completion: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """What the core does for a non-streaming upstream answer."""
    t = StreamTranslator("claude-sonnet-4-5", message_id="msg_test", input_tokens=50, **kw)
    events = t.start() + t.feed(completion_to_chunk(completion)) + t.finish()
    check_grammar(events)
    b = MessageBuilder()
    b.add(events)
    return b.result()


def completion(
    message: dict[str, Any], finish: str | None = "stop", usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
    }
    if usage is not None:
        out["usage"] = usage
    return out


def test_exact_shape_of_a_text_answer() -> None:
    msg = non_stream(completion({"content": "Hello!"}, usage={"prompt_tokens": 12, "completion_tokens": 3}))
    assert msg == {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 12,
            "output_tokens": 3,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    }


def test_tool_calls_thinking_and_cache_usage() -> None:
    msg = non_stream(
        completion(
            {
                "content": None,
                "reasoning_content": "The user wants a listing.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "Bash", "arguments": '{"command": "ls -la"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "Read", "arguments": '{"file_path": "/a"}'},
                    },
                ],
            },
            finish="tool_calls",
            usage={"prompt_tokens": 2000, "completion_tokens": 40, "prompt_tokens_details": {"cached_tokens": 1500}},
        )
    )
    assert msg["content"] == [
        {"type": "thinking", "thinking": "The user wants a listing.", "signature": THINKING_SIGNATURE},
        {"type": "tool_use", "id": "call_1", "name": "Bash", "input": {"command": "ls -la"}},
        {"type": "tool_use", "id": "call_2", "name": "Read", "input": {"file_path": "/a"}},
    ]
    assert msg["stop_reason"] == "tool_use"
    assert msg["usage"] == {
        "input_tokens": 500,
        "output_tokens": 40,
        "cache_read_input_tokens": 1500,
        "cache_creation_input_tokens": 0,
    }


def test_ollama_non_stream_tool_call_with_stop() -> None:
    msg = non_stream(
        completion(
            {
                "content": "",
                "tool_calls": [{"id": "call_o", "function": {"name": "Bash", "arguments": '{"command":"pwd"}'}}],
            },
            finish="stop",
        )
    )
    assert msg["stop_reason"] == "tool_use"
    assert msg["content"] == [{"type": "tool_use", "id": "call_o", "name": "Bash", "input": {"command": "pwd"}}]


def test_stop_sequence_in_a_non_streaming_answer() -> None:
    msg = non_stream(completion({"content": "Answer: 42\nEND\nignored"}), stop_sequences=["\nEND"])
    assert msg["content"] == [{"type": "text", "text": "Answer: 42"}]
    assert msg["stop_reason"] == "stop_sequence" and msg["stop_sequence"] == "\nEND"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ("", {}),
        ("{}", {}),
        ('{"a": [1, 2', {"a": [1, 2]}),
        ("garbage", {"_raw": "garbage"}),
        ('"{\\"x\\": 1}"', {"x": 1}),
    ],
)
def test_tool_input_is_always_an_object(arguments: str, expected: dict[str, Any]) -> None:
    msg = non_stream(
        completion(
            {"tool_calls": [{"id": "c", "type": "function", "function": {"name": "T", "arguments": arguments}}]},
            finish="tool_calls",
        )
    )
    assert msg["content"][0]["input"] == expected


def test_empty_answer_and_length() -> None:
    msg = non_stream(completion({"content": ""}, finish="length"))
    assert msg["content"] == [] and msg["stop_reason"] == "max_tokens"
    assert msg["usage"]["input_tokens"] == 50  # the estimate when the upstream gives none


def test_usage_overwrites_only_what_message_delta_carries() -> None:
    b = MessageBuilder()
    b.add(
        [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_1",
                        "type": "message",
                        "role": "assistant",
                        "model": "m",
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {
                            "input_tokens": 9,
                            "output_tokens": 1,
                            "cache_read_input_tokens": 4,
                            "cache_creation_input_tokens": 2,
                        },
                    },
                },
            ),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}},
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 7, "input_tokens": None},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
    )
    assert b.result()["usage"] == {
        "input_tokens": 9,
        "output_tokens": 7,
        "cache_read_input_tokens": 4,
        "cache_creation_input_tokens": 2,
    }
    assert b.error is None


def test_error_event_is_kept_and_result_needs_a_start() -> None:
    b = MessageBuilder()
    with pytest.raises(RuntimeError):
        b.result()
    b.add([error_event("overloaded_error", "busy")])
    assert b.error == {"type": "overloaded_error", "message": "busy"}


def test_builder_does_not_share_state_with_events() -> None:
    t = StreamTranslator("m")
    events = t.feed(completion_to_chunk(completion({"content": "a"}))) + t.finish()
    b = MessageBuilder()
    b.add(events)
    result = b.result()
    result["content"][0]["text"] = "changed"
    assert [p for n, p in events if n == "content_block_start"][0]["content_block"]["text"] == ""

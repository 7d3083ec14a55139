"""Nothing an upstream sends is held without a bound (issue 7, defect 9).

A whole answer is read up to ``server.max_upstream_response_bytes``; an unfinished
SSE/NDJSON line or pass-through frame up to ``server.max_line_bytes``. Over a limit
the answer is an upstream error: 502 ``api_error`` naming the limit before the
first byte (and another deployment may answer), an in-stream error after it. The
decoders append a long line in place and scan each read once (no quadratic
copying). Limits are tested by configuring small ones, never by timing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import clasp_claude  # noqa: E402
from clasp_claude.passthrough import _Frames  # noqa: E402

from clasp_gateway.config import ServerConfig, parse_config  # noqa: E402
from clasp_gateway.plugins import PluginManager  # noqa: E402
from clasp_gateway.shell.app import create_app  # noqa: E402
from clasp_gateway.testing import GATEWAY_KEY, FakeUpstream, GatewayServer, Raw, Text, config_from  # noqa: E402
from clasp_gateway.wire.ndjson import NDJSONDecoder  # noqa: E402
from clasp_gateway.wire.reads import FrameTooLarge, ReadLimits  # noqa: E402
from clasp_gateway.wire.sse import SSEDecoder  # noqa: E402

BODY_LIMIT = 2048
LINE_LIMIT = 1024
BIG = "x" * 4000


# --------------------------------------------------------------------------------------
# Defaults
# --------------------------------------------------------------------------------------


def test_shipped_defaults_are_finite_and_used() -> None:
    for server in (ServerConfig(), parse_config({"models": {}}, "test").server):
        for value in (server.max_upstream_response_bytes, server.max_line_bytes):
            assert isinstance(value, int) and 0 < value < math.inf
        assert ReadLimits.of(server) == ReadLimits()
    assert SSEDecoder().max_line == NDJSONDecoder().max_line == _Frames().max_frame == ReadLimits().max_line_bytes


# --------------------------------------------------------------------------------------
# The decoders: linear and bounded
# --------------------------------------------------------------------------------------


def test_sse_long_line_is_appended_in_place_and_bounded() -> None:
    decoder = SSEDecoder(max_line=100_000)
    assert decoder.feed(b'data: {"a": "') == []
    buffer = decoder._buf  # the unfinished line: one buffer, grown in place, never re-copied
    for _ in range(500):
        assert decoder.feed(b"y" * 100) == []
        assert decoder._buf is buffer
    assert len(buffer) == len(b'data: {"a": "') + 50_000
    assert decoder.feed(b'"}\n\ndata: 2\n\n') == ['{"a": "' + "y" * 50_000 + '"}', "2"]
    assert not decoder._buf
    small = SSEDecoder(max_line=LINE_LIMIT)
    with pytest.raises(FrameTooLarge):
        for _ in range(20):
            small.feed(b"y" * 100)  # an endless line: no newline ever
    with pytest.raises(FrameTooLarge):  # a whole line too long, in one read
        SSEDecoder(max_line=LINE_LIMIT).feed(b"data: " + b"y" * 2000 + b"\n\n")
    many = SSEDecoder(max_line=LINE_LIMIT)
    with pytest.raises(FrameTooLarge):  # one event of many short data lines
        many.feed(b"data: " + b"y" * 100 + b"\n" * 1 + (b"data: " + b"y" * 100 + b"\n") * 20)


def test_ndjson_long_line_is_appended_in_place_and_bounded() -> None:
    decoder = NDJSONDecoder(max_line=100_000)
    assert decoder.feed(b'{"a": "') == []
    buffer = decoder._buf
    for _ in range(500):
        assert decoder.feed(b"y" * 100) == []
        assert decoder._buf is buffer
    assert decoder.feed(b'"}\n{"b": 1}\n') == ['{"a": "' + "y" * 50_000 + '"}', '{"b": 1}']
    small = NDJSONDecoder(max_line=LINE_LIMIT)
    with pytest.raises(FrameTooLarge):
        for _ in range(20):
            small.feed(b"y" * 100)


def test_passthrough_frames_are_appended_in_place_and_bounded() -> None:
    frames = _Frames(max_frame=100_000)
    assert frames.feed(b'event: content_block_delta\ndata: {"t": "') == []
    buffer = frames._buf
    for _ in range(500):
        assert frames.feed(b"y" * 100) == []
        assert frames._buf is buffer
    assert frames.feed(b'"}\r') == []
    out = frames.feed(b"\n\r\nevent: ping\ndata: {}\n\n")
    assert out == [("content_block_delta", b'{"t": "' + b"y" * 50_000 + b'"}'), ("ping", b"{}")]
    small = _Frames(max_frame=LINE_LIMIT)
    with pytest.raises(FrameTooLarge):
        for _ in range(20):
            small.feed(b"y" * 100)


# --------------------------------------------------------------------------------------
# Through the gateway, with small limits
# --------------------------------------------------------------------------------------


def openai_event(content: str, finish: str | None = None) -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o",
             "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def openai_completion(content: str) -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion", "model": "gpt-4o", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}).encode()


class Stack:
    def __init__(self, fakes: dict[str, FakeUpstream], gateway: GatewayServer) -> None:
        self.fakes = fakes
        self.gateway = gateway

    def reset(self) -> None:
        for fake in self.fakes.values():
            fake.reset()

    def post(self, api: str, model: str, stream: bool) -> httpx.Response:
        body = {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        if api == "anthropic":
            return httpx.post(self.gateway.base_url + "/v1/messages", json=body, timeout=30,
                              headers={"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"})
        return httpx.post(self.gateway.base_url + "/v1/chat/completions", json=body, timeout=30,
                          headers={"authorization": f"Bearer {GATEWAY_KEY}"})


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with FakeUpstream("openai") as primary, FakeUpstream("openai") as backup, \
            FakeUpstream("ollama") as ollama, FakeUpstream("gemini") as gemini, \
            FakeUpstream("anthropic") as anthropic:
        key = {"api_key": "sk-buffers-test-0123456789"}
        config = config_from({
            "server": {"max_upstream_response_bytes": BODY_LIMIT, "max_line_bytes": LINE_LIMIT},
            "models": {
                "chain": [{"model": "openai/gpt-4o", "api_base": primary.base_url, **key},
                          {"model": "openai/gpt-4o-mini", "api_base": backup.base_url, **key}],
                "solo": [{"model": "openai/gpt-4o", "api_base": primary.base_url, **key}],
                "ollama": [{"model": "ollama_chat/llama3.2", "api_base": ollama.origin, "max_output_tokens": 8192}],
                "gemini": [{"model": "gemini/gemini-2.5-flash", "api_base": gemini.base_url, **key}],
                "anthropic": [{"model": "anthropic/claude-sonnet-4-5-20250929", "api_base": anthropic.base_url,
                               **key}],
            },
        })
        pm = PluginManager()
        pm.load(entry_points=False)
        pm.register(clasp_claude, name="claude")  # no fallback plugin: one attempt per deployment
        with GatewayServer(config, create_app(config, pm)) as gateway:
            yield Stack({"primary": primary, "backup": backup, "ollama": ollama, "gemini": gemini,
                         "anthropic": anthropic}, gateway)


def assert_too_large(response: httpx.Response, api: str, key: str) -> None:
    assert response.status_code == 502, response.text
    body = response.json()
    error = body["error"]
    if api == "anthropic":
        assert body["type"] == "error" and error["type"] == "api_error"
    else:
        assert error["type"] == "api_error"
    assert "exceeded the gateway's limit" in error["message"] and key in error["message"], error


@pytest.mark.parametrize("api", ["anthropic", "openai"])
@pytest.mark.parametrize("stream", [False, True])
def test_long_line_before_the_first_byte_fails_over(stack: Stack, api: str, stream: bool) -> None:
    stack.reset()
    stack.fakes["primary"].queue(Raw(events=[openai_event(BIG)]))
    stack.fakes["backup"].queue(Text("from the backup"))
    response = stack.post(api, "chain", stream)
    assert response.status_code == 200, response.text
    assert "from the backup" in response.text or "from" in response.text
    assert len(stack.fakes["primary"].requests) == 1 and len(stack.fakes["backup"].requests) == 1


@pytest.mark.parametrize("api", ["anthropic", "openai"])
def test_endless_line_is_a_502_naming_the_limit(stack: Stack, api: str) -> None:
    stack.reset()
    # No newline, ever: written in pieces (several reads) well past the limit.
    stack.fakes["primary"].queue(Raw(events=[b"data: " + b"y" * 400] + [b"y" * 400] * 10, chunk_delay=0.002))
    response = stack.post(api, "solo", True)
    assert_too_large(response, api, "server.max_line_bytes")


@pytest.mark.parametrize("api", ["anthropic", "openai"])
def test_long_line_after_the_first_byte_ends_the_stream_with_an_error(stack: Stack, api: str) -> None:
    stack.reset()
    stack.fakes["primary"].queue(Raw(events=[openai_event("hello "), openai_event(BIG)], chunk_delay=0.01))
    response = stack.post(api, "solo", True)
    assert response.status_code == 200
    text = response.text
    assert "hello" in text and "max_line_bytes" in text
    if api == "anthropic":
        assert "event: error" in text and "message_stop" not in text
    else:
        assert '"error"' in text and "[DONE]" not in text


@pytest.mark.parametrize("api", ["anthropic", "openai"])
@pytest.mark.parametrize("length", ["declared", "chunked"])
def test_whole_answer_over_the_limit_is_a_502(stack: Stack, api: str, length: str) -> None:
    stack.reset()
    big = openai_completion("z" * 3000)
    reply = Raw(body=big, content_type="application/json") if length == "declared" else Raw(
        events=[big[:1000], big[1000:2000], big[2000:]], content_type="application/json", chunk_delay=0.002)
    stack.fakes["primary"].queue(reply)
    response = stack.post(api, "solo", False)
    assert_too_large(response, api, "server.max_upstream_response_bytes")
    stack.fakes["primary"].queue(Raw(body=openai_completion("small enough"), content_type="application/json"))
    assert "small enough" in stack.post(api, "solo", False).text


def test_transform_ndjson_line_over_the_limit(stack: Stack) -> None:
    stack.reset()
    line = json.dumps({"model": "llama3.2", "created_at": "2026-01-01T00:00:00Z",
                       "message": {"role": "assistant", "content": BIG}, "done": False}).encode() + b"\n"
    stack.fakes["ollama"].queue(Raw(events=[line], content_type="application/x-ndjson"))
    assert_too_large(stack.post("anthropic", "ollama", True), "anthropic", "server.max_line_bytes")


def test_transform_sse_line_over_the_limit(stack: Stack) -> None:
    stack.reset()
    event = {"candidates": [{"content": {"role": "model", "parts": [{"text": BIG}]}, "index": 0}]}
    stack.fakes["gemini"].queue(Raw(events=[b"data: " + json.dumps(event).encode() + b"\r\n\r\n"]))
    assert_too_large(stack.post("openai", "gemini", True), "openai", "server.max_line_bytes")


def test_transform_whole_answer_over_the_limit(stack: Stack) -> None:
    stack.reset()
    whole = {"candidates": [{"content": {"role": "model", "parts": [{"text": BIG}]}, "finishReason": "STOP",
                             "index": 0}], "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1}}
    stack.fakes["gemini"].queue(Raw(body=json.dumps(whole).encode(), content_type="application/json"))
    assert_too_large(stack.post("openai", "gemini", False), "openai", "server.max_upstream_response_bytes")


def anthropic_frames(*events: tuple[str, dict[str, Any]]) -> list[bytes]:
    return [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]


MESSAGE_START = ("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929", "content": [],
    "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1}}})


def test_passthrough_frame_over_the_limit_before_the_first_byte(stack: Stack) -> None:
    stack.reset()
    stack.fakes["anthropic"].queue(Raw(events=[b"event: message_start\ndata: {\"t\": \"" + BIG.encode() + b"\"}\n\n"]))
    assert_too_large(stack.post("anthropic", "anthropic", True), "anthropic", "server.max_line_bytes")


def test_passthrough_frame_over_the_limit_after_the_first_byte(stack: Stack) -> None:
    stack.reset()
    delta = ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": BIG}})
    start = ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}})
    stack.fakes["anthropic"].queue(Raw(events=anthropic_frames(MESSAGE_START, start, delta), chunk_delay=0.01))
    response = stack.post("anthropic", "anthropic", True)
    assert response.status_code == 200
    assert "event: message_start" in response.text and "event: error" in response.text
    assert "max_line_bytes" in response.text and "message_stop" not in response.text


def test_passthrough_whole_answer_over_the_limit(stack: Stack) -> None:
    stack.reset()
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
               "content": [{"type": "text", "text": BIG}], "stop_reason": "end_turn", "stop_sequence": None,
               "usage": {"input_tokens": 5, "output_tokens": 1}}
    stack.fakes["anthropic"].queue(Raw(body=json.dumps(message).encode(), content_type="application/json"))
    assert_too_large(stack.post("anthropic", "anthropic", False), "anthropic", "server.max_upstream_response_bytes")

"""Prove the fake upstreams speak each provider's wire format.

Clients are httpx (raw bytes) and the official ``openai`` SDK (does what a
real client would parse); every test is synchronous and fast.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from clasp_gateway.testing import (
    Cut,
    Error,
    FakeUpstream,
    Hang,
    Html,
    Malformed,
    Reasoning,
    Recorded,
    Text,
    ToolCalls,
    free_port,
)
from clasp_gateway.testing.fakes.fragment import KEEP_ALIVE, fragment_event
from clasp_gateway.testing.fakes.wire import Ctx, OpenAIWire

MESSAGES: Any = [{"role": "user", "content": "What's the weather in Paris?"}]
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
AUTH = {"Authorization": "Bearer sk-test"}


@pytest.fixture
def openai_up() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as up:
        yield up


_CLIENTS: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Close every SDK client a test made (no leaked sockets)."""
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def client(up: FakeUpstream, key: str = "sk-test", base_url: str | None = None) -> openai.OpenAI:
    c = openai.OpenAI(base_url=base_url or up.base_url, api_key=key, max_retries=0, timeout=5)
    _CLIENTS.append(c)
    return c


def sse_payloads(raw: bytes) -> list[Any]:
    """Parse an SSE byte stream (any line endings, comments skipped)."""
    text = raw.decode("utf-8").replace("\r\n", "\n")
    out: list[Any] = []
    for block in text.split("\n\n"):
        data = [line[5:].lstrip(" ") for line in block.split("\n") if line.startswith("data:")]
        if data:
            payload = "\n".join(data)
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def post(up: FakeUpstream, body: dict, path: str = "/chat/completions", **kw: Any) -> httpx.Response:
    kw.setdefault("headers", AUTH)
    kw.setdefault("timeout", 5)
    return httpx.post(up.base_url + path, json=body, **kw)


# --------------------------------------------------------------------------- openai


def test_openai_sdk_non_stream_text_and_recording(openai_up: FakeUpstream) -> None:
    openai_up.queue(Text("Hello there!", usage=(11, 3)))
    resp = client(openai_up).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, temperature=0.2)
    assert resp.id.startswith("chatcmpl-") and len(resp.id) == len("chatcmpl-") + 29
    assert resp.object == "chat.completion"
    assert resp.model == "gpt-4o-mini"
    assert resp.choices[0].message.content == "Hello there!"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (11, 3)
    assert resp.usage.total_tokens == 14
    assert resp.usage.prompt_tokens_details is not None and resp.usage.prompt_tokens_details.cached_tokens == 0
    assert resp.system_fingerprint and resp.system_fingerprint.startswith("fp_")

    rec = openai_up.last
    assert isinstance(rec, Recorded)
    assert (rec.method, rec.path) == ("POST", "/v1/chat/completions")
    assert rec.headers["authorization"] == "Bearer sk-test"
    assert rec.bearer == "sk-test"
    assert rec.body["temperature"] == 0.2 and rec.body["messages"] == MESSAGES
    assert json.loads(rec.raw) == rec.body


def test_openai_sdk_non_stream_tool_calls(openai_up: FakeUpstream) -> None:
    openai_up.queue(ToolCalls([("get_weather", {"city": "Paris"}), ("get_time", '{"tz":"CET"}')]))
    resp = client(openai_up).chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=TOOLS)
    msg: Any = resp.choices[0].message
    assert msg.content is None
    assert resp.choices[0].finish_reason == "tool_calls"
    assert msg.tool_calls is not None and [c.function.name for c in msg.tool_calls] == ["get_weather", "get_time"]
    assert json.loads(msg.tool_calls[0].function.arguments) == {"city": "Paris"}
    assert msg.tool_calls[1].function.arguments == '{"tz":"CET"}'
    for call in msg.tool_calls:
        assert call.id.startswith("call_") and len(call.id) == 29 and call.id[5:].isalnum()
    assert openai_up.last.body["tools"] == TOOLS


def test_openai_sdk_stream_text_with_usage(openai_up: FakeUpstream) -> None:
    openai_up.queue(Text("The quick brown fox jumps."))
    stream = client(openai_up).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The quick brown fox jumps."
    assert len(chunks) >= 8  # ~4-character deltas
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    assert finish[0].choices[0].delta.content is None
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == max(1, len(text) // 4)
    assert chunks[-1].usage.prompt_tokens == len(json.dumps(MESSAGES)) // 4


def test_openai_raw_stream_framing(openai_up: FakeUpstream) -> None:
    openai_up.queue(Text("hi"))
    r = post(openai_up, {"model": "gpt-4o", "messages": MESSAGES, "stream": True})
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert r.content.endswith(b"}\n\ndata: [DONE]\n\n")
    events = sse_payloads(r.content)
    assert events[-1] == "[DONE]"
    assert all("usage" not in e for e in events[:-1])  # no include_usage -> no usage key
    assert events[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}


def test_openai_sdk_stream_tool_calls(openai_up: FakeUpstream) -> None:
    args = {"city": "Paris", "unit": "celsius", "days": 3}
    openai_up.queue(ToolCalls([("get_weather", args), ("get_time", {"tz": "Europe/Paris"})], text="Checking."))
    stream = client(openai_up).chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=TOOLS, stream=True)
    text, finish = "", None
    calls: dict[int, dict[str, Any]] = {}
    headers_seen: list[int] = []
    order: list[int] = []
    for chunk in stream:
        choice: Any = chunk.choices[0]
        text += choice.delta.content or ""
        for tc in choice.delta.tool_calls or []:
            order.append(tc.index)
            if tc.id:
                headers_seen.append(tc.index)
                assert tc.type == "function" and tc.function and tc.function.arguments == ""
                calls[tc.index] = {"id": tc.id, "name": tc.function.name, "args": ""}
            else:
                assert tc.function is not None and tc.function.name is None
                calls[tc.index]["args"] += tc.function.arguments
        finish = choice.finish_reason or finish
    assert text == "Checking."
    assert finish == "tool_calls"
    assert headers_seen == [0, 1]
    assert order == sorted(order)  # index 0 completely, then index 1
    assert json.loads(calls[0]["args"]) == args and calls[0]["name"] == "get_weather"
    assert json.loads(calls[1]["args"]) == {"tz": "Europe/Paris"}
    assert order.count(0) > 3  # arguments arrive in several pieces


def test_openai_tool_calls_interleaved(openai_up: FakeUpstream) -> None:
    openai_up.queue(ToolCalls([("a", {"x": "1234567890"}), ("b", {"y": "abcdefghij"})], interleave=True))
    r = post(openai_up, {"model": "gpt-4o", "messages": MESSAGES, "stream": True})
    events = sse_payloads(r.content)[:-1]
    first = events[0]["choices"][0]["delta"]
    assert first["role"] == "assistant" and first["content"] is None and first["tool_calls"][0]["index"] == 0
    order = [tc["index"] for e in events for tc in e["choices"][0]["delta"].get("tool_calls", [])]
    assert order[:4] == [0, 1, 0, 1]
    args = {0: "", 1: ""}
    for e in events:
        for tc in e["choices"][0]["delta"].get("tool_calls", []):
            args[tc["index"]] += tc["function"]["arguments"]
    assert json.loads(args[0]) == {"x": "1234567890"} and json.loads(args[1]) == {"y": "abcdefghij"}


def test_openai_reasoning_stream_and_non_stream(openai_up: FakeUpstream) -> None:
    openai_up.queue(Reasoning("Think think.", "Answer."), Reasoning("Hmm", "Yes", field="reasoning"))
    r = post(openai_up, {"model": "deepseek-reasoner", "messages": MESSAGES, "stream": True})
    deltas = [e["choices"][0]["delta"] for e in sse_payloads(r.content)[:-1]]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "Think think."
    assert "".join(d.get("content") or "" for d in deltas) == "Answer."
    first_content = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all(not d.get("reasoning_content") for d in deltas[first_content:])
    body = post(openai_up, {"model": "m", "messages": MESSAGES}).json()
    assert body["choices"][0]["message"]["reasoning"] == "Hmm"
    assert body["choices"][0]["message"]["content"] == "Yes"


def test_openai_models_script_and_reset(openai_up: FakeUpstream) -> None:
    models = client(openai_up).models.list()
    assert [m.id for m in models.data] == ["gpt-4o", "gpt-4o-mini"]
    openai_up.script = lambda body, rec: Text(f"echo {body['model']} {len(rec.raw)}")
    resp = client(openai_up).chat.completions.create(model="x-1", messages=MESSAGES)
    assert (resp.choices[0].message.content or "").startswith("echo x-1 ")
    openai_up.reset()
    assert openai_up.requests == [] and openai_up.script is None
    assert client(openai_up).chat.completions.create(model="y", messages=MESSAGES).choices[0].message.content == "ok"
    assert post(openai_up, {}, path="/nope").json()["error"]["message"] == "Invalid URL (POST /v1/nope)"


def test_require_key_rejects_mismatch() -> None:
    with FakeUpstream("openai", require_key="sk-x") as up:
        with pytest.raises(openai.AuthenticationError) as exc:
            client(up, key="sk-wrong-key-123").chat.completions.create(model="m", messages=MESSAGES)
        assert exc.value.status_code == 401
        err = exc.value.body
        assert isinstance(err, dict) and err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error"
        assert "param" in err and err["param"] is None
        assert client(up, key="sk-x").chat.completions.create(model="m", messages=MESSAGES).choices
        assert len(up.requests) == 2  # rejected requests are recorded too
        assert post(up, {"model": "m"}, headers={}).status_code == 401


# --------------------------------------------------------------------------- errors & faults


def test_error_429_carries_retry_after(openai_up: FakeUpstream) -> None:
    openai_up.queue(Error(429, headers={"retry-after": "7"}))
    r = post(openai_up, {"model": "gpt-4o", "messages": MESSAGES})
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == "rate_limit_exceeded" and "gpt-4o" in err["message"]
    openai_up.queue(Error(429))
    with pytest.raises(openai.RateLimitError) as exc:
        client(openai_up).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert "retry-after" not in exc.value.response.headers
    openai_up.queue(Error(400, body="plain words"), Error(500, {"custom": True}))
    r = post(openai_up, {"model": "m"})
    assert (r.status_code, r.text, r.headers["content-type"]) == (400, "plain words", "text/plain; charset=utf-8")
    assert post(openai_up, {"model": "m"}).json() == {"custom": True}


def test_cut_aborts_mid_stream(openai_up: FakeUpstream) -> None:
    openai_up.queue(Cut(Text("abcdefghijklmnop"), after_chunks=3))
    seen: list[bytes] = []
    with pytest.raises(httpx.TransportError):
        with httpx.stream(
            "POST", openai_up.base_url + "/chat/completions", json={"model": "m", "stream": True}, headers=AUTH
        ) as r:
            assert r.status_code == 200
            for part in r.iter_bytes():
                seen.append(part)
    raw = b"".join(seen)
    assert b"[DONE]" not in raw and len(sse_payloads(raw)) == 3

    openai_up.queue(Cut(Text("abcdefghijklmnop"), after_chunks=2))
    stream = client(openai_up).chat.completions.create(model="m", messages=MESSAGES, stream=True)
    got: list[str] = []
    with pytest.raises(Exception) as exc:
        for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
    assert isinstance(exc.value, (httpx.TransportError, openai.APIError))
    assert "".join(got) == "abcd"


def test_cut_before_headers_and_non_stream(openai_up: FakeUpstream) -> None:
    openai_up.queue(Cut(Text("x"), before_headers=True), Cut(Text("x" * 100), after_chunks=1), Cut(Text("x")))
    for _ in range(3):
        with pytest.raises(httpx.TransportError):
            post(openai_up, {"model": "m", "messages": MESSAGES})
    assert len(openai_up.requests) == 3

    openai_up.queue(Cut(Text("abc"), after_chunks=0))
    with httpx.stream(
        "POST", openai_up.base_url + "/chat/completions", json={"model": "m", "stream": True}, headers=AUTH
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        with pytest.raises(httpx.TransportError):
            r.read()


def test_restart_on_same_port_and_script_errors() -> None:
    up = FakeUpstream("openai").start()
    port = up.port
    up.stop()
    with pytest.raises(httpx.ConnectError):
        post(up, {"model": "m"})
    up.start()
    try:
        assert up.port == port

        def broken(body: dict, rec: Recorded) -> Text:
            raise RuntimeError("script bug")

        up.script = broken
        r = post(up, {"model": "m"})
        assert r.status_code == 500 and "script bug" in r.text
        assert isinstance(up.errors[0], RuntimeError)
    finally:
        up.stop()


def test_hang_does_not_block_other_requests() -> None:
    up = FakeUpstream("openai").start()
    try:
        up.queue(Hang(30))
        errors: list[BaseException] = []

        def hung_call() -> None:
            try:
                post(up, {"model": "m"}, timeout=30)
            except BaseException as exc:  # expected: connection reset at stop
                errors.append(exc)

        t = threading.Thread(target=hung_call, daemon=True)
        t.start()
        up.wait_for(1)
        for _ in range(5):  # served while the first request hangs
            assert post(up, {"model": "m", "messages": MESSAGES}).json()["choices"][0]["message"]["content"] == "ok"
        with pytest.raises(httpx.ReadTimeout):
            up.queue(Hang(30))
            httpx.post(up.base_url + "/chat/completions", json={}, headers=AUTH, timeout=0.2)
    finally:
        up.stop()
    t.join(10)  # hung handlers end when the server stops (bounded wait, no timing assertion)
    assert not t.is_alive() and errors and isinstance(errors[0], httpx.TransportError)


def test_hang_mid_stream_then_resume(openai_up: FakeUpstream) -> None:
    openai_up.queue(Hang(0.3, reply=Text("abcdefgh"), after_chunks=2))
    times: list[float] = []
    with httpx.stream(
        "POST", openai_up.base_url + "/chat/completions", json={"model": "m", "stream": True}, headers=AUTH
    ) as r:
        for _ in r.iter_lines():
            times.append(time.monotonic())
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) >= 0.25


def test_html_and_malformed(openai_up: FakeUpstream) -> None:
    openai_up.queue(Html(), Malformed(), Malformed())
    r = post(openai_up, {"model": "m"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html") and "<html" in r.text
    r = post(openai_up, {"model": "m"})
    assert r.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        r.json()
    r = post(openai_up, {"model": "m", "stream": True})
    lines = [line for line in r.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    json.loads(lines[0][6:])
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[1][6:])


# --------------------------------------------------------------------------- azure


def test_azure_stream_first_chunk_has_empty_choices() -> None:
    with FakeUpstream("azure") as up:
        up.queue(Text("Hello from Azure"))
        r = httpx.post(
            f"{up.base_url}/openai/deployments/my-gpt4o/chat/completions",
            params={"api-version": "2024-10-21"},
            json={"messages": MESSAGES, "stream": True},
            headers={"api-key": "azkey"},
        )
        assert r.status_code == 200
        assert r.content.startswith(b'data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter')
        events = sse_payloads(r.content)
        first, rest = events[0], events[1:-1]
        assert first["choices"] == [] and first["prompt_filter_results"][0]["prompt_index"] == 0
        assert all("content_filter_results" in c for e in rest for c in e["choices"])
        assert all(e["model"] == "gpt-4o-2024-08-06" and "service_tier" not in e for e in rest)
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in rest) == "Hello from Azure"
        assert up.last.query == {"api-version": "2024-10-21"} and up.last.headers["API-KEY"] == "azkey"

        # The SDK copes with the empty first chunk too.
        az = openai.AzureOpenAI(
            azure_endpoint=up.base_url, api_key="azkey", api_version="2024-10-21", max_retries=0, timeout=5
        )
        _CLIENTS.append(az)
        up.queue(ToolCalls([("get_weather", {"city": "Paris"})]))
        resp = az.chat.completions.create(model="my-gpt4o", messages=MESSAGES, tools=TOOLS)
        assert resp.model == "gpt-4o-2024-08-06" and resp.choices[0].message.tool_calls
        assert up.last.path == "/openai/deployments/my-gpt4o/chat/completions"
        chunks = list(az.chat.completions.create(model="my-gpt4o", messages=MESSAGES, stream=True))
        assert chunks[0].choices == [] and "".join(c.choices[0].delta.content or "" for c in chunks[1:]) == "ok"

        missing = httpx.post(f"{up.base_url}/openai/deployments/d/chat/completions", json={}, headers={"api-key": "k"})
        assert missing.status_code == 404 and missing.json() == {
            "error": {"code": "404", "message": "Resource not found"}
        }
        up.queue(Error(429, headers={"retry-after": "3"}))
        with pytest.raises(openai.RateLimitError) as exc:
            az.chat.completions.create(model="my-gpt4o", messages=MESSAGES)
        assert exc.value.response.headers["retry-after"] == "3"
        assert exc.value.response.json()["error"]["code"] == "429"


# --------------------------------------------------------------------------- ollama


def test_ollama_openai_endpoint_tool_calls_whole_with_finish_stop() -> None:
    with FakeUpstream("ollama") as up:
        assert up.base_url == up.origin
        up.queue(ToolCalls([("get_weather", {"unit": "c", "city": "<Paris>"}), ("get_time", {"tz": "CET"})]))
        r = httpx.post(
            up.base_url + "/v1/chat/completions",
            json={"model": "llama3.2", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
        )
        events = sse_payloads(r.content)
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        with_calls = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("tool_calls")]
        assert len(with_calls) == 1
        calls = with_calls[0]["choices"][0]["delta"]["tool_calls"]
        assert [c["index"] for c in calls] == [0, 1]
        assert all(c["id"].startswith("call_") and len(c["id"]) == 13 for c in calls)
        assert json.loads(calls[0]["function"]["arguments"]) == {"unit": "c", "city": "<Paris>"}
        assert "\\u003c" in calls[0]["function"]["arguments"]  # Go's HTML escaping
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
        assert all("usage" not in c for c in chunks[:-1]) and chunks[-1]["usage"]["total_tokens"] > 0
        assert all(c["system_fingerprint"] == "fp_ollama" for c in chunks)

        up.queue(ToolCalls([("get_weather", {"city": "Paris"})]))
        stream = client(up, key="ollama", base_url=up.base_url + "/v1").chat.completions.create(
            model="llama3.2", messages=MESSAGES, tools=TOOLS, stream=True
        )
        got: list[Any] = list(stream)
        assert got[0].choices[0].delta.tool_calls[0].function.arguments == '{"city":"Paris"}'
        assert got[-1].choices[0].finish_reason == "stop"


def test_ollama_native_api_chat_ndjson() -> None:
    with FakeUpstream("ollama") as up:
        up.queue(Text("Hi there"), ToolCalls([("get_weather", {"city": "Paris"})]), Text("single"))
        r = httpx.post(up.base_url + "/api/chat", json={"model": "llama3.2", "messages": MESSAGES})
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert all(not line["done"] for line in lines[:-1]) and lines[-1]["done"] is True
        assert "".join(line["message"]["content"] for line in lines) == "Hi there"
        assert lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] >= 1
        assert lines[-1]["prompt_eval_count"] == len(json.dumps(MESSAGES)) // 4
        assert lines[0]["created_at"].endswith("Z")

        r = httpx.post(up.base_url + "/api/chat", json={"model": "llama3.2", "messages": MESSAGES, "stream": True})
        lines = [json.loads(line) for line in r.text.splitlines()]
        calls = [c for line in lines for c in line["message"].get("tool_calls", [])]
        assert calls == [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]

        body = httpx.post(up.base_url + "/api/chat", json={"model": "m", "messages": [], "stream": False}).json()
        assert body["message"] == {"role": "assistant", "content": "single"} and body["done"] is True
        assert httpx.get(up.base_url + "/api/tags").json()["models"][0]["name"] == "llama3.2:latest"
        assert httpx.get(up.base_url + "/").text == "Ollama is running"


# --------------------------------------------------------------------------- json_stream


def test_json_stream_ignores_stream_flag() -> None:
    with FakeUpstream("json_stream") as up:
        up.queue(Text("not streamed"))
        r = post(up, {"model": "m", "messages": MESSAGES, "stream": True})
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "not streamed"
        assert up.last.stream


# --------------------------------------------------------------------------- fragmented


FRAGMENT_TEXT = "Café crème – déjà vu 😀👍🏽 naïve façade, 東京 ok!"


def test_fragmented_stream_reassembles_exactly() -> None:
    with FakeUpstream("fragmented", seed=7) as up:
        up.queue(Text(FRAGMENT_TEXT))
        reads: list[bytes] = []
        with httpx.stream(
            "POST", up.base_url + "/chat/completions", json={"model": "m", "stream": True}, headers=AUTH
        ) as r:
            for part in r.iter_raw():
                reads.append(part)
        raw = b"".join(reads)
        assert len(reads) > 10  # really separate TCP reads (typically ~100)
        assert b"\r\n\r\n" in raw and b": keep-alive" in raw
        events = sse_payloads(raw)
        assert events[-1] == "[DONE]"
        pieces = [e["choices"][0]["delta"].get("content") or "" for e in events[:-1]]
        assert "".join(pieces) == FRAGMENT_TEXT
        assert all(len(p) <= 3 for p in pieces)

        up.queue(Text(FRAGMENT_TEXT))
        stream = client(up).chat.completions.create(model="m", messages=MESSAGES, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream) == FRAGMENT_TEXT


def test_fragmented_tool_arguments_with_escaped_unicode() -> None:
    args = {"city": "Montréal", "mood": "😀", "note": "é😀é"}
    with FakeUpstream("fragmented", seed=3) as up:
        up.queue(ToolCalls([("get_weather", args)]))
        stream = client(up).chat.completions.create(model="m", messages=MESSAGES, tools=TOOLS, stream=True)
        pieces = [
            tc.function.arguments
            for c in stream
            for tc in c.choices[0].delta.tool_calls or []
            if tc.function and tc.function.arguments
        ]
        joined = "".join(pieces)
        assert "\\u00e9" in joined and "\\ud83d\\ude00" in joined  # escaped, surrogate pairs
        assert json.loads(joined) == args
        # Some piece boundary falls strictly inside a \uXXXX escape.
        bounds = set(itertools.accumulate(len(p) for p in pieces))
        escapes = [m.span() for m in re.finditer(r"\\u[0-9a-f]{4}", joined)]
        assert any(a < b < z for a, z in escapes for b in bounds)


def test_fragment_event_splits_inside_utf8_and_data_field() -> None:
    event = ("data: " + json.dumps({"c": "é😀"}, ensure_ascii=False) + "\n\n").encode()
    rng = random.Random(1)
    splits = [fragment_event(event, rng) for _ in range(50)]
    for writes in splits:
        assert b"".join(writes).replace(b"\r\n", b"\n").replace(KEEP_ALIVE, b"") == event
    pieces = [p for writes in splits for p in writes]
    assert any(0x80 <= p[0] <= 0xBF for p in pieces if p)  # starts mid-character
    assert any(p in (b"d", b"da", b"dat", b"data", b"data:") for p in pieces)  # split inside "data:"
    assert any(w.endswith(b"\r\n\r\n") for writes in splits for w in writes)


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize(
    "reply",
    [Text("héllo wörld 😀"), ToolCalls([("f", {"a": 1}), ("g", "{}")], text="x"), Reasoning("r", "t")],
)
def test_openai_fast_events_match_chunks(reply: Any, include_usage: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("clasp_gateway.testing.fakes.wire.time.time", lambda: 1_700_000_000.0)
    wire = OpenAIWire()

    def ctx() -> Ctx:
        return Ctx("gpt-4o", MESSAGES, True, include_usage, random.Random(5))

    c1, c2 = ctx(), ctx()
    assert wire.events(wire.turn(reply, c1), c1) == [wire.event(c) for c in wire.chunks(wire.turn(reply, c2), c2)]


# --------------------------------------------------------------------------- misc


def test_free_port_and_concurrency() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    with FakeUpstream("openai", chunk_delay=0.001) as up:
        up.script = lambda body, rec: Text("x" * 40)
        with httpx.Client(timeout=5, headers=AUTH) as http:
            results: list[str] = []

            def one() -> None:
                r = http.post(up.base_url + "/chat/completions", json={"model": "m", "stream": True})
                results.append(
                    "".join(e["choices"][0]["delta"].get("content") or "" for e in sse_payloads(r.content)[:-1])
                )

            threads = [threading.Thread(target=one) for _ in range(32)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert results == ["x" * 40] * 32 and len(up.requests) == 32

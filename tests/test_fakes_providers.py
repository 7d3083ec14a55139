"""The provider flavors of the fakes speak each provider's wire format (raw httpx)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from clasp_gateway.testing import Error, FakeUpstream, Reasoning, Text, ToolCalls

ARGS = {"city": "Zürich"}


def sse(raw: bytes) -> list[tuple[str, Any]]:
    """(event name, parsed data) of an SSE body, any line ends."""
    out = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        lines = block.split("\n")
        name = next((ln[6:].strip() for ln in lines if ln.startswith("event:")), "")
        data = "\n".join(ln[5:].lstrip() for ln in lines if ln.startswith("data:"))
        if data and data != "[DONE]":
            out.append((name, json.loads(data)))
    return out


def test_gemini_wire() -> None:
    with FakeUpstream("gemini") as up:
        headers = {"x-goog-api-key": "AIza-test"}
        body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
        up.queue(ToolCalls([("get_weather", ARGS), ("get_time", {})], text="Checking."))
        r = httpx.post(up.base_url + "/models/gemini-2.5-flash:streamGenerateContent?alt=sse", json=body, headers=headers)
        assert r.headers["content-type"].startswith("text/event-stream") and b"\r\n\r\n" in r.content
        events = [data for _, data in sse(r.content)]
        last = events[-1]["candidates"][0]
        assert last["finishReason"] == "STOP" and "usageMetadata" in events[-1]
        calls = [p for p in last["content"]["parts"] if "functionCall" in p]
        assert [c["functionCall"] for c in calls] == [{"name": "get_weather", "args": ARGS}, {"name": "get_time", "args": {}}]
        assert all(re.search(r"[+/]", c["thoughtSignature"]) for c in calls)
        assert events[0]["modelVersion"] == "gemini-2.5-flash"
        up.queue(Reasoning("Hmm.", "Hi!"))
        whole = httpx.post(up.base_url + "/models/gemini-2.5-flash:generateContent", json=body, headers=headers).json()
        assert whole["candidates"][0]["content"]["parts"] == [{"text": "Hmm.", "thought": True}, {"text": "Hi!"}]
        assert whole["usageMetadata"]["thoughtsTokenCount"] >= 1
        up.queue(Error(429))
        r = httpx.post(up.base_url + "/models/gemini-2.5-flash:generateContent", json=body, headers=headers)
        assert r.status_code == 429 and "retry-after" not in r.headers
        assert r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
        assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"} in r.json()["error"]["details"]
    with FakeUpstream("gemini", require_key="good") as up:
        r = httpx.post(up.base_url + "/models/gemini-2.5-flash:generateContent", json=body, headers={"x-goog-api-key": "bad"})
        assert r.status_code == 400 and r.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
        assert httpx.post(up.base_url + "/models/m:generateContent?key=good", json=body).status_code == 200


def test_cohere_wire() -> None:
    with FakeUpstream("cohere") as up:
        auth = {"authorization": "Bearer co-key"}
        up.queue(ToolCalls([("get_weather", ARGS)], text="I will check."))
        r = httpx.post(up.base_url + "/v2/chat", headers=auth, json={"model": "command-a-03-2025", "stream": True,
                                                                      "messages": [{"role": "user", "content": "hi"}]})
        events = sse(r.content)
        names = [n for n, _ in events]
        assert names[0] == "message-start" and names[-1] == "message-end" and "tool-plan-delta" in names
        assert names[names.index("tool-call-start"):names.index("tool-call-end") + 1][-1] == "tool-call-end"
        assert all(n == d["type"] for n, d in events) and b"[DONE]" not in r.content
        start = next(d for n, d in events if n == "tool-call-start")["delta"]["message"]["tool_calls"]
        assert start["id"].startswith("get_weather_") and start["function"]["name"] == "get_weather"
        args = "".join(d["delta"]["message"]["tool_calls"]["function"]["arguments"] for n, d in events if n == "tool-call-delta")
        assert json.loads(args) == ARGS
        assert events[-1][1]["delta"]["finish_reason"] == "TOOL_CALL"
        assert set(events[-1][1]["delta"]["usage"]) == {"billed_units", "tokens"}
        assert r.headers["x-trial-endpoint-call-limit"] == "10"
        up.queue(Text("Hello"))
        whole = httpx.post(up.base_url + "/v2/chat", headers=auth, json={"model": "c", "messages": [{"role": "user", "content": "x"}]}).json()
        assert whole["message"]["content"] == [{"type": "text", "text": "Hello"}] and whole["finish_reason"] == "COMPLETE"
        bad = httpx.post(up.base_url + "/v2/chat", headers=auth, json={"model": "c", "messages": [{"role": "user", "content": "x"}],
                                                                        "stream_options": {"include_usage": True}})
        assert bad.status_code == 400 and "stream_options is not a valid field" in bad.json()["message"]
        assert httpx.post(up.base_url + "/v2/chat", json={"model": "c"}).json()["message"] == "no api key supplied"


def test_anthropic_wire() -> None:
    with FakeUpstream("anthropic") as up:
        headers = {"x-api-key": "sk-ant", "anthropic-version": "2023-06-01"}
        body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "x"}]}
        up.queue(Reasoning("Let me think.", "Answer."))
        r = httpx.post(up.base_url + "/v1/messages?beta=true", json=body, headers=headers)
        events = sse(r.content)
        names = [n for n, _ in events]
        assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
        kinds = [d["delta"]["type"] for n, d in events if n == "content_block_delta"]
        assert kinds[0] == "thinking_delta" and "signature_delta" in kinds and kinds[-1] == "text_delta"
        assert r.headers["anthropic-ratelimit-requests-limit"] == "50" and r.headers["request-id"].startswith("req_")
        missing = httpx.post(up.base_url + "/v1/messages", json=body, headers={"x-api-key": "k"})
        assert missing.status_code == 400 and "anthropic-version" in missing.json()["error"]["message"]
        forged = {**body, "stream": False, "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "forged"}]},
            {"role": "user", "content": "y"}]}
        r = httpx.post(up.base_url + "/v1/messages", json=forged, headers=headers)
        assert r.status_code == 400 and "Invalid `signature`" in r.json()["error"]["message"]
        up.queue(Error(529))
        r = httpx.post(up.base_url + "/v1/messages", json=body, headers=headers)
        assert r.status_code == 529 and r.headers["retry-after"] == "9"
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "overloaded_error"
        assert httpx.post(up.base_url + "/v1/messages", json=body).json()["error"]["type"] == "authentication_error"


def test_openai_compatible_flavors() -> None:
    auth = {"authorization": "Bearer k"}
    msgs = [{"role": "user", "content": "x"}]
    with FakeUpstream("deepseek") as up:
        up.queue(Reasoning("think", "answer"))
        r = httpx.post(up.base_url + "/chat/completions", headers=auth, json={"model": "deepseek-reasoner", "messages": msgs, "stream": True})
        assert r.content.startswith(b": keep-alive\n\n")
        deltas = [d["choices"][0]["delta"] for _, d in sse(r.content) if d.get("choices")]
        assert "".join(d.get("reasoning_content") or "" for d in deltas) == "think"
        assert "".join(d.get("content") or "" for d in deltas) == "answer"
    with FakeUpstream("mistral") as up:
        up.queue(ToolCalls([("get_weather", ARGS)]))
        r = httpx.post(up.base_url + "/chat/completions", headers=auth, json={"model": "m", "messages": msgs, "stream": True})
        chunks = [d for _, d in sse(r.content)]
        [call] = next(c["choices"][0]["delta"]["tool_calls"] for c in chunks if c["choices"][0]["delta"].get("tool_calls"))
        assert re.fullmatch(r"[a-zA-Z0-9]{9}", call["id"]) and json.loads(call["function"]["arguments"]) == ARGS
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls" and chunks[-1]["usage"]["prompt_tokens"] > 0
        extra = httpx.post(up.base_url + "/chat/completions", headers=auth, json={"model": "m", "messages": msgs, "user": "u"})
        assert extra.status_code == 422 and extra.json()["message"]["detail"][0]["type"] == "extra_forbidden"
        bad_id = httpx.post(up.base_url + "/chat/completions", headers=auth, json={"model": "m", "messages": [
            *msgs, {"role": "assistant", "content": "", "tool_calls": [{"id": "toolu_01x", "type": "function",
                                                                        "function": {"name": "f", "arguments": "{}"}}]}]})
        assert bad_id.status_code == 400 and bad_id.json()["code"] == "3280"
    with FakeUpstream("groq") as up:
        up.queue(Text("hi"))
        r = httpx.post(up.base_url + "/chat/completions", headers=auth, json={
            "model": "llama", "messages": msgs, "stream": True, "stream_options": {"include_usage": True}})
        chunks = [d for _, d in sse(r.content)]
        assert "x_groq" in chunks[0] and chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
        finish = next(c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"])
        assert finish["x_groq"]["usage"]["queue_time"] > 0
        assert r.headers["x-ratelimit-reset-requests"] == "2m59.56s"
        up.queue(Error(429))
        r = httpx.post(up.base_url + "/chat/completions", headers=auth, json={"model": "llama", "messages": msgs})
        assert r.status_code == 429 and r.headers["retry-after"] == "7"
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
    with FakeUpstream("vllm") as up:
        up.queue(ToolCalls([("get_weather", ARGS)]))
        done = httpx.post(up.base_url + "/chat/completions", json={"model": "q", "messages": msgs}).json()  # no key
        assert done["choices"][0]["message"]["tool_calls"][0]["id"].startswith("chatcmpl-tool-")
        assert done["choices"][0]["stop_reason"] is None and done["prompt_logprobs"] is None


def test_ai21_wire() -> None:
    with FakeUpstream("ai21") as up:
        url = up.base_url + "/chat/completions"
        assert url.endswith("/studio/v1/chat/completions")
        auth = {"authorization": "Bearer ai21-key"}
        hi = [{"role": "user", "content": "hi"}]
        up.queue(Text("Hello there"))
        r = httpx.post(url, headers=auth, json={"model": "jamba-large-1.7", "messages": hi, "stream": True})
        raw = r.content
        chunks = [d for _, d in sse(raw)]
        assert raw.endswith(b"data: [DONE]\n\n") and r.headers["content-type"].startswith("text/event-stream")
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"} and chunks[0]["id"].startswith("chat-")
        assert all(set(c) == {"id", "choices", "usage"} for c in chunks)  # no object, created or model
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello there"
        assert [c["usage"] is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
        assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
        up.queue(ToolCalls([("get_weather", ARGS)]))
        whole = httpx.post(url, headers=auth, json={"model": "jamba-large-1.7", "messages": hi}).json()
        assert set(whole) == {"id", "choices", "usage", "meta"}
        message = whole["choices"][0]["message"]
        [call] = message["tool_calls"]
        assert call["type"] == "function" and json.loads(call["function"]["arguments"]) == ARGS
        assert whole["choices"][0]["finish_reason"] == "tool_calls"
        up.queue(Text("plain"))
        plain = httpx.post(url, headers=auth, json={"model": "jamba-large-1.7", "messages": hi}).json()
        assert plain["choices"][0]["message"] == {"role": "assistant", "content": "plain", "tool_calls": None}
        bad = httpx.post(url, headers=auth, json={"model": "m", "messages": hi, "user": "u", "stream_options": {}})
        assert bad.status_code == 422
        assert [d["loc"] for d in bad.json()["detail"]] == [["body", "stream_options"], ["body", "user"]]
        denied = httpx.post(url, json={"model": "m", "messages": hi})
        assert denied.status_code == 401 and denied.json() == {"detail": "Forbidden: Bad or missing API token."}
        up.queue(Error(429))
        assert httpx.post(url, headers=auth, json={"model": "m", "messages": hi}).json() == {"detail": "Too many requests"}
        assert httpx.get(up.base_url + "/models", headers=auth).status_code == 404

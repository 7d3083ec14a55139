"""AI21 Jamba, a provider the gateway reaches through LiteLLM's catch-all
(``mode: litellm``, ``litellm.acompletion``), against a fake of AI21's own wire
(``tests/fakes/ai21.py``: ``/studio/v1/chat/completions``, bearer auth, FastAPI
``{"detail": ...}`` errors, chunks without ``object``/``model``, usage only on the
last chunk, and a 422 for any top-level key outside AI21's documented set).

Through the narrowed LiteLLM path: only the canonical parameters reach
``acompletion`` (``params.py``), and one attempt is one upstream call, whatever the
provider answers (LiteLLM's openai-SDK path would otherwise retry twice on its own,
waiting out ``retry-after``)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from clasp_gateway import hookimpl
from clasp_gateway.plugins import PluginManager
from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import GATEWAY_KEY, Error, FakeUpstream, GatewayServer, Reply, Text, ToolCalls, config_from
from clasp_gateway.testing.fakes.ai21 import BAD_TOKEN
from clasp_gateway.testing.fakes.keys import key_of
from clasp_gateway.testing.fakes.record import Recorded
from clasp_gateway.wire.catalog import provider_profile
from clasp_gateway.wire.litellm_adapter import LiteLLMAdapter

KEY = "ai21-key-0123456789abcdef"
MODEL = "jamba-large-1.7"
WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


class Stack:
    """A fake AI21 behind a running gateway (clasp-claude loaded, no retry plugin)."""

    def __init__(self, up: FakeUpstream, server: GatewayServer) -> None:
        self.up = up
        self.server = server

    def calls(self) -> list[Recorded]:
        return [r for r in self.up.requests if r.path == "/studio/v1/chat/completions"]

    def openai(self, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.server.base_url + "/v1/chat/completions", timeout=60,
                          headers={"authorization": f"Bearer {GATEWAY_KEY}"}, json={"model": "jamba", **body})

    def anthropic(self, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.server.base_url + "/v1/messages", timeout=60,
                          headers={"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"},
                          json={"model": "claude-sonnet-4-5", "max_tokens": 200, **body})

    def one_call(self, reply: Reply, send: Any) -> tuple[httpx.Response, Recorded]:
        """Queue ``reply``, send, and check exactly one upstream call was made."""
        before = len(self.calls())
        self.up.queue(reply)
        response = send()
        calls = self.calls()[before:]
        assert len(calls) == 1, [c.json for c in calls]
        assert not self.up.errors, self.up.errors
        return response, calls[0]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CLASP_LOAD_PLUGINS", "claude")  # one attempt per request: no retry plugin
        with FakeUpstream("ai21", require_key=KEY) as up:
            config = config_from({"models": {"*": [{"model": f"ai21/{MODEL}", "api_base": up.base_url,
                                                     "api_key": KEY}]}})
            with GatewayServer(config) as server:
                yield Stack(up, server)


def sse(response: httpx.Response) -> list[tuple[str, Any]]:
    """(event name, data) pairs; OpenAI streams have no names."""
    out: list[tuple[str, Any]] = []
    name = ""
    for line in response.text.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and line[6:] != "[DONE]":
            out.append((name, json.loads(line[6:])))
            name = ""
    return out


def usage_of(rec: Recorded, text: str) -> tuple[int, int]:
    """The usage the fake reports for ``text`` (its own count: JSON size / 4)."""
    return len(json.dumps(rec.json["messages"])) // 4, max(1, len(text) // 4)


# --- the path ----------------------------------------------------------------------------------


def test_ai21_goes_through_litellms_catch_all(stack: Stack) -> None:
    [dep] = stack.server.gateway.config.deployments()
    assert provider_profile("ai21").mode == "litellm" and dep.mode == "litellm"
    adapter = stack.server.gateway.providers.adapter_for(dep)
    assert isinstance(adapter, LiteLLMAdapter)
    litellm = adapter.ensure_loaded()
    assert litellm.get_llm_provider(f"ai21/{MODEL}")[1] == "ai21_chat"  # LiteLLM's name for AI21's chat API


# --- answers -----------------------------------------------------------------------------------


def test_a_plain_answer(stack: Stack) -> None:
    response, rec = stack.one_call(Text("Hello from Jamba."), lambda: stack.openai(
        {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.2, "max_tokens": 64}))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "Hello from Jamba."
    assert body["choices"][0]["finish_reason"] == "stop"
    prompt, completion = usage_of(rec, "Hello from Jamba.")
    assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]) == (prompt, completion)
    assert rec.headers["authorization"] == f"Bearer {KEY}"
    assert rec.json == {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2,
                        "max_tokens": 64}


def test_a_streamed_answer_on_both_apis(stack: Stack) -> None:
    response, rec = stack.one_call(Text("Streaming from Jamba."), lambda: stack.openai(
        {"messages": [{"role": "user", "content": "hi"}], "stream": True, "stream_options": {"include_usage": True}}))
    assert response.status_code == 200, response.text
    chunks = [d for _, d in sse(response)]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")) == \
        "Streaming from Jamba."
    assert [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices") and
            c["choices"][0].get("finish_reason")] == ["stop"]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert [(u["prompt_tokens"], u["completion_tokens"]) for u in usage] == [usage_of(rec, "Streaming from Jamba.")]
    assert rec.json["stream"] is True and "stream_options" not in rec.json  # AI21's API has no such field

    response, rec = stack.one_call(Text("Claude Code, via Jamba."), lambda: stack.anthropic(
        {"messages": [{"role": "user", "content": "hi"}], "stream": True}))
    events = sse(response)
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "Claude Code, via Jamba."
    [delta] = [d for n, d in events if n == "message_delta"]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["output_tokens"] == usage_of(rec, text)[1]  # the provider's count, not an estimate


def test_a_tool_call_non_streamed_and_streamed_then_its_result(stack: Stack) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}]
    response, rec = stack.one_call(ToolCalls([("get_weather", {"city": "Paris"})]), lambda: stack.openai(
        {"messages": [{"role": "user", "content": "weather in Paris?"}], "tools": tools}))
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    [call] = choice["message"]["tool_calls"]
    assert choice["finish_reason"] == "tool_calls"
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert rec.json["tools"] == tools

    response, rec = stack.one_call(ToolCalls([("get_weather", {"city": "Oslo"})], text="Checking."),
                                   lambda: stack.anthropic({"messages": [{"role": "user", "content": "Oslo?"}],
                                                            "tools": [WEATHER], "stream": True}))
    events = sse(response)
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert [b["type"] for b in starts] == ["text", "tool_use"]
    tool = starts[1]
    partial = "".join(d["delta"]["partial_json"] for n, d in events
                      if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta")
    assert tool["name"] == "get_weather" and json.loads(partial) == {"city": "Oslo"}
    assert [d["delta"]["stop_reason"] for n, d in events if n == "message_delta"] == ["tool_use"]
    assert rec.json["tools"][0]["function"]["name"] == "get_weather"

    # The result goes back as AI21 expects it: the assistant's tool_calls, then a tool message.
    history = [
        {"role": "user", "content": "Oslo?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": tool["id"], "name": "get_weather",
                                           "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool["id"], "content": "-3C, snow"}]},
    ]
    response, rec = stack.one_call(Text("It is -3C and snowing."), lambda: stack.anthropic(
        {"messages": history, "tools": [WEATHER]}))
    assert response.json()["content"] == [{"type": "text", "text": "It is -3C and snowing."}]
    assistant, result = rec.json["messages"][1], rec.json["messages"][2]
    assert assistant["tool_calls"][0]["id"] == tool["id"]
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert result["role"] == "tool" and result["tool_call_id"] == tool["id"] and "-3C" in json.dumps(result)


# --- errors: mapped, one upstream call each ----------------------------------------------------


@pytest.mark.parametrize(("reply", "status", "kind", "text"), [
    (Error(401), 500, "api_error", BAD_TOKEN),
    (Error(403), 403, "permission_error", "Forbidden"),
    (Error(404), 404, "not_found_error", "Not Found"),
    (Error(422), 400, "invalid_request_error", "Invalid request"),
    (Error(429, headers={"retry-after": "7"}), 429, "rate_limit_error", "Too many requests"),
    (Error(500), 500, "api_error", "Internal server error"),
    (Error(503), 529, "overloaded_error", "Service Unavailable"),
], ids=lambda v: str(v.status) if isinstance(v, Error) else None)
@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_an_upstream_error_is_mapped_after_one_call(
    stack: Stack, api: str, reply: Error, status: int, kind: str, text: str
) -> None:
    messages = [{"role": "user", "content": "hi"}]
    for stream in (False, True):
        if api == "openai":
            response, _ = stack.one_call(reply, lambda s=stream: stack.openai({"messages": messages, "stream": s}))
            error = response.json()["error"]
            assert error["code"] == kind
        else:
            response, _ = stack.one_call(reply, lambda s=stream: stack.anthropic({"messages": messages, "stream": s}))
            body = response.json()
            assert body["type"] == "error" and body["error"]["type"] == kind
            error = body["error"]
        assert response.status_code == status
        assert error["message"] == f"ai21/{MODEL}: provider answered {reply.status}: {text}"
        assert KEY not in response.text and "Exception" not in response.text and "litellm" not in response.text
        if reply.status == 429:
            assert response.headers["retry-after"] == "7"


# --- a client's fields steer nothing -----------------------------------------------------------


def test_client_fields_that_would_steer_litellm_never_reach_it(stack: Stack) -> None:
    with FakeUpstream("ai21", require_key=False) as elsewhere:
        hostile = {
            "api_base": elsewhere.base_url, "base_url": elsewhere.base_url, "api_key": "sk-client",
            "extra_headers": {"authorization": "Bearer sk-client"}, "num_retries": 5, "max_retries": 5,
            "fallbacks": ["openai/gpt-4o"], "mock_response": "mocked", "metadata": {"x": 1}, "user": "u-1",
            "top_k": 5, "logprobs": True, "stream_options": {"include_usage": True},
        }
        response, rec = stack.one_call(Error(503), lambda: stack.openai(
            {"messages": [{"role": "user", "content": "hi"}], **hostile}))
        assert elsewhere.requests == []
    assert response.status_code == 529  # the provider's answer, once: no retry, no fallback, no mock
    assert key_of(rec) == KEY
    assert set(rec.json) <= {"model", "messages", "stream", "max_tokens", "temperature", "top_p", "stop", "n",
                             "seed", "tools", "tool_choice", "response_format"}


# --- permission checks on the catch-all path ---------------------------------------------------


class LoopCatcher:
    """Keeps the gateway's event loop, to run a permission round on it."""

    loop: asyncio.AbstractEventLoop | None = None

    @hookimpl
    def startup(self, app: Any, config: Any) -> None:
        self.loop = asyncio.get_running_loop()


def test_a_key_without_access_is_left_out_on_the_litellm_path(caplog: pytest.LogCaptureFixture) -> None:
    bad = "ai21-revoked-9876543210fedcba"

    def script(body: dict, rec: Recorded) -> Reply | None:
        return Error(401) if key_of(rec) == bad else Text("ok")

    with pytest.MonkeyPatch.context() as env, FakeUpstream("ai21", require_key=False) as up:
        env.setenv("CLASP_LOAD_PLUGINS", "claude")
        env.setenv("AI21_K1", KEY)
        env.setenv("AI21_K2", bad)
        up.script = script
        config = config_from({
            "permissions": {"enabled": True, "probe_at_startup": False, "interval": 0},
            "models": {"*": [{"model": f"ai21/{MODEL}", "api_base": up.base_url,
                              "api_keys": ["${AI21_K1}", "${AI21_K2}"]}]},
        })
        catcher = LoopCatcher()
        pm = PluginManager()
        pm.load()
        pm.register(catcher, name="loop-catcher")
        with GatewayServer(config, create_app(config, pm)) as server, caplog.at_level(logging.WARNING):
            assert catcher.loop is not None
            asyncio.run_coroutine_threadsafe(server.gateway.permissions.step(), catcher.loop).result(timeout=60)
            for _ in range(3):
                assert httpx.post(server.base_url + "/v1/chat/completions", timeout=60,
                                  headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                                  json={"model": "jamba", "messages": [{"role": "user", "content": "hi"}]}
                                  ).status_code == 200
    probe = [{"role": "user", "content": "ping"}]
    assert sorted(key_of(r) or "" for r in up.requests if r.json.get("messages") == probe) == sorted([KEY, bad])
    assert [key_of(r) for r in up.requests if r.json.get("messages") != probe] == [KEY, KEY, KEY]
    assert any("API key ${AI21_K2} has no access to model " + MODEL in r.getMessage() for r in caplog.records)
    assert bad not in caplog.text

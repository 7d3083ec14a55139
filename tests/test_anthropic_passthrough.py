"""Anthropic as an upstream: an Anthropic client's request and Anthropic's events pass
through the gateway untouched (clasp-claude's pass-through), signatures, cache
breakpoints and betas included; OpenAI clients still reach Anthropic through
LiteLLM's transform; a failing Anthropic deployment still falls back."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import anthropic
import clasp_claude
import httpx
import openai
import pytest
from clasp_claude.stream import THINKING_SIGNATURE

from clasp_gateway import hookimpl
from clasp_gateway.plugins import PluginManager
from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import (
    GATEWAY_KEY,
    Cut,
    Error,
    FakeUpstream,
    GatewayServer,
    Reasoning,
    Text,
    ToolCalls,
    config_from,
    openai_models,
)
from clasp_gateway.testing.fakes.anthropic import issued_signatures

UPSTREAM_KEY = "sk-ant-upstream-0123456789"
ANTHROPIC_ID = re.compile(r"msg_01[0-9A-Za-z]{22}")
"""A message id as Anthropic makes it (and the fake upstream)."""
GATEWAY_ID = re.compile(r"msg_[0-9a-f]{28}")
"""A message id the gateway's translation makes (``msg_`` + the request id's hex)."""
BETAS = "interleaved-thinking-2025-05-14,context-management-2025-06-27,fine-grained-tool-streaming-2025-05-14"
TOOLS: list[Any] = [{
    "name": "get_weather", "description": "Weather for a city",
    "input_schema": {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                     "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False},
    "cache_control": {"type": "ephemeral"},
}]
SYSTEM = [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}]


class Recorder:
    """Collects ``record`` events."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    @hookimpl
    def record(self, ctx: Any, event: dict[str, Any]) -> None:
        self.events.append(event)

    def last_request(self) -> dict[str, Any]:
        return [e for e in self.events if e["kind"] == "request"][-1]


def gateway_for(models: dict[str, Any], recorder: Recorder) -> GatewayServer:
    pm = PluginManager()
    pm.load(entry_points=False)
    pm.register(clasp_claude, name="claude")
    pm.register(recorder, name="recorder")
    config = config_from({"models": models})
    return GatewayServer(config, create_app(config, pm))


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[FakeUpstream, GatewayServer, Recorder]]:
    recorder = Recorder()
    with FakeUpstream("anthropic", require_key=UPSTREAM_KEY) as up:
        models = {"*": [{"model": "anthropic/claude-sonnet-4-5-20250929", "api_base": up.base_url,
                         "api_key": UPSTREAM_KEY}]}
        with gateway_for(models, recorder) as gateway:
            yield up, gateway, recorder


@pytest.fixture
def fresh(stack: tuple[FakeUpstream, GatewayServer, Recorder]) -> tuple[FakeUpstream, GatewayServer, Recorder]:
    stack[0].reset()
    return stack


def post_stream(gateway: GatewayServer, body: dict[str, Any], beta: str = BETAS) -> list[tuple[str, bytes]]:
    """The raw (event, data bytes) frames the gateway sent."""
    frames = []
    headers = {"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01", "anthropic-beta": beta}
    with httpx.stream("POST", gateway.base_url + "/v1/messages?beta=true", json=body, headers=headers, timeout=30) as r:
        assert r.status_code == 200, r.read()
        raw = r.read()
    for block in raw.split(b"\n\n"):
        lines = block.split(b"\n")
        name = next((ln[7:].decode() for ln in lines if ln.startswith(b"event: ")), "")
        data = b"\n".join(ln[6:] for ln in lines if ln.startswith(b"data: "))
        if data:
            frames.append((name, data))
    return frames


def test_stream_goes_both_ways_untouched(fresh: Any) -> None:
    up, gateway, recorder = fresh
    up.queue(Reasoning("Let me think about Zürich.", "It is sunny."))
    body = {
        "model": "claude-sonnet-4-5", "max_tokens": 32000, "stream": True, "system": SYSTEM, "tools": TOOLS,
        "thinking": {"type": "enabled", "budget_tokens": 10000}, "metadata": {"user_id": "user_abc_account_x"},
        "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Weather in Zürich?", "cache_control": {"type": "ephemeral"}}]}],
    }
    frames = post_stream(gateway, body)
    sent = up.last
    # Upstream: the client's body, only the model changed; its betas and version; our key.
    assert sent.json == {**body, "model": "claude-sonnet-4-5-20250929"}
    assert sent.headers["anthropic-beta"] == BETAS and sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["x-api-key"] == UPSTREAM_KEY and GATEWAY_KEY not in str(dict(sent.headers))
    assert sent.path == "/v1/messages"
    # Downstream: Anthropic's own events, in order, bytes unchanged.
    names = [n for n, _ in frames]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    payloads = [json.loads(d) for _, d in frames]
    assert all(p["type"] == n for n, p in zip(names, payloads, strict=True))
    start = payloads[0]["message"]
    assert ANTHROPIC_ID.fullmatch(start["id"]) and start["model"] == "claude-sonnet-4-5-20250929"
    signature = next(p["delta"]["signature"] for p in payloads if p.get("delta", {}).get("type") == "signature_delta")
    assert signature in issued_signatures()  # Anthropic's signature, not the gateway's marker
    thinking = "".join(p["delta"]["thinking"] for p in payloads if p.get("delta", {}).get("type") == "thinking_delta")
    assert thinking == "Let me think about Zürich."
    event = recorder.last_request()
    assert event["status"] == 200 and event["provider"] == "anthropic" and not event["cut"]
    assert event["usage"]["input_tokens"] > 0 and event["usage"]["output_tokens"] > 0


def test_signed_thinking_history_is_accepted_next_turn(fresh: Any) -> None:
    """The fake refuses a thinking block whose signature it did not issue: the
    pass-through replays Claude's own history exactly."""
    up, gateway, _ = fresh
    client = anthropic.Anthropic(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)
    up.queue(Reasoning("Think first.", "Calling."), Text("Done."))
    first = client.messages.create(model="claude-sonnet-4-5", max_tokens=20000, tools=TOOLS,  # type: ignore[arg-type]
                                   thinking={"type": "enabled", "budget_tokens": 5000},
                                   messages=[{"role": "user", "content": "go"}])
    assert first.content[0].type == "thinking" and first.content[0].signature in issued_signatures()  # type: ignore[union-attr]
    assert ANTHROPIC_ID.fullmatch(first.id)  # Anthropic's message, verbatim
    second = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=20000, tools=TOOLS, thinking={"type": "enabled", "budget_tokens": 5000},
        messages=[{"role": "user", "content": "go"}, {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                  {"role": "user", "content": "continue"}],
    )  # type: ignore[arg-type]
    assert second.content[-1].text == "Done."  # type: ignore[union-attr]
    replayed = up.last.json["messages"][1]["content"][0]
    assert replayed["signature"] == first.content[0].signature  # type: ignore[union-attr]


def test_thinking_signed_by_the_gateway_is_not_sent_to_anthropic(fresh: Any) -> None:
    """History from another provider carries the gateway's marker signature, which
    Anthropic would reject: those blocks (only those) are dropped."""
    up, gateway, _ = fresh
    client = anthropic.Anthropic(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)
    up.queue(Text("Fine."))
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=[
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "from deepseek", "signature": THINKING_SIGNATURE},
                                          {"type": "text", "text": "Hello!"}]},
        {"role": "user", "content": "and now?"},
    ])  # type: ignore[arg-type]
    assert message.content[0].text == "Fine."  # type: ignore[union-attr]
    assert up.last.json["messages"][1]["content"] == [{"type": "text", "text": "Hello!"}]


def test_streamed_tool_use_with_the_sdk(fresh: Any) -> None:
    up, gateway, recorder = fresh
    client = anthropic.Anthropic(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)
    up.queue(ToolCalls([("get_weather", {"city": "Zürich \U0001F600"})], text="Checking."))
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=1000, tools=TOOLS,  # type: ignore[arg-type]
                                messages=[{"role": "user", "content": "weather?"}]) as stream:
        message = stream.get_final_message()
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[1].input == {"city": "Zürich \U0001F600"} and message.content[1].id.startswith("toolu_01")  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    assert recorder.last_request()["usage"]["output_tokens"] > 1


def test_anthropic_errors_reach_the_client_shaped(fresh: Any) -> None:
    up, gateway, _ = fresh
    client = anthropic.Anthropic(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)
    up.queue(Error(429))
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])  # type: ignore[arg-type]
    assert info.value.response.headers["retry-after"] == "9"
    up.queue(Error(529))
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])  # type: ignore[arg-type]
    assert overloaded.value.status_code == 529 and overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


def test_cut_stream_ends_with_an_error_event_not_message_stop(fresh: Any) -> None:
    up, gateway, recorder = fresh
    up.queue(Cut(Text("this will be cut " * 20), after_chunks=5))
    frames = post_stream(gateway, {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True,
                                   "messages": [{"role": "user", "content": "x"}]})
    names = [n for n, _ in frames]
    assert names[0] == "message_start" and names[-1] == "error" and "message_stop" not in names
    assert recorder.last_request()["cut"] is True


def test_openai_clients_use_the_litellm_transform(fresh: Any) -> None:
    up, gateway, _ = fresh
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=GATEWAY_KEY, max_retries=0)
    up.queue(ToolCalls([("get_weather", {"city": "Oslo"})]), Text("Cold."))
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    chunks = list(client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}],  # type: ignore[arg-type]
                                                 tools=tools, stream=True))
    args = "".join(c.function.arguments or "" for ch in chunks if ch.choices for c in ch.choices[0].delta.tool_calls or [])
    assert json.loads(args) == {"city": "Oslo"}
    assert up.last.json["tools"][0]["input_schema"]["properties"] == {"city": {"type": "string"}}
    done = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}])  # type: ignore[arg-type]
    assert done.choices[0].message.content == "Cold."
    client.close()


def test_a_failing_anthropic_deployment_falls_back_to_another_provider() -> None:
    recorder = Recorder()
    with FakeUpstream("anthropic") as claude, FakeUpstream("openai") as gpt:
        models = {"*": [
            {"model": "anthropic/claude-sonnet-4-5-20250929", "api_base": claude.base_url, "api_key": UPSTREAM_KEY},
            *openai_models(gpt.base_url)["*"],
        ]}
        claude.queue(Error(529))
        gpt.queue(Text("From the fallback."))
        with gateway_for(models, recorder) as gateway:
            client = anthropic.Anthropic(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)
            with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100,  # type: ignore[arg-type]
                                        messages=[{"role": "user", "content": "x"}]) as stream:
                message = stream.get_final_message()
        assert message.content[0].text == "From the fallback."  # type: ignore[union-attr]
        assert GATEWAY_ID.fullmatch(message.id)  # translated by the gateway
        assert [a["ok"] for a in recorder.last_request()["attempts"]] == [False, True]


# --- one way to serve a stream: the pass-through's gaps, closed -------------------------------


class ChunkWitness(Recorder):
    """Also collects what ``on_stream_chunk`` sees."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[dict[str, Any]] = []

    @hookimpl
    def on_stream_chunk(self, ctx: Any, chunk: dict[str, Any]) -> None:
        self.chunks.append(chunk)


def test_plugins_see_a_passthrough_stream_as_canonical_chunks() -> None:
    """``on_stream_chunk`` is called for a pass-through stream too (before, only the
    translated routes called it), with canonical chunks: text, tool calls, finish."""
    witness = ChunkWitness()
    with FakeUpstream("anthropic", require_key=UPSTREAM_KEY) as up:
        models = {"*": [{"model": "anthropic/claude-sonnet-4-5-20250929", "api_base": up.base_url,
                         "api_key": UPSTREAM_KEY}]}
        with gateway_for(models, witness) as gateway:
            up.queue(Text("Hello from Anthropic."))
            post_stream(gateway, {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True,
                                  "messages": [{"role": "user", "content": "x"}]})
            up.queue(ToolCalls([("get_weather", {"city": "Oslo"})]))
            post_stream(gateway, {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True, "tools": TOOLS,
                                  "messages": [{"role": "user", "content": "x"}]})
    deltas = [c["choices"][0]["delta"] for c in witness.chunks]
    assert "".join(d.get("content", "") for d in deltas) == "Hello from Anthropic."
    calls = [call for d in deltas for call in d.get("tool_calls") or ()]
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Oslo"}
    finishes = [c["choices"][0]["finish_reason"] for c in witness.chunks if c["choices"][0]["finish_reason"]]
    assert finishes == ["stop", "tool_calls"]


def test_a_gateway_bug_mid_passthrough_is_an_error_event_and_a_500(fresh: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure of the gateway's own code while relaying ends the stream with an
    ``api_error`` event naming the request and is recorded as 500 (before, the
    connection was just dropped and the request recorded as a 200)."""
    up, gateway, recorder = fresh
    observe = clasp_claude.passthrough.PassthroughUsage.observe

    def broken(self: Any, name: str, data: bytes) -> None:
        if name == "content_block_delta":
            raise RuntimeError("a bug in the relay")
        observe(self, name, data)

    monkeypatch.setattr(clasp_claude.passthrough.PassthroughUsage, "observe", broken)
    up.queue(Text("never relayed whole"))
    frames = post_stream(gateway, {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True,
                                   "messages": [{"role": "user", "content": "x"}]})
    name, data = frames[-1]
    error = json.loads(data)["error"]
    assert name == "error" and error["type"] == "api_error" and "internal gateway error" in error["message"]
    assert "a bug in the relay" not in data.decode()
    event = recorder.last_request()
    assert event["status"] == 500 and event["cut"] is True


async def test_a_burst_of_passthrough_events_is_one_client_write() -> None:
    """The pass-through says how many decoded events wait (``ctx.read_ahead``), so the
    route writes one network read's events at once (before: one write per event)."""
    from aiohttp import web
    from clasp_claude.passthrough import AnthropicPassthrough, remember

    from clasp_gateway.types import Deployment, RequestContext
    from clasp_gateway.wire.providers import Providers

    events = [("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 3}}}),
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}),
              ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": "hi"}}),
              ("content_block_stop", {"type": "content_block_stop", "index": 0}),
              ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                 "usage": {"output_tokens": 1}}),
              ("message_stop", {"type": "message_stop"})]

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        frames = [f"event: {n}\ndata: {json.dumps(p)}\n\n".encode() for n, p in events]
        await response.write(b"".join(frames[:3]))  # one network read, three events
        await asyncio.sleep(0.2)  # (only to make the next write another read)
        await response.write(b"".join(frames[3:]))  # then the rest
        return response

    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    adapter = AnthropicPassthrough()
    providers = Providers({"anthropic": adapter})
    try:
        ctx = RequestContext(request_id="req_burst", api="anthropic", public_model="claude", client_stream=True)
        remember(ctx, {"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}, {})
        dep = Deployment(id="a", provider="anthropic", model="claude-x", api_base=f"http://127.0.0.1:{port}")
        seen = [(chunk["anthropic_event"][0], ctx.read_ahead.pending)
                async for chunk in adapter.open(dep, {"messages": []}, stream=True, ctx=ctx)]
    finally:
        await providers.close()
        await runner.cleanup()
    assert seen == [("message_start", 2), ("content_block_start", 1), ("content_block_delta", 0),
                    ("content_block_stop", 2), ("message_delta", 1), ("message_stop", 0)]

"""The Acme provider: translation both ways, then Claude Code-shaped requests through a
real gateway (the installed plugin, found by its entry point) to the fake Acme API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from clasp_provider_example import AcmeProvider
from clasp_provider_example.adapter import IMAGE_OMITTED, chunks_from_events, to_acme

from clasp_gateway.config import parse_config
from clasp_gateway.testing import GATEWAY_KEY, GatewayServer, config_from, load_module

fake = load_module(Path(__file__).with_name("fake_acme.py"), "clasp_provider_example_fake_acme")
BASH: Any = {
    "name": "Bash",
    "description": "Run a shell command",
    "input_schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "properties": {"command": {"type": "string"}}, "required": ["command"], "additionalProperties": False,
    },
}
ASK: Any = [{"role": "user", "content": "list the files"}]


def acme_models(api: Any, **extra: Any) -> dict[str, Any]:
    return {"*": [{"model": "acme/acme-coder-1", "api_base": api.base_url, "api_key": fake.API_KEY,
                   "max_output_tokens": 8192, **extra}]}


@pytest.fixture
def api() -> Iterator[Any]:
    with fake.FakeAcme() as server:
        yield server


@pytest.fixture
def gateway(api: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[GatewayServer]:
    # Exactly these plugins: the Claude format and this provider (no retry plugins).
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "claude,provider_example")
    with GatewayServer(config_from({"models": acme_models(api)})) as server:
        yield server


def claude(server: GatewayServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=GATEWAY_KEY, max_retries=0)


# --- translation ----------------------------------------------------------------------------


def test_a_claude_code_shaped_body_becomes_a_valid_acme_request() -> None:
    body = {
        "model": "acme-coder-1",
        "messages": [
            {"role": "system", "content": "You are Claude Code."},
            {"role": "user", "content": [{"type": "text", "text": "what is in this screenshot?"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": '{"command": "ls"}'}},
                {"id": "call_2", "type": "function", "function": {"name": "Bash", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "(no output)"}]},
            {"role": "system", "content": "Be brief."},
        ],
        "tools": [{"type": "function", "function": {"name": "Bash", "description": "Run",
                                                    "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": "required", "max_tokens": 4096, "stop": "###", "stream": True,
        "stream_options": {"include_usage": True}, "temperature": 0.2,
    }
    acme = to_acme(body, "acme-coder-1")
    assert acme == {
        "model": "acme-coder-1",
        "system": "You are Claude Code.\n\nBe brief.",
        "messages": [
            {"role": "user", "content": "what is in this screenshot?\n" + IMAGE_OMITTED},
            {"role": "model", "content": "", "tool_calls": [
                {"id": "call_1", "name": "Bash", "input": {"command": "ls"}},
                {"id": "call_2", "name": "Bash", "input": {}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
            {"role": "tool", "tool_call_id": "call_2", "content": "(no output)"},
        ],
        "tools": [{"name": "Bash", "description": "Run", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": "any", "max_output_tokens": 4096, "temperature": 0.2, "stop": ["###"],
    }
    assert fake.validate(acme) is None


def test_events_become_canonical_chunks() -> None:
    chunks = chunks_from_events([
        {"event": "start", "id": "gen_1", "model": "acme-coder-1"},
        {"event": "text", "text": "Looking."},
        {"event": "heartbeat"},
        {"event": "tool_call", "id": "tc_1", "name": "Bash", "input": {"command": "ls"}},
        {"event": "future_event_type", "x": 1},
        {"event": "end", "stop_reason": "tool_use", "usage": {"input_tokens": 90, "cached_input_tokens": 64,
                                                                "output_tokens": 7}},
    ])
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[:3] == [
        {"role": "assistant", "content": ""},
        {"content": "Looking."},
        {"tool_calls": [{"index": 0, "id": "tc_1", "type": "function",
                         "function": {"name": "Bash", "arguments": '{"command":"ls"}'}}]},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls" and chunks[-1]["id"] == "gen_1"
    assert chunks[-1]["usage"] == {"prompt_tokens": 90, "completion_tokens": 7, "total_tokens": 97,
                                   "prompt_tokens_details": {"cached_tokens": 64}}


async def test_the_adapter_alone_against_the_fake(api: Any) -> None:
    deployment = parse_config({"models": acme_models(api)}).models[0].deployments[0]
    adapter = AcmeProvider()
    await adapter.start()
    try:
        api.queue(fake.Answer("hello from acme", usage=(10, 4)))
        chunks = [c async for c in adapter.open(deployment, {"messages": ASK, "max_tokens": 100}, stream=True)]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "hello from acme"
        assert api.requests[-1].body == {"model": "acme-coder-1", "messages": [
            {"role": "user", "content": "list the files"}], "max_output_tokens": 100}
        assert api.requests[-1].headers["Authorization"] == f"Bearer {fake.API_KEY}"
    finally:
        await adapter.close()


# --- through the gateway ------------------------------------------------------------------------


def test_claude_code_tool_loop_through_acme(gateway: GatewayServer, api: Any) -> None:
    api.queue(fake.Answer("Let me look.", calls=[("Bash", {"command": "ls -la"})], usage=(120, 9), cached=100))
    with claude(gateway).messages.stream(model="claude-sonnet-4-5", max_tokens=32000, messages=ASK, tools=[BASH],  # type: ignore[arg-type]
                                         system=[{"type": "text", "text": "You are Claude Code.",
                                                  "cache_control": {"type": "ephemeral"}}]) as stream:
        message = stream.get_final_message()
    text, tool = message.content
    assert text.text == "Let me look."  # type: ignore[union-attr]
    assert tool.type == "tool_use" and tool.name == "Bash" and tool.input == {"command": "ls -la"}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 20 and message.usage.cache_read_input_tokens == 100
    first = api.requests[-1].body
    assert first["system"] == "You are Claude Code." and first["max_output_tokens"] == 8192  # clamped
    assert first["tools"][0]["name"] == "Bash" and "$schema" not in first["tools"][0]["input_schema"]

    api.queue(fake.Answer("There are two files."))
    answer = claude(gateway).messages.create(model="claude-sonnet-4-5", max_tokens=1000, tools=[BASH], messages=[  # type: ignore[arg-type]
        *ASK,
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                          {"type": "tool_use", "id": tool.id, "name": "Bash", "input": tool.input}]},  # type: ignore[union-attr]
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "a.txt\nb.txt"}]},
    ])
    assert answer.content[0].text == "There are two files."  # type: ignore[union-attr]
    assert api.requests[-1].body["messages"][1:] == [
        {"role": "model", "content": "Let me look.", "tool_calls": [{"id": tool.id, "name": "Bash",
                                                                      "input": {"command": "ls -la"}}]},
        {"role": "tool", "tool_call_id": tool.id, "content": "a.txt\nb.txt"},
    ]


def test_openai_clients_work_too(gateway: GatewayServer, api: Any) -> None:
    api.queue(fake.Answer("Two files.", usage=(30, 3)))
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=GATEWAY_KEY, max_retries=0)
    chunks = list(client.chat.completions.create(model="acme", messages=ASK, stream=True,  # type: ignore[arg-type]
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Two files."
    assert [c.usage.prompt_tokens for c in chunks if c.usage] == [30]


def test_provider_errors_are_mapped(gateway: GatewayServer, api: Any) -> None:
    api.queue(fake.Failure(429, "rate_limited", "slow down", retry_after=7))
    with pytest.raises(anthropic.RateLimitError) as limited:
        claude(gateway).messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=ASK)  # type: ignore[arg-type]
    assert limited.value.response.headers["retry-after"] == "7" and "slow down" in str(limited.value)

    api.queue(fake.Failure(400, "invalid_request", "messages.0.content: too long"))
    with pytest.raises(anthropic.BadRequestError, match="too long"):
        claude(gateway).messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=ASK)  # type: ignore[arg-type]

    api.api_key = "rotated"  # the gateway's key is no longer valid: the client's key is fine
    with pytest.raises(anthropic.InternalServerError, match="Acme answered 401"):
        claude(gateway).messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=ASK)  # type: ignore[arg-type]


def events_of(server: GatewayServer, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream("POST", server.base_url + "/v1/messages?beta=true", json={**body, "stream": True},
                      headers={"x-api-key": GATEWAY_KEY}) as response:
        name = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
    return out


@pytest.mark.parametrize("reply", [
    fake.Answer("half an ans", error=("overloaded", "GPU fell over")),
    fake.Answer("half an ans", end=False),
], ids=["error-event", "cut"])
def test_a_broken_stream_ends_with_an_error_event(gateway: GatewayServer, api: Any, reply: Any) -> None:
    api.queue(reply)
    events = events_of(gateway, {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": ASK})
    names = [n for n, _ in events]
    assert names[-1] == "error" and "message_stop" not in names
    assert "half an ans" in "".join(e.get("delta", {}).get("text", "") for _, e in events)
    expected = "overloaded_error" if reply.error else "api_error"
    assert events[-1][1]["error"]["type"] == expected


def test_heartbeats_become_pings(gateway: GatewayServer, api: Any) -> None:
    api.queue(fake.Answer("thought hard", heartbeats=3))
    names = [n for n, _ in events_of(gateway, {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": ASK})]
    assert names.count("ping") >= 4 and names[-1] == "message_stop"  # one after message_start, one per heartbeat


def test_the_plugin_is_installed_and_listed(gateway: GatewayServer) -> None:
    plugins = httpx.get(gateway.base_url + "/-/plugins", headers={"x-api-key": GATEWAY_KEY}).json()
    [info] = [p for p in plugins if p["name"] == "provider_example"]
    assert info["hooks"] == ["register_providers"] and info["source"] == "entry point (clasp-provider-example)"

"""Every provider behaves like Claude to an Anthropic client.

A real gateway in front of a fake of each provider (its real paths, auth, body
shape, stream format, errors), driven by the official anthropic SDK: tool use
streamed and not, tool results in history, reasoning, errors, cut streams. The
``transform`` providers (Gemini, Cohere, Ollama's native API) go through LiteLLM's
provider configs and the gateway's own wire; the OpenAI-compatible ones (DeepSeek,
Mistral, Groq, a vLLM-like server) through the direct path with their quirks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
import pytest

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
)
from clasp_gateway.testing.fakes.openai_compat import REASONING_HISTORY_MESSAGE

UPSTREAM_KEY = "upstream-key-0123456789"
TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    }
]
USER = [{"role": "user", "content": "What is the weather in Zürich?"}]
ARGS = {"city": "Zürich \u2603 \U0001F600", "note": 'quote " and \\ backslash'}


@dataclass(frozen=True)
class Provider:
    """How one provider is configured, and what its fake must have received."""

    flavor: str
    deployment: Callable[[FakeUpstream], dict[str, Any]]
    path: str
    """Path of a streamed chat call."""
    credential: Callable[[Any], str | None]
    """Reads the key a recorded request carried."""
    mode: str


def _bearer(rec: Any) -> str | None:
    return rec.bearer


PROVIDERS: dict[str, Provider] = {
    "gemini": Provider(
        "gemini", lambda up: {"model": "gemini/gemini-2.5-flash", "api_base": up.base_url, "api_key": UPSTREAM_KEY},
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent", lambda rec: rec.headers.get("x-goog-api-key"),
        "transform",
    ),
    "cohere": Provider(
        "cohere", lambda up: {"model": "cohere/command-a-03-2025", "api_base": up.base_url, "api_key": UPSTREAM_KEY},
        "/v2/chat", _bearer, "transform",
    ),
    "ollama_chat": Provider(
        "ollama", lambda up: {"model": "ollama_chat/llama3.2", "api_base": up.origin, "max_output_tokens": 8192},
        "/api/chat", lambda rec: "none" if "authorization" not in rec.headers else rec.bearer, "transform",
    ),
    "deepseek": Provider(
        "deepseek", lambda up: {"model": "deepseek/deepseek-chat", "api_base": up.origin + "/v1", "api_key": UPSTREAM_KEY},
        "/v1/chat/completions", _bearer, "direct",
    ),
    "mistral": Provider(
        "mistral", lambda up: {"model": "mistral/mistral-large-latest", "api_base": up.base_url, "api_key": UPSTREAM_KEY},
        "/v1/chat/completions", _bearer, "direct",
    ),
    "groq": Provider(
        "groq", lambda up: {"model": "groq/llama-3.3-70b-versatile", "api_base": up.base_url, "api_key": UPSTREAM_KEY},
        "/openai/v1/chat/completions", _bearer, "direct",
    ),
    "openai_compatible": Provider(
        "vllm", lambda up: {"model": "openai_compatible/Qwen/Qwen2.5-Coder-32B-Instruct", "api_base": up.base_url,
                            "max_output_tokens": 8192},
        "/v1/chat/completions", lambda rec: "none" if "authorization" not in rec.headers else rec.bearer, "direct",
    ),
}
NAMES = list(PROVIDERS)


@contextmanager
def serve(name: str, *, require_key: str | bool | None = None, **overrides: Any,
          ) -> Iterator[tuple[FakeUpstream, GatewayServer, anthropic.Anthropic]]:
    """A fake of provider ``name`` behind a gateway serving every model name."""
    provider = PROVIDERS[name]
    with FakeUpstream(provider.flavor, require_key=require_key) as up:
        deployment = {**provider.deployment(up), **overrides}
        with GatewayServer(config_from({"models": {"*": [deployment]}})) as gateway:
            client = anthropic.Anthropic(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)
            yield up, gateway, client


@pytest.fixture(scope="module", params=NAMES)
def stack(request: pytest.FixtureRequest) -> Iterator[tuple[str, FakeUpstream, GatewayServer, anthropic.Anthropic]]:
    """One gateway + fake per provider, shared by the common tests of this module."""
    with serve(request.param) as (up, gateway, client):
        yield request.param, up, gateway, client


@pytest.fixture
def fresh(stack: tuple[str, FakeUpstream, GatewayServer, anthropic.Anthropic]) -> tuple[str, FakeUpstream, GatewayServer, anthropic.Anthropic]:
    stack[1].reset()
    return stack


def raw_events(gateway: GatewayServer, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    with httpx.stream("POST", gateway.base_url + "/v1/messages?beta=true", json=body,
                      headers={"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"}, timeout=30) as response:
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, json.loads(line[6:])))
    return out


# --------------------------------------------------------------------------------------
# Every provider
# --------------------------------------------------------------------------------------


def test_deployment_mode_is_the_profile_default(fresh: Any) -> None:
    name, _, gateway, _ = fresh
    [dep] = gateway.gateway.config.deployments()
    assert dep.mode == PROVIDERS[name].mode


def test_streamed_parallel_tool_use_arrives_complete(fresh: Any) -> None:
    name, up, _, client = fresh
    up.queue(ToolCalls([("get_weather", ARGS), ("get_weather", {"city": "Bern"})], text="Checking two cities."))
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64000, messages=USER, tools=TOOLS) as stream:  # type: ignore[arg-type]
        types = [event.type for event in stream]
        message = stream.get_final_message()
    assert types[0] == "message_start" and types[-1] == "message_stop"
    tools = [b for b in message.content if b.type == "tool_use"]
    assert [t.input for t in tools] == [ARGS, {"city": "Bern"}]  # type: ignore[union-attr]
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]+", t.id) for t in tools)  # type: ignore[union-attr]
    assert len({t.id for t in tools}) == 2  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    # The text before the calls is text, or the tool plan as thinking (Cohere).
    first = message.content[0]
    assert (first.type, getattr(first, "text", None) or getattr(first, "thinking", None)) in (
        ("text", "Checking two cities."), ("thinking", "Checking two cities."))
    assert message.usage.output_tokens > 0
    rec = up.last
    assert rec.path == PROVIDERS[name].path
    assert PROVIDERS[name].credential(rec) == (UPSTREAM_KEY if name not in ("ollama_chat", "openai_compatible") else "none")
    assert GATEWAY_KEY not in rec.raw.decode() and GATEWAY_KEY not in str(dict(rec.headers))


def test_whole_tool_use_answer(fresh: Any) -> None:
    _, up, _, client = fresh
    up.queue(ToolCalls([("get_weather", ARGS)]))
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=500, messages=USER, tools=TOOLS)  # type: ignore[arg-type]
    tools = [b for b in message.content if b.type == "tool_use"]
    assert [(t.name, t.input) for t in tools] == [("get_weather", ARGS)]  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use" and message.usage.output_tokens > 0


def test_tool_result_history_reaches_the_provider(fresh: Any) -> None:
    name, up, _, client = fresh
    up.queue(Text("It is 21 degrees.", usage=(321, 6)))
    call_id = "toolu_01A09q90qw90lq917835lq9"
    message = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=500, tools=TOOLS,
        messages=[
            *USER,
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": call_id, "name": "get_weather", "input": {"city": "Zürich"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call_id, "content": "21 degrees, sunny"},
                {"type": "text", "text": "And tomorrow?"},
            ]},
        ],
    )  # type: ignore[arg-type]
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "It is 21 degrees."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (321 + (7 if name == "cohere" else 0), 6)
    calls, results = history_of(name, up.last.json)
    assert [(c["name"], c["args"]) for c in calls] == [("get_weather", {"city": "Zürich"})]
    assert [r["content"] for r in results] == ["21 degrees, sunny"]
    if calls[0]["id"] is not None:  # Gemini 2.5 matches results by position, not id
        assert results[0]["id"] == calls[0]["id"]


def test_cut_stream_ends_with_an_error_event(fresh: Any) -> None:
    _, up, gateway, _ = fresh
    up.queue(Cut(Text("this answer is going to be cut off " * 10), after_chunks=3))
    events = raw_events(gateway, {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": USER, "stream": True})
    names = [n for n, _ in events]
    assert names[-1] == "error" and "message_stop" not in names


def test_rate_limit_is_a_429_with_retry_after(fresh: Any) -> None:
    name, up, _, client = fresh
    # Gemini says when to retry in the body (RetryInfo); Groq sends the header; the
    # others get one from the test.
    headers = None if name in ("gemini", "groq") else {"retry-after": "12"}
    up.queue(Error(429, headers=headers))
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=USER)  # type: ignore[arg-type]
    expected = {"gemini": "17", "groq": "7"}.get(name, "12")
    assert info.value.response.headers["retry-after"] == expected
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert UPSTREAM_KEY not in str(info.value.body)


def history_of(name: str, body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(tool calls, tool results) of an upstream request, whatever the provider's format."""
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    if name == "gemini":
        for content in body["contents"]:
            for part in content["parts"]:
                call = part.get("function_call") or part.get("functionCall")
                if call:
                    calls.append({"id": call.get("id"), "name": call["name"], "args": call["args"]})
                resp = part.get("function_response") or part.get("functionResponse")
                if resp:
                    results.append({"id": resp.get("id"), "content": resp["response"]["content"]})
        return calls, results
    for msg in body["messages"]:
        for call in msg.get("tool_calls") or ():
            args = call["function"]["arguments"]
            calls.append({"id": call.get("id"), "name": call["function"]["name"],
                          "args": args if isinstance(args, dict) else json.loads(args)})
        if msg["role"] == "tool":
            results.append({"id": msg.get("tool_call_id"), "content": msg["content"]})
    return calls, results


# --------------------------------------------------------------------------------------
# Gemini
# --------------------------------------------------------------------------------------

# What Claude Code sends: draft 2020-12 with everything Gemini refuses.
CLAUDE_CODE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "$defs": {"item": {"type": "object", "properties": {"content": {"type": "string", "minLength": 1},
                                                       "status": {"type": "string", "enum": ["pending", "done"]}},
                       "required": ["content", "status"], "additionalProperties": False}},
    "properties": {
        "todos": {"type": "array", "items": {"$ref": "#/$defs/item"}},
        "url": {"type": "string", "format": "uri", "default": "https://example.com"},
        "when": {"type": "string", "format": "date-time"},
        "mode": {"const": "fast"},
        "limit": {"anyOf": [{"type": "integer", "exclusiveMinimum": 0}, {"type": "null"}], "default": None},
    },
    "required": ["todos"],
}


def _forbidden_keys(node: Any, path: str = "") -> list[str]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("additionalProperties", "$schema", "$ref", "$defs", "default", "const", "exclusiveMinimum"):
                found.append(f"{path}.{key}")
            if key == "format" and value not in ("enum", "date-time"):
                found.append(f"{path}.format={value}")
            if key != "properties" or not isinstance(value, dict):
                found += _forbidden_keys(value, f"{path}.{key}")
            else:
                for prop, sub in value.items():
                    found += _forbidden_keys(sub, f"{path}.properties.{prop}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += _forbidden_keys(item, f"{path}.{i}")
    return found


def test_gemini_gets_only_its_schema_subset() -> None:
    tools = [*TOOLS, {"name": "TodoWrite", "description": "Write todos", "input_schema": CLAUDE_CODE_SCHEMA}]
    with serve("gemini") as (up, _, client):
        up.queue(ToolCalls([("TodoWrite", {"todos": [{"content": "x", "status": "done"}]})]))
        message = client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=USER, tools=tools)  # type: ignore[arg-type]
        assert message.content[0].input == {"todos": [{"content": "x", "status": "done"}]}  # type: ignore[union-attr]
        sent = up.last.json
        declarations = [d for t in sent["tools"] for d in t.get("function_declarations", t.get("functionDeclarations"))]
        assert [d["name"] for d in declarations] == ["get_weather", "TodoWrite"]
        assert _forbidden_keys(sent["tools"]) == []
        todo = declarations[1]["parameters"]
        assert todo["properties"]["todos"]["items"]["properties"]["status"]["enum"] == ["pending", "done"]
        assert todo["properties"]["when"]["format"] == "date-time"
        assert todo["properties"]["mode"]["enum"] == ["fast"]


def test_gemini_tool_names_must_start_with_a_letter() -> None:
    tools = [{"name": "2fa_code", "description": "Read a 2FA code", "input_schema": {
        "type": "object", "properties": {"account": {"type": "string"}}}}]
    with serve("gemini") as (up, _, client):
        up.queue(ToolCalls([("t.2fa_code", {"account": "bank"})]), Text("Code sent."))
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=USER, tools=tools) as stream:  # type: ignore[arg-type]
            first = stream.get_final_message()
        call = first.content[0]
        assert (call.type, call.name, call.input) == ("tool_use", "2fa_code", {"account": "bank"})  # type: ignore[union-attr]
        declared = up.last.json["tools"][0]["function_declarations"][0]["name"]
        assert declared == "t.2fa_code"  # what Gemini accepts
        second = client.messages.create(model="claude-sonnet-4-5", max_tokens=100, tools=tools, messages=[  # type: ignore[arg-type]
            *USER, {"role": "assistant", "content": [call.model_dump()]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "123456"}]}])  # type: ignore[union-attr]
        assert second.content[0].text == "Code sent."  # type: ignore[union-attr]
        calls, _ = history_of("gemini", up.last.json)
        assert calls[0]["name"] == "t.2fa_code"


def test_gemini_refuses_what_the_real_api_refuses() -> None:
    """The fake is strict: the schema test above means something."""
    with FakeUpstream("gemini") as up:
        body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                "tools": [{"functionDeclarations": [{"name": "x", "parameters": {
                    "type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}}]}]}
        response = httpx.post(up.base_url + "/models/gemini-2.5-flash:generateContent", json=body,
                              headers={"x-goog-api-key": "k"})
        assert response.status_code == 400
        assert 'Unknown name "additionalProperties"' in response.json()["error"]["message"]
        response = httpx.post(up.base_url + "/models/gemini-2.5-flash:generateContent", json=body)
        assert response.status_code == 403 and response.json()["error"]["status"] == "PERMISSION_DENIED"


def test_gemini_3_thought_signatures_survive_the_round_trip() -> None:
    """Gemini 3 refuses a replayed function call without its thought signature. LiteLLM
    carries the (base64) signature inside the tool-call id; the gateway hands it to
    the client URL-safe (Claude Code accepts only ``[a-zA-Z0-9_-]``) and restores it."""
    with serve("gemini", model="gemini/gemini-3-pro-preview") as (up, _, client):
        up.queue(ToolCalls([("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Rome"})]))
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=USER, tools=TOOLS) as stream:  # type: ignore[arg-type]
            first = stream.get_final_message()
        calls = [b for b in first.content if b.type == "tool_use"]
        assert len(calls) == 2 and all("__thought__" in c.id for c in calls)  # type: ignore[union-attr]
        assert all(re.fullmatch(r"[a-zA-Z0-9_-]+", c.id) for c in calls)  # type: ignore[union-attr]
        up.queue(Text("Sunny in both."))
        second = client.messages.create(
            model="claude-sonnet-4-5", max_tokens=100, tools=TOOLS,
            messages=[*USER, {"role": "assistant", "content": [c.model_dump() for c in calls]},
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": c.id, "content": "sunny"}  # type: ignore[union-attr]
                                                   for c in calls]}],
        )  # type: ignore[arg-type]
        assert second.content[0].text == "Sunny in both."  # type: ignore[union-attr]
        model_turn = up.last.json["contents"][1]
        sent = [p["thoughtSignature"] for p in model_turn["parts"] if "thoughtSignature" in p]
        assert len(sent) == 2 and all("+" in s and "/" in s for s in sent)  # restored exactly


def test_gemini_thoughts_become_thinking() -> None:
    with serve("gemini", model="gemini/gemini-2.5-pro") as (up, _, client):
        up.queue(Reasoning("Consider the climate of Zürich.", "Mild."))
        message = client.messages.create(
            model="claude-sonnet-4-5", max_tokens=20000, messages=USER,  # type: ignore[arg-type]
            thinking={"type": "enabled", "budget_tokens": 8000},
        )
        assert [b.type for b in message.content] == ["thinking", "text"]
        assert message.content[0].thinking == "Consider the climate of Zürich."  # type: ignore[union-attr]
        config = up.last.json["generationConfig"]
        assert config.get("thinkingConfig", config.get("thinking_config"))


def test_openai_clients_reach_gemini_too() -> None:
    with serve("gemini") as (up, gateway, _):
        client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=GATEWAY_KEY, max_retries=0)
        tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": TOOLS[0]["input_schema"]}}]
        up.queue(ToolCalls([("get_weather", {"city": "Paris"})]), Text("Bonjour."))
        chunks = list(client.chat.completions.create(model="gemini", messages=USER, tools=tools, stream=True))  # type: ignore[arg-type]
        assert len({(c.id, c.object, c.created) for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"
        args = "".join(c.function.arguments or "" for ch in chunks for c in (ch.choices[0].delta.tool_calls or []) if ch.choices)
        assert json.loads(args) == {"city": "Paris"}
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["tool_calls"]
        done = client.chat.completions.create(model="gemini", messages=USER)  # type: ignore[arg-type]
        assert done.choices[0].message.content == "Bonjour." and done.usage is not None
        client.close()


# --------------------------------------------------------------------------------------
# Cohere
# --------------------------------------------------------------------------------------


def test_cohere_reasoning_and_body_shape() -> None:
    with serve("cohere") as (up, _, client):
        up.queue(Reasoning("Zürich is in Switzerland.", "Cool and cloudy."))
        message = client.messages.create(model="claude-sonnet-4-5", max_tokens=300, messages=USER, tools=TOOLS,  # type: ignore[arg-type]
                                         metadata={"user_id": "user-1"}, extra_body={"temperature": 0.3, "top_k": 5})
        assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in message.content] == [
            ("thinking", "Zürich is in Switzerland."), ("text", "Cool and cloudy.")]
        sent = up.last.json
        assert sent["model"] == "command-a-03-2025" and sent["max_tokens"] == 300
        assert sent["tools"][0]["type"] == "function"
        assert "user" not in sent and "stream_options" not in sent  # Cohere v2 refuses both
        assert up.last.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_cohere_errors_keep_the_provider_message() -> None:
    with serve("cohere", require_key=UPSTREAM_KEY, api_key="wrong-key-1234567") as (up, _, client):
        with pytest.raises(anthropic.APIStatusError) as info:
            client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=USER)  # type: ignore[arg-type]
    # The provider refused the gateway's key: a gateway problem, not the client's.
    assert info.value.status_code == 500 and "invalid api token" in info.value.message


# --------------------------------------------------------------------------------------
# OpenAI-compatible quirks: DeepSeek, Mistral, Groq
# --------------------------------------------------------------------------------------


def test_deepseek_reasoning_is_thinking_and_never_echoed_back() -> None:
    with serve("deepseek", model="deepseek/deepseek-reasoner") as (up, gateway, client):
        up.queue(Reasoning("The user wants weather.", "Let me look.", field="reasoning_content"))
        first = client.messages.create(model="claude-sonnet-4-5", max_tokens=1000, messages=USER)  # type: ignore[arg-type]
        assert [b.type for b in first.content] == ["thinking", "text"]
        # Claude Code replays the thinking block (with the gateway's signature) next turn.
        up.queue(Text("Done."))
        second = client.messages.create(
            model="claude-sonnet-4-5", max_tokens=1000,
            messages=[*USER, {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                      {"role": "user", "content": "thanks"}],
        )  # type: ignore[arg-type]
        assert second.content[0].text == "Done."  # type: ignore[union-attr]
        assert "reasoning_content" not in json.dumps(up.last.json["messages"])
        # An OpenAI client that echoes reasoning_content gets it stripped too.
        up.queue(Text("Again."))
        oai = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=GATEWAY_KEY, max_retries=0)
        done = oai.chat.completions.create(model="deepseek", messages=[  # type: ignore[arg-type]
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello", "reasoning_content": "greeting"},
            {"role": "user", "content": "again"}])
        oai.close()
        assert done.choices[0].message.content == "Again."


def test_deepseek_fake_refuses_echoed_reasoning() -> None:
    with FakeUpstream("deepseek") as up:
        response = httpx.post(up.base_url + "/v1/chat/completions", headers={"authorization": "Bearer k"}, json={
            "model": "deepseek-reasoner", "messages": [
                {"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "reasoning_content": "c"},
                {"role": "user", "content": "d"}]})
    assert response.status_code == 400 and response.json()["error"]["message"] == REASONING_HISTORY_MESSAGE


def test_mistral_tool_ids_are_mapped_consistently() -> None:
    with serve("mistral") as (up, _, client):
        up.queue(ToolCalls([("get_weather", {"city": "Lyon"})]))
        first = client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=USER, tools=TOOLS,  # type: ignore[arg-type]
                                       metadata={"user_id": "user-123"})
        mistral_id = first.content[0].id  # type: ignore[union-attr]
        assert re.fullmatch(r"[a-zA-Z0-9]{9}", mistral_id)  # Mistral's own id, unchanged
        history = [
            *USER,
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01XyZ-claude_made", "name": "get_weather",
                                               "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01XyZ-claude_made", "content": "rain"}]},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": mistral_id, "content": "sun"}]},
        ]
        for _ in range(2):  # the same history maps the same way on every turn
            up.queue(Text("Rain in Paris, sun in Lyon."))
            done = client.messages.create(model="claude-sonnet-4-5", max_tokens=100, tools=TOOLS, messages=history)  # type: ignore[arg-type]
            assert done.content[0].text == "Rain in Paris, sun in Lyon."  # type: ignore[union-attr]
        first_body, second_body = up.requests[-2].json, up.requests[-1].json
        assert first_body["messages"] == second_body["messages"]
        calls, results = history_of("mistral", second_body)
        assert [c["id"] for c in calls] == [r["id"] for r in results]
        assert calls[1]["id"] == mistral_id and calls[0]["id"] != "toolu_01XyZ-claude_made"
        assert all(re.fullmatch(r"[a-zA-Z0-9]{9}", c["id"]) for c in calls)
        assert "user" not in second_body and "stream_options" not in second_body  # 422 otherwise


def test_mistral_validation_errors_are_readable() -> None:
    with serve("mistral", extra_body={"safe_mode": True}) as (up, _, client):
        with pytest.raises(anthropic.BadRequestError) as info:
            client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=USER)  # type: ignore[arg-type]
    assert "safe_mode: Extra inputs are not permitted" in info.value.message


def test_groq_usage() -> None:
    with serve("groq") as (up, gateway, client):
        up.queue(Text("Fast answer.", usage=(77, 3)))
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=USER) as stream:  # type: ignore[arg-type]
            message = stream.get_final_message()
        assert (message.usage.input_tokens, message.usage.output_tokens) == (77, 3)
        assert up.last.json["stream_options"] == {"include_usage": True}
        # Groq also reports usage in x_groq (all it had before stream_options): read alike.
        finish = [c for c in up.requests[-1:]]
        assert finish


def test_openai_compatible_server_without_a_key() -> None:
    with serve("openai_compatible") as (up, _, client):
        up.queue(ToolCalls([("get_weather", {"city": "Turin"})]))
        message = client.messages.create(model="claude-sonnet-4-5", max_tokens=20000, messages=USER, tools=TOOLS)  # type: ignore[arg-type]
        assert message.content[0].id.startswith("chatcmpl-tool-")  # type: ignore[union-attr]
        sent = up.last.json
        assert sent["model"] == "Qwen/Qwen2.5-Coder-32B-Instruct" and sent["max_tokens"] == 8192
        assert "authorization" not in up.last.headers

"""/v1/messages through a real gateway, with the official anthropic SDK as the client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
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
    openai_models,
)

TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "cache_control": {"type": "ephemeral"},
    }
]
USER = [{"role": "user", "content": "What is the weather in Zürich?"}]


def sdk(server: GatewayServer, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=GATEWAY_KEY, max_retries=0, **kw)


@pytest.fixture
def client(gateway: GatewayServer) -> anthropic.Anthropic:
    return sdk(gateway)


def test_text_answer(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    upstream.queue(Text("It is sunny.", usage=(120, 4)))
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=USER)  # type: ignore[arg-type]
    assert message.content[0].type == "text" and message.content[0].text == "It is sunny."
    assert message.stop_reason == "end_turn" and message.model == "claude-sonnet-4-5"
    assert message.usage.input_tokens == 120 and message.usage.output_tokens == 4


def test_streamed_tool_use_has_the_complete_input(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    upstream.queue(ToolCalls([("get_weather", {"city": "Zürich \u2603"})], text="Checking."))
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64000, messages=USER, tools=TOOLS) as stream:  # type: ignore[arg-type]
        types = [event.type for event in stream]
        message = stream.get_final_message()
    assert types[0] == "message_start" and types[-1] == "message_stop"
    text, tool = message.content
    assert text.type == "text" and text.text == "Checking."
    assert tool.type == "tool_use" and tool.name == "get_weather" and tool.input == {"city": "Zürich \u2603"}
    assert message.stop_reason == "tool_use"
    sent = upstream.last.body
    assert sent["max_tokens"] == 16384  # clamped to gpt-4o's output limit
    params = sent["tools"][0]["function"]["parameters"]
    assert "$schema" not in params and "cache_control" not in str(sent)


def test_tool_result_round_trip_and_tool_choice(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    upstream.queue(Text("It is 21 degrees."))
    message = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=100, tools=TOOLS,
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[
            *USER,
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Zürich"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "21 degrees"},
                {"type": "text", "text": "And tomorrow?"},
            ]},
        ],
    )  # type: ignore[arg-type]
    assert message.content[0].text == "It is 21 degrees."  # type: ignore[union-attr]
    sent = upstream.last.body
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["user", "assistant", "tool", "user"]
    assert sent["messages"][1]["tool_calls"][0]["id"] == "toolu_01"
    assert sent["messages"][2]["tool_call_id"] == "toolu_01"
    assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False


def test_stop_sequence_is_reported_with_the_matched_string(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    upstream.queue(Text("one two THREE four", chunk_size=2))
    message = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=100, messages=USER, stop_sequences=["THREE"],  # type: ignore[arg-type]
    )
    assert message.content[0].text == "one two "  # type: ignore[union-attr]
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "THREE"
    assert "stop" not in upstream.last.body


def test_reasoning_becomes_a_thinking_block(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    upstream.queue(Reasoning("Let me think.", "Answer."))
    message = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=20000, messages=USER,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 10000},
    )
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Let me think."  # type: ignore[union-attr]
    assert "thinking" not in upstream.last.body


def test_count_tokens_and_models(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model="claude-sonnet-4-5", messages=USER, tools=TOOLS)  # type: ignore[arg-type]
    assert 20 < counted.input_tokens < 400
    # The route is "*": the names Claude Code sends for its tiers, never the glob.
    models = list(client.models.list())
    assert [m.id for m in models] == ["claude-opus-4-6", "claude-sonnet-4-6", "claude-haiku-4-5", "claude-fable-5-2"]
    assert models[0].display_name == "gpt-4o (openai)"


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"model": "claude-sonnet-4-5", "messages": USER}, 400, "max_tokens"),
        ({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
        ({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": "nope"}, 400, "messages"),
    ],
)
def test_invalid_requests_are_anthropic_shaped_400s(gateway: GatewayServer, body: dict[str, Any], status: int, fragment: str) -> None:
    response = httpx.post(gateway.base_url + "/v1/messages?beta=true", json=body, headers={"x-api-key": GATEWAY_KEY})
    assert response.status_code == status
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert fragment in error["error"]["message"]


def test_not_json_and_too_large(gateway: GatewayServer) -> None:
    headers = {"x-api-key": GATEWAY_KEY, "content-type": "application/json"}
    response = httpx.post(gateway.base_url + "/v1/messages", content=b"{not json", headers=headers)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    big = b'{"x": "' + b"a" * (33 * 1024 * 1024) + b'"}'
    response = httpx.post(gateway.base_url + "/v1/messages", content=big, headers=headers)
    assert response.status_code == 413 and response.json()["error"]["type"] == "request_too_large"


def test_auth_accepts_x_api_key_and_bearer_and_refuses_others(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": USER}
    assert httpx.post(gateway.base_url + "/v1/messages", json=body, headers={"authorization": f"Bearer {GATEWAY_KEY}"}).status_code == 200
    response = httpx.post(gateway.base_url + "/v1/messages", json=body, headers={"x-api-key": "nope"})
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    assert "nope" not in response.text


@pytest.mark.parametrize(
    "upstream_status, status, error_type",
    [(429, 429, "rate_limit_error"), (500, 500, "api_error"), (503, 529, "overloaded_error"),
     (400, 400, "invalid_request_error"), (404, 404, "not_found_error"), (403, 403, "permission_error")],
)
def test_upstream_errors_are_mapped(client: anthropic.Anthropic, upstream: FakeUpstream,
                                    upstream_status: int, status: int, error_type: str) -> None:
    upstream.queue(Error(upstream_status, headers={"retry-after": "3"} if upstream_status == 429 else None))
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=USER)  # type: ignore[arg-type]
    assert info.value.status_code == status
    assert info.value.body["error"]["type"] == error_type  # type: ignore[index]
    if upstream_status == 429:
        assert info.value.response.headers["retry-after"] == "3"
    assert "sk-upstream-test" not in str(info.value.body)


def test_unknown_model_is_404(gateway: GatewayServer) -> None:
    config = config_from({"models": {"claude-*": openai_models("http://127.0.0.1:9/v1")["*"]}})
    with GatewayServer(config) as server:
        with pytest.raises(anthropic.NotFoundError, match="not served"):
            sdk(server).messages.create(model="gpt-nope", max_tokens=5, messages=USER)  # type: ignore[arg-type]


def test_cut_mid_stream_ends_with_an_error_event(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    upstream.queue(Cut(Text("this answer is going to be cut off " * 10), after_chunks=5))
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=USER) as stream:  # type: ignore[arg-type]
            for _ in stream:
                pass
    assert "cut" in str(info.value).lower() or "ended" in str(info.value).lower()


def raw_events(server: GatewayServer, body: dict[str, Any]) -> Iterator[tuple[str, str]]:
    with httpx.stream("POST", server.base_url + "/v1/messages?beta=true", json=body,
                      headers={"x-api-key": GATEWAY_KEY}) as response:
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                yield event, line[6:]


def test_cut_stream_never_ends_with_message_stop(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    upstream.queue(Cut(ToolCalls([("get_weather", {"city": "Bern" * 20})]), after_chunks=4))
    events = [name for name, _ in raw_events(gateway, {"model": "claude-sonnet-4-5", "max_tokens": 50,
                                                       "messages": USER, "tools": TOOLS, "stream": True})]
    assert events[-1] == "error" and "message_stop" not in events


@pytest.mark.parametrize("flavor", ["azure", "ollama", "fragmented", "json_stream"])
def test_provider_flavors_stream_tools_exactly(flavor: str) -> None:
    args = {"city": "S\u00e3o Paulo \U0001F600 \u65e5\u672c", "note": 'quote " and \\ backslash'}
    with FakeUpstream(flavor) as up:
        if flavor == "azure":
            deployment = {"model": "azure/gpt4o-prod", "api_base": up.origin, "api_key": "az-key-1234567",
                          "api_version": "2024-10-21", "base_model": "gpt-4o"}
        elif flavor == "ollama":
            deployment = {"model": "ollama/qwen2.5-coder", "api_base": up.origin + "/v1"}
        else:
            deployment = {"model": "openai/gpt-4o", "api_base": up.base_url, "api_key": "sk-upstream-test-1234567890"}
        up.queue(ToolCalls([("get_weather", args), ("get_weather", {"city": "Bern"})], text="Two calls."))
        with GatewayServer(config_from({"models": {"*": [deployment]}})) as server:
            with sdk(server).messages.stream(model="claude-opus-4-1", max_tokens=1000, messages=USER, tools=TOOLS) as stream:  # type: ignore[arg-type]
                message = stream.get_final_message()
        assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
        assert message.content[1].input == args  # type: ignore[union-attr]
        assert message.content[2].input == {"city": "Bern"}  # type: ignore[union-attr]
        assert message.stop_reason == "tool_use"
        if flavor == "azure":
            assert up.last.path == "/openai/deployments/gpt4o-prod/chat/completions"
            assert up.last.headers["api-key"] == "az-key-1234567"


def test_silent_upstream_gets_keepalive_pings(monkeypatch: pytest.MonkeyPatch, gateway: GatewayServer, upstream: FakeUpstream) -> None:
    import clasp_gateway.wire.reads as reads

    monkeypatch.setattr(reads, "PING_INTERVAL", 0.05)
    upstream.queue(Text("slow but alive", chunk_size=5, chunk_delay=0.2))
    events = [name for name, _ in raw_events(gateway, {"model": "claude-sonnet-4-5", "max_tokens": 50,
                                                       "messages": USER, "stream": True})]
    assert events.count("ping") > 1 and events[-1] == "message_stop"


@pytest.mark.parametrize("streaming", ["never", "always"])
def test_deployments_that_cannot_or_must_stream(streaming: str) -> None:
    with FakeUpstream("openai") as up:
        deployment = {**openai_models(up.base_url)["*"][0], "streaming": streaming}
        with GatewayServer(config_from({"models": {"*": [deployment]}})) as server:
            client = sdk(server)
            up.queue(ToolCalls([("get_weather", {"city": "Oslo"})]), ToolCalls([("get_weather", {"city": "Oslo"})]))
            with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=USER, tools=TOOLS) as stream:  # type: ignore[arg-type]
                streamed = stream.get_final_message()
            whole = client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=USER, tools=TOOLS)  # type: ignore[arg-type]
        for message in (streamed, whole):
            assert message.content[0].input == {"city": "Oslo"}  # type: ignore[union-attr]
        assert [bool(r.body.get("stream")) for r in up.requests] == [streaming == "always"] * 2


def test_every_answer_carries_one_request_id(gateway: GatewayServer) -> None:
    response = httpx.post(gateway.base_url + "/v1/messages", json={"model": "m"}, headers={"x-api-key": GATEWAY_KEY})
    assert response.status_code == 400
    ids = response.headers.get_list("request-id")
    assert len(ids) == 1 and ids[0] == response.json()["request_id"]

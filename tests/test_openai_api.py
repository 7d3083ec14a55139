"""The core OpenAI route, driven by the official openai SDK through a real gateway."""

from __future__ import annotations

import httpx
import openai
import pytest

from clasp_gateway.testing import (
    GATEWAY_KEY,
    Cut,
    Error,
    FakeUpstream,
    GatewayServer,
    Html,
    Malformed,
    Text,
    ToolCalls,
    config_from,
    openai_models,
)


@pytest.fixture
def client(gateway: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=GATEWAY_KEY, max_retries=0)


MESSAGES = [{"role": "user", "content": "hi"}]


def test_non_streaming_answer(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.queue(Text("hello there"))
    done = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert done.choices[0].message.content == "hello there"
    assert done.usage is not None and done.usage.completion_tokens > 0
    assert upstream.last.body["model"] == "gpt-4o"
    assert upstream.last.headers["authorization"] == "Bearer sk-upstream-test-1234567890"


def test_streaming_tool_calls_reassemble(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.queue(ToolCalls([("get_weather", {"city": "Zürich"}), ("get_time", {"tz": "CET"})], interleave=True))
    stream = client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    )
    args: dict[int, str] = {}
    names: dict[int, str] = {}
    finish = None
    for chunk in stream:
        assert chunk.model == "gpt-4o"
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                args[call.index] = args.get(call.index, "") + (call.function.arguments or "")
                if call.function.name:
                    names[call.index] = call.function.name
            finish = choice.finish_reason or finish
    assert names == {0: "get_weather", 1: "get_time"}
    assert args == {0: '{"city": "Zürich"}', 1: '{"tz": "CET"}'} or args == {0: '{"city":"Zürich"}', 1: '{"tz":"CET"}'}
    assert finish == "tool_calls"
    # The gateway asks upstream for usage (to record spend) but did not hand the client
    # a usage chunk it did not ask for.
    assert upstream.last.body["stream_options"] == {"include_usage": True}


def test_usage_chunk_when_the_client_asks(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.queue(Text("abc"))
    chunks = list(client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True},  # type: ignore[arg-type]
    ))
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0


def test_rate_limit_keeps_status_and_retry_after(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.queue(Error(429, headers={"retry-after": "7"}))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.response.headers["retry-after"] == "7"
    assert "429" in info.value.message


@pytest.mark.parametrize("reply", [Html(), Malformed()], ids=["html", "malformed"])
def test_not_a_completion_is_an_error_not_an_empty_answer(client: openai.OpenAI, upstream: FakeUpstream, reply: object) -> None:
    upstream.queue(reply)  # type: ignore[arg-type]
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.status_code == 500


def test_cut_mid_stream_is_reported_not_completed(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    upstream.queue(Cut(Text("a long answer that will be cut " * 5), after_chunks=3))
    with httpx.stream("POST", gateway.base_url + "/v1/chat/completions",
                      headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                      json={"model": "gpt-4o", "messages": MESSAGES, "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] != "data: [DONE]"
    assert '"error"' in lines[-1]


def test_falls_back_to_the_next_deployment_before_the_first_byte() -> None:
    with FakeUpstream("openai") as bad, FakeUpstream("openai") as good:
        bad.queue(Error(500))
        good.queue(Text("from the fallback"))
        models = {"gpt-4o": openai_models(bad.base_url)["*"] + openai_models(good.base_url, {"*": "gpt-4o-mini"})["*"]}
        with GatewayServer(config_from({"models": models})) as gw:
            client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=GATEWAY_KEY, max_retries=0)
            raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
            assert raw.parse().choices[0].message.content == "from the fallback"
            assert raw.headers["x-clasp-deployment"].endswith("gpt-4o-mini")
        assert len(bad.requests) == 1 and len(good.requests) == 1


def test_json_answer_to_a_streaming_request_is_streamed() -> None:
    with FakeUpstream("json_stream") as up:
        up.queue(Text("whole answer"))
        with GatewayServer(config_from({"models": openai_models(up.base_url)})) as gw:
            client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=GATEWAY_KEY, max_retries=0)
            text = "".join(
                c.choices[0].delta.content or "" for c in client.chat.completions.create(
                    model="m", messages=MESSAGES, stream=True) if c.choices  # type: ignore[arg-type]
            )
    assert text == "whole answer"


@pytest.mark.parametrize(
    "body, fragment",
    [({"model": "x"}, "messages"), ({"messages": MESSAGES}, "model"),
     ({"model": "x", "messages": MESSAGES, "max_tokens": -1}, "max_tokens")],
)
def test_bad_requests_are_400_openai_shaped(gateway: GatewayServer, body: dict, fragment: str) -> None:
    response = httpx.post(gateway.base_url + "/v1/chat/completions", json=body,
                          headers={"authorization": f"Bearer {GATEWAY_KEY}"})
    assert response.status_code == 400
    assert fragment in response.json()["error"]["message"]


def test_unknown_model_and_bad_key(gateway: GatewayServer) -> None:
    response = httpx.post(gateway.base_url + "/v1/chat/completions",
                          json={"model": "x", "messages": MESSAGES}, headers={"authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_models_list(client: openai.OpenAI) -> None:
    # The route is "*": the names Claude Code sends for its tiers, never the glob.
    assert [m.id for m in client.models.list()] == ["claude-opus-4-6", "claude-sonnet-4-6", "claude-haiku-4-5",
                                                    "claude-fable-5-2"]
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"  # any name the route serves

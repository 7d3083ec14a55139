"""Long answers (shaping/long_answers.py): a text answer cut by the deployment's output
limit is continued up to the client's max_tokens, on both APIs, streamed or not; a cut
tool call is retried on a deployment with room; the count is bounded by configuration
and every part is an attempt whose cost the request sums."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from clasp_gateway import ConfigError, hookimpl
from clasp_gateway.shaping.long_answers import DEFAULT_PROMPT, parse_settings
from clasp_gateway.testing import GATEWAY_KEY, Error, FakeUpstream, GatewayServer, Text, ToolCalls, config_from

UPSTREAM_KEY = "sk-upstream-long-answers-0123456789"


@pytest.fixture(autouse=True)
def only_claude(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Anthropic API and nothing else (no cache, no router: the core's behaviour)."""
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "claude")


class Events:
    """Records what the gateway reports."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    @hookimpl
    def record(self, ctx: Any, event: dict[str, Any]) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]


def dep(up: FakeUpstream, ident: str, limit: int, **extra: Any) -> dict[str, Any]:
    return {"id": ident, "model": "openai/gpt-4o-mini", "api_base": up.base_url, "api_key": UPSTREAM_KEY,
            "max_output_tokens": limit, "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6,
            "timeouts": {"connect": 1, "first_byte": 3, "idle": 3, "total": 10}, **extra}


def parts(*texts: str, last_finish: str = "stop") -> Any:
    """A script: the n-th call answers ``texts[n]``, cut by ``length`` but the last
    (the n-th call: how much of the answer its last assistant message already holds)."""

    def script(body: dict[str, Any], rec: Any) -> Any:
        said = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "assistant"), "")
        n, joined = 0, ""
        while n < len(texts) - 1 and said and said.startswith((joined + texts[n]).rstrip()):
            joined += texts[n]
            n += 1
        text = texts[min(n, len(texts) - 1)]
        finish = last_finish if n >= len(texts) - 1 else "length"
        return Text(text, usage=(10 + n, 50), finish_reason=finish, chunk_size=5)
    return script


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as u:
        yield u


def serve(models: dict[str, Any], plugins: list[Any], **sections: Any) -> GatewayServer:
    config = config_from({"models": models, "long_answers": {"max_continuations": 2}, **sections})
    return GatewayServer(config, plugins=plugins).start()


def completions(up: FakeUpstream) -> list[dict[str, Any]]:
    return [r.json for r in up.requests if r.path.endswith("/chat/completions")]


def test_a_cut_text_answer_is_continued_on_the_openai_route(up: FakeUpstream) -> None:
    up.script = parts("The first half, ", "and the second half.")
    events = Events()
    server = serve({"m": [dep(up, "small", 50)]}, [events])
    try:
        r = httpx.post(server.base_url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                       json={"model": "m", "max_tokens": 200, "messages": [{"role": "user", "content": "write"}]},
                       timeout=10)
    finally:
        server.stop()
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "The first half, and the second half."
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 21 and body["usage"]["completion_tokens"] == 100
    assert r.headers["x-clasp-continued"] == "1"
    sent = completions(up)
    assert len(sent) == 2
    assert sent[0]["max_tokens"] == 50  # clamped to the deployment's limit
    assert sent[1]["max_tokens"] == 50 and sent[1]["messages"][-2:] == [
        {"role": "assistant", "content": "The first half, "}, {"role": "user", "content": DEFAULT_PROMPT}]
    attempts = events.of("attempt")
    request = events.of("request")[0]
    assert [a["ok"] for a in attempts] == [True, True] and request["continued"] == 1
    assert request["cost_usd"] == pytest.approx(sum(a["cost_usd"] for a in attempts))
    assert request["cost_usd"] == pytest.approx(21e-6 + 100 * 2e-6)


def stream_messages(server: GatewayServer, max_tokens: int) -> tuple[httpx.Response, list[tuple[str, Any]]]:
    with httpx.stream("POST", server.base_url + "/v1/messages", headers={"x-api-key": GATEWAY_KEY}, timeout=10,
                      json={"model": "m", "max_tokens": max_tokens, "stream": True,
                            "messages": [{"role": "user", "content": "write"}]}) as r:
        raw = r.read().decode()
    events = []
    for block in raw.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return r, events


def test_a_streamed_answer_is_one_seamless_message_on_the_anthropic_route(up: FakeUpstream) -> None:
    up.script = parts("One, ", "two, ", "three.")
    server = serve({"m": [dep(up, "small", 50)]}, [])
    try:
        r, events = stream_messages(server, 1000)
    finally:
        server.stop()
    assert r.status_code == 200
    names = [n for n, _ in events]
    assert names.count("message_start") == 1 and names.count("message_stop") == 1
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "One, two, three."
    assert names.count("content_block_start") == 1  # one text block, not three
    delta = next(d for n, d in events if n == "message_delta")
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"]["output_tokens"] == 150
    assert len(completions(up)) == 3


def test_continuations_are_bounded_by_configuration(up: FakeUpstream) -> None:
    up.script = lambda body, rec: Text("more ", finish_reason="length", usage=(5, 50))
    server = serve({"m": [dep(up, "small", 50)]}, [])
    try:
        r, events = stream_messages(server, 100_000)  # the client cannot make the gateway loop
    finally:
        server.stop()
    delta = next(d for n, d in events if n == "message_delta")
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert len(completions(up)) == 3  # the answer and max_continuations: 2


def test_an_answer_cut_at_the_clients_own_limit_is_not_continued(up: FakeUpstream) -> None:
    up.script = parts("exactly fifty", "never")
    server = serve({"m": [dep(up, "small", 50)]}, [])
    try:
        r = httpx.post(server.base_url + "/v1/messages", headers={"x-api-key": GATEWAY_KEY}, timeout=10,
                       json={"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": "write"}]})
    finally:
        server.stop()
    assert r.json()["stop_reason"] == "max_tokens" and r.json()["content"][0]["text"] == "exactly fifty"
    assert "x-clasp-continued" not in r.headers and len(completions(up)) == 1


def test_off_by_default(up: FakeUpstream) -> None:
    up.script = parts("cut", "never")
    with GatewayServer(config_from({"models": {"m": [dep(up, "small", 50)]}})) as server:
        r = httpx.post(server.base_url + "/v1/messages", headers={"x-api-key": GATEWAY_KEY}, timeout=10,
                       json={"model": "m", "max_tokens": 500, "messages": [{"role": "user", "content": "write"}]})
    assert r.json()["stop_reason"] == "max_tokens" and len(completions(up)) == 1


CUT_CALL = ToolCalls([("write_file", '{"path": "a.py", "content": "print(')], finish_reason="length", usage=(10, 50))
WHOLE_CALL = ToolCalls([("write_file", {"path": "a.py", "content": "print('hi')"})], usage=(10, 80))
TOOLS = [{"name": "write_file", "description": "Write a file",
          "input_schema": {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}}}]


@pytest.mark.parametrize("stream", [False, True])
def test_a_cut_tool_call_is_retried_on_a_deployment_with_room(stream: bool) -> None:
    with FakeUpstream("openai") as small, FakeUpstream("openai") as big:
        small.script = lambda body, rec: CUT_CALL
        big.script = lambda body, rec: WHOLE_CALL
        events = Events()
        server = serve({"m": [dep(small, "small", 50), dep(big, "big", 8000)]}, [events])
        try:
            with httpx.stream("POST", server.base_url + "/v1/messages", headers={"x-api-key": GATEWAY_KEY}, timeout=10,
                              json={"model": "m", "max_tokens": 4000, "stream": stream, "tools": TOOLS,
                                    "messages": [{"role": "user", "content": "write a.py"}]}) as r:
                raw = r.read().decode()
        finally:
            server.stop()
        assert r.status_code == 200, raw
        assert "print(')" not in raw.replace("\\", "")  # the broken call never reached the client
        if not stream:
            message = json.loads(raw)
            assert message["stop_reason"] == "tool_use"
            assert message["content"][-1]["input"] == {"path": "a.py", "content": "print('hi')"}
            assert r.headers["x-clasp-continued"] == "1"
        else:
            assert '"stop_reason":"tool_use"' in raw.replace(" ", "")
        assert len(completions(small)) == 1 and len(completions(big)) == 1
        assert completions(big)[0]["max_tokens"] == 4000
        request = events.of("request")[0]
        assert len(events.of("attempt")) == 2 and request["cost_usd"] == pytest.approx(20e-6 + 130 * 2e-6)


def test_a_cut_tool_call_with_no_deployment_with_room_ends_honestly() -> None:
    with FakeUpstream("openai") as small:
        small.script = lambda body, rec: CUT_CALL
        server = serve({"m": [dep(small, "small", 50)]}, [])
        try:
            r = httpx.post(server.base_url + "/v1/messages", headers={"x-api-key": GATEWAY_KEY}, timeout=10,
                           json={"model": "m", "max_tokens": 4000, "tools": TOOLS,
                                 "messages": [{"role": "user", "content": "write a.py"}]})
        finally:
            server.stop()
        assert r.status_code == 200 and r.json()["stop_reason"] == "max_tokens"
        assert len(completions(small)) == 1


def test_settings_report_every_mistake_at_once() -> None:
    config = config_from({"models": {}, "long_answers": {"max_continuations": -1, "style": "magic", "oops": 1}})
    with pytest.raises(ConfigError) as info:
        parse_settings(config)
    text = "\n".join(info.value.problems)
    assert "long_answers.max_continuations" in text and "long_answers.style" in text and "long_answers.oops" in text


def test_prefix_style_sends_the_partial_answer_as_a_trailing_assistant_message(up: FakeUpstream) -> None:
    up.script = parts("Half an answer.  ", "The rest.")
    config = config_from({"models": {"m": [dep(up, "small", 50)]},
                          "long_answers": {"max_continuations": 1, "style": "prefix"}})
    with GatewayServer(config) as server:
        r = httpx.post(server.base_url + "/v1/messages", headers={"x-api-key": GATEWAY_KEY}, timeout=10,
                       json={"model": "m", "max_tokens": 500, "messages": [{"role": "user", "content": "write"}]})
    assert r.json()["content"][0]["text"] == "Half an answer.  The rest."
    assert completions(up)[1]["messages"][-1] == {"role": "assistant", "content": "Half an answer."}  # no trailing space


def test_a_continuation_on_an_anthropic_deployment_sends_the_gateways_body_not_the_clients() -> None:
    """The first part comes from an OpenAI-style deployment; the second, after that one
    fails, from Anthropic, which is otherwise sent the client's own request (pass-through):
    here it must get the conversation with the partial answer."""
    with FakeUpstream("openai") as gpt, FakeUpstream("anthropic") as claude:
        gpt.script = lambda body, rec: (Text("Cut here ", finish_reason="length", usage=(10, 50))
                                        if len(body.get("messages") or []) == 1 else Error(500, {"error": {"message": "down"}}))
        claude.script = lambda body, rec: Text("and finished.", usage=(12, 20))
        config = config_from({
            "models": {"m": [dep(gpt, "gpt", 50),
                             {"id": "claude", "model": "anthropic/claude-sonnet-4-5-20250929", "api_base": claude.base_url,
                              "api_key": UPSTREAM_KEY}]},
            "long_answers": {"max_continuations": 1},
        })
        with GatewayServer(config) as server:
            r = httpx.post(server.base_url + "/v1/messages", timeout=10,
                           headers={"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"},
                           json={"model": "m", "max_tokens": 500, "messages": [{"role": "user", "content": "write"}]})
        assert r.status_code == 200, r.text
        assert not gpt.errors and not claude.errors
        assert r.json()["content"][0]["text"] == "Cut here and finished." and r.json()["stop_reason"] == "end_turn"
        sent = [x.json for x in claude.requests if x.path.startswith("/v1/messages")]
        assert len(sent) == 1 and len(sent[0]["messages"]) == 3  # the question, the partial answer, "continue"
        assert sent[0]["messages"][1]["role"] == "assistant" and sent[0]["max_tokens"] == 450


def test_a_streamed_answer_on_the_openai_route_is_one_stream_with_the_summed_usage(up: FakeUpstream) -> None:
    up.script = parts("Alpha ", "beta ", "gamma.")
    server = serve({"m": [dep(up, "small", 50)]}, [])
    try:
        with httpx.stream("POST", server.base_url + "/v1/chat/completions", timeout=10,
                          headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                          json={"model": "m", "max_tokens": 1000, "stream": True,
                                "stream_options": {"include_usage": True},
                                "messages": [{"role": "user", "content": "write"}]}) as r:
            raw = r.read().decode()
    finally:
        server.stop()
    data = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]" and data.count("[DONE]") == 1
    chunks = [json.loads(d) for d in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert text == "Alpha beta gamma."
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices") and c["choices"][0].get("finish_reason")]
    assert finishes == ["stop"]
    assert [c["usage"] for c in chunks if c.get("usage")][-1]["completion_tokens"] == 150
    assert sum(1 for c in chunks if c.get("choices") and c["choices"][0]["delta"].get("role")) <= 1

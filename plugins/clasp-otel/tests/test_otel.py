"""Traces of a real gateway, collected with the SDK's in-memory exporter: a span per
request (continuing the client's traceparent) and per attempt, the attempt's
traceparent received by the fake provider, nothing at all when tracing is off."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from clasp_gateway.testing import Error, FakeUpstream, GatewayServer, Text, config_from

INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING = f"00-{INCOMING_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture(autouse=True)
def only_this_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """The core's own failover (no clasp-fallback retries): one attempt per deployment."""
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "otel")


def dep(up: FakeUpstream, dep_id: str) -> dict[str, Any]:
    return {"model": "openai/gpt-4o", "id": dep_id, "api_base": up.base_url, "api_key": "sk-upstream-1234567890",
            "prices": {"input": 1, "output": 2}}


def traced(config: dict[str, Any]) -> tuple[GatewayServer, InMemorySpanExporter]:
    server = GatewayServer(config_from(config))
    exporter = InMemorySpanExporter()
    server.app.starlette_app.state.otel_span_exporter = exporter
    return server.start(), exporter


def spans(server: GatewayServer, exporter: InMemorySpanExporter, requests: int = 1) -> list[Any]:
    """The finished spans, once ``requests`` request spans have ended (a request span
    ends just after its answer was sent: the client may be faster)."""
    deadline = time.monotonic() + 5
    while True:
        server.app.starlette_app.state.otel.provider.force_flush()
        found = list(exporter.get_finished_spans())
        if sum(s.kind == SpanKind.SERVER for s in found) >= requests or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def test_a_request_and_its_attempts_are_spans_and_the_provider_gets_traceparent(fake_upstream: FakeUpstream) -> None:
    with FakeUpstream("openai") as second:
        server, exporter = traced({"models": {"*": [dep(fake_upstream, "first"), dep(second, "second")]},
                                   "otel": {"exporter": "none"}})
        try:
            fake_upstream.queue(Error(503))
            second.queue(Text("hello there"))
            answer = httpx.post(server.base_url + "/v1/chat/completions", headers={**server.headers,
                                                                                    "traceparent": INCOMING},
                                json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
            assert answer.status_code == 200
            found = spans(server, exporter)
        finally:
            server.stop()
    request = next(s for s in found if s.kind == SpanKind.SERVER)
    attempts = sorted((s for s in found if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time)
    assert format(request.context.trace_id, "032x") == INCOMING_TRACE  # the client's trace, continued
    assert request.name == "POST /v1/chat/completions"
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["clasp.deployment"] == "second"
    assert request.attributes["clasp.attempts"] == 2 and request.attributes["clasp.fallbacks"] >= 1
    assert request.attributes["gen_ai.usage.output_tokens"] > 0 and request.attributes["clasp.cost_usd"] > 0
    assert request.attributes["clasp.request_id"] == answer.headers["request-id"]
    assert [a.attributes["clasp.deployment"] for a in attempts] == ["first", "second"]
    assert all(a.parent.span_id == request.context.span_id for a in attempts)
    assert attempts[0].status.status_code == StatusCode.ERROR
    assert attempts[0].attributes["http.response.status_code"] == 503
    assert attempts[1].attributes["gen_ai.usage.output_tokens"] > 0
    # Each provider received the traceparent of its own attempt.
    for attempt, upstream in zip(attempts, (fake_upstream, second), strict=True):
        sent = upstream.last.headers["traceparent"]
        assert sent == f"00-{INCOMING_TRACE}-{attempt.context.span_id:016x}-01"


def test_a_new_trace_without_incoming_and_errors_marked(fake_upstream: FakeUpstream) -> None:
    server, exporter = traced({"models": {"*": [dep(fake_upstream, "only")]}, "otel": {"exporter": "none"}})
    try:
        fake_upstream.queue(Error(400))
        answer = httpx.post(server.base_url + "/v1/chat/completions", headers=server.headers,
                            json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
        assert answer.status_code == 400
        missing = httpx.get(server.base_url + "/nope")
        assert missing.status_code == 404
        found = spans(server, exporter, requests=2)
    finally:
        server.stop()
    requests = [s for s in found if s.kind == SpanKind.SERVER]
    assert {s.attributes["http.response.status_code"] for s in requests} == {400, 404}
    assert all(format(s.context.trace_id, "032x") != INCOMING_TRACE for s in requests)
    attempt = next(s for s in found if s.kind == SpanKind.CLIENT)
    assert attempt.status.status_code == StatusCode.ERROR


def test_tracing_off_registers_nothing(fake_upstream: FakeUpstream) -> None:
    server = GatewayServer(config_from({"models": {"*": [dep(fake_upstream, "only")]}})).start()
    try:
        answer = httpx.post(server.base_url + "/v1/chat/completions", headers=server.headers,
                            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200
        assert "traceparent" not in fake_upstream.last.headers
        assert server.gateway.pm.get_plugin("otel.runtime") is None
        assert getattr(server.app.starlette_app.state, "otel", None) is None
    finally:
        server.stop()


def test_settings_mistakes() -> None:
    from clasp_gateway import ConfigError

    with pytest.raises(ConfigError) as caught:
        GatewayServer(config_from({"models": {}, "otel": {"exporter": "jaeger", "sample_ratio": 2}}))
    assert "otel.exporter" in str(caught.value) and "otel.sample_ratio" in str(caught.value)


@pytest.mark.parametrize("stream", [False, True])
def test_a_litellm_deployment_gets_the_attempt_traceparent_too(fake_upstream: FakeUpstream, stream: bool) -> None:
    """``mode: litellm`` (LiteLLM's own client): the same traceparent as a direct call,
    in ``extra_headers``; the client's own traceparent and headers never ride along."""
    server, exporter = traced({"models": {"*": [{**dep(fake_upstream, "catch-all"), "mode": "litellm"}]},
                               "otel": {"exporter": "none"}})
    try:
        fake_upstream.queue(Text("hello there"))
        answer = httpx.post(server.base_url + "/v1/chat/completions",
                            headers={**server.headers, "traceparent": INCOMING, "x-evil": "1"},
                            json={"model": "gpt-4o", "stream": stream, "extra_headers": {"x-evil": "1"},
                                  "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200, answer.text
        found = spans(server, exporter)
    finally:
        server.stop()
    [attempt] = [s for s in found if s.kind == SpanKind.CLIENT]
    sent = fake_upstream.last.headers
    assert sent["traceparent"] == f"00-{INCOMING_TRACE}-{attempt.context.span_id:016x}-01"
    assert sent["traceparent"] != INCOMING  # the attempt's own span, not the client's header
    assert "x-evil" not in sent

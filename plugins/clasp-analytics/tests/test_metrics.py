"""Prometheus metrics from real requests through an in-process gateway: counts,
labels, tokens, cost, quality signals, bounded cardinality, and who may scrape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest

from clasp_gateway.testing import FakeUpstream, StartGateway, Text, ToolCalls, load_module, openai_models

support = load_module(Path(__file__).with_name("analytics_support.py"), "clasp_analytics_test_support")
ADMIN = {"x-api-key": support.ADMIN_KEY}
MEMBER = {"x-api-key": support.MEMBER_KEY}


@pytest.fixture(autouse=True)
def only_these_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the plugins these tests are about (whatever else is installed)."""
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "analytics,fallback,claude")


@pytest.fixture
def gateway(fake_upstream: FakeUpstream, start_gateway: StartGateway, sqlite_url: str) -> Iterator[Any]:
    yield start_gateway({"models": openai_models(fake_upstream.base_url), "storage": {"url": sqlite_url},
                         "keys": [{"key": support.MEMBER_KEY, "name": "unused"}]},
                        plugins=[support.RoleKeys()])


def chat(gw: Any, headers: dict[str, str] = MEMBER, *, model: str = "gpt-4o", stream: bool = False,
         content: str = "hi") -> httpx.Response:
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]}
    return httpx.post(gw.base_url + "/v1/chat/completions", headers=headers, json=body, timeout=30)


def scrape(gw: Any, headers: dict[str, str] = ADMIN) -> dict[Any, float]:
    response = httpx.get(gw.base_url + "/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return support.samples(response.text)


def test_requests_tokens_cost_and_latency_are_counted(gateway: Any, fake_upstream: FakeUpstream) -> None:
    fake_upstream.queue(Text("hello there", usage=(11, 3)), Text("streamed", usage=(7, 2)), Text("x", usage=(5, 1)))
    assert chat(gateway).status_code == 200
    assert chat(gateway, stream=True).status_code == 200
    assert chat(gateway).status_code == 200
    assert chat(gateway, model="").status_code == 400
    found = scrape(gateway)
    ok = {"model": "gpt-4o", "deployment": "openai/gpt-4o", "provider": "openai", "status": "200",
          "class": "question", "team": "red"}
    assert support.total(found, "clasp_requests_total", **ok) == 3
    assert support.total(found, "clasp_tokens_total", direction="input") == 23
    assert support.total(found, "clasp_tokens_total", direction="output") == 6
    assert support.total(found, "clasp_cost_usd_total", model="gpt-4o", team="red") > 0
    assert support.total(found, "clasp_request_duration_seconds_count", model="gpt-4o") == 3
    assert support.total(found, "clasp_time_to_first_token_seconds_count", model="gpt-4o") == 3
    assert support.total(found, "clasp_upstream_attempts_total", outcome="ok", upstream_status="200") == 3
    assert support.total(found, "clasp_requests_in_flight") == 0
    assert support.total(found, "clasp_hook_failures_total") == 0


def test_no_request_ids_users_or_keys_in_labels(gateway: Any, fake_upstream: FakeUpstream) -> None:
    fake_upstream.queue(Text("a"))
    response = chat(gateway)
    text = httpx.get(gateway.base_url + "/metrics", headers=ADMIN).text
    assert response.headers["request-id"] not in text
    for secret in (support.ADMIN_KEY, support.MEMBER_KEY, "id_member", "member-key"):
        assert secret not in text
    assert 'request_id="' not in text and 'user="' not in text


def test_unknown_models_and_random_names_cannot_grow_the_series(
    fake_upstream: FakeUpstream, start_gateway: StartGateway, sqlite_url: str
) -> None:
    gw = start_gateway({"models": openai_models(fake_upstream.base_url, {"known-*": "gpt-4o"}),
                        "storage": {"url": sqlite_url}, "analytics": {"metrics": {"max_label_values": 2}}},
                       plugins=[support.RoleKeys()])
    for i in range(4):
        assert chat(gw, model=f"random-{i}").status_code == 404
    for i in range(3):
        fake_upstream.queue(Text("ok"))
        assert chat(gw, model=f"known-{i}").status_code == 200
    found = scrape(gw)
    models = {dict(labels)["model"] for (name, labels) in found if name == "clasp_requests_total"}
    assert "unknown" in models and not any(m.startswith("random-") for m in models)
    assert models <= {"unknown", "known-0", "other"}
    assert support.total(found, "clasp_requests_total", status="404") == 4
    assert support.total(found, "clasp_requests_total", status="200") == 3


def test_quality_signals_truncation_bad_tool_json_and_retries(gateway: Any, fake_upstream: FakeUpstream) -> None:
    fake_upstream.queue(Text("cut short", finish_reason="length"))
    assert chat(gateway, stream=True, content="one").status_code == 200
    fake_upstream.queue(ToolCalls([("run", '{"cmd": "ls"')]))  # arguments that never close
    assert chat(gateway, stream=True, content="two").status_code == 200
    fake_upstream.queue(ToolCalls([("run", {"cmd": "ls"})]))
    assert chat(gateway, stream=True, content="three").status_code == 200
    fake_upstream.queue(Text("again"))
    assert chat(gateway, stream=True, content="three").status_code == 200  # the same conversation, again
    found = scrape(gateway)
    signal = {dict(labels)["signal"]: v for (name, labels), v in found.items() if name == "clasp_quality_signals_total"}
    assert signal == {"truncated": 1.0, "invalid_tool_json": 1.0, "retried": 1.0}


def test_fallbacks_retries_and_failed_attempts(fake_upstream: FakeUpstream, start_gateway: StartGateway,
                                               sqlite_url: str) -> None:
    from clasp_gateway.testing import Error

    with FakeUpstream("openai") as second:
        models = {"chain": [
            {"model": "openai/gpt-4o", "api_base": fake_upstream.base_url, "api_key": "sk-up-1234567890", "id": "first"},
            {"model": "openai/gpt-4o", "api_base": second.base_url, "api_key": "sk-up-1234567890", "id": "second"}]}
        gw = start_gateway({"models": models, "storage": {"url": sqlite_url},
                            "fallback": {"retry": {"attempts": 0}, "breaker": {"failures": 1, "cooldown": 300},
                                         "health": {"interval": 0}}},
                           plugins=[support.RoleKeys()])
        fake_upstream.queue(Error(503))
        second.queue(Text("from second"), Text("again"))
        assert chat(gw, model="chain").status_code == 200
        assert chat(gw, model="chain").status_code == 200  # the first one's breaker is open now
        found = scrape(gw)
    assert support.total(found, "clasp_fallbacks_total", from_deployment="first", to_deployment="second") == 1
    assert support.total(found, "clasp_upstream_attempts_total", deployment="first", outcome="error",
                         upstream_status="503") == 1
    assert support.total(found, "clasp_circuit_breaker_state", deployment="first", state="open") == 1
    assert support.total(found, "clasp_circuit_breaker_state", deployment="second", state="closed") == 1


@pytest.mark.parametrize(("headers", "status"), [({}, 401), (MEMBER, 403), ({"x-api-key": "sk-wrong-key-0123456789"}, 401)])
def test_metrics_need_an_admin_key_by_default(gateway: Any, headers: dict[str, str], status: int) -> None:
    response = httpx.get(gateway.base_url + "/metrics", headers=headers)
    assert response.status_code == status
    assert response.json()["type"] == "error"


def test_a_scrape_token_instead_of_a_gateway_key(fake_upstream: FakeUpstream, start_gateway: StartGateway,
                                                 sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASP_TEST_METRICS_TOKEN", "scrape-token-0123456789abcdef")
    gw = start_gateway({"models": openai_models(fake_upstream.base_url), "storage": {"url": sqlite_url},
                        "analytics": {"metrics": {"auth": "token", "token": "${CLASP_TEST_METRICS_TOKEN}"}}},
                       plugins=[support.RoleKeys()])
    assert httpx.get(gw.base_url + "/metrics", headers=ADMIN).status_code == 401
    assert httpx.get(gw.base_url + "/metrics", headers={"authorization": "Bearer nope"}).status_code == 401
    ok = httpx.get(gw.base_url + "/metrics", headers={"authorization": "Bearer scrape-token-0123456789abcdef"})
    assert ok.status_code == 200 and "clasp_requests_in_flight" in ok.text


def test_a_retry_served_by_another_replica_is_seen(fake_upstream: FakeUpstream, start_gateway: StartGateway,
                                                   sqlite_url: str, redis_server: Any) -> None:
    """The conversation fingerprints live in the shared state: two gateways on one Redis."""
    with redis_server.namespace() as ns:
        config = {"models": openai_models(fake_upstream.base_url), "storage": {"url": sqlite_url},
                  "state": {"backend": "redis", "url": ns.url, "prefix": ns.prefix}}
        first = start_gateway(config, plugins=[support.RoleKeys()])
        second = start_gateway(config, plugins=[support.RoleKeys()])
        fake_upstream.queue(Text("one"), Text("two"))
        assert chat(first, content="the same question").status_code == 200
        assert chat(second, content="the same question").status_code == 200
        assert support.total(scrape(second), "clasp_quality_signals_total", signal="retried") == 1
        assert support.total(scrape(first), "clasp_quality_signals_total", signal="retried") == 0
        assert any(key.startswith(ns.prefix + "analytics:fp:") for key in ns.keys())


def test_whole_answers_are_inspected_too(gateway: Any, fake_upstream: FakeUpstream) -> None:
    fake_upstream.queue(Text("cut short", finish_reason="length"), ToolCalls([("run", "[1, 2]")]))
    assert chat(gateway, content="non-stream one").status_code == 200
    assert chat(gateway, content="non-stream two").status_code == 200
    found = scrape(gateway)
    assert support.total(found, "clasp_quality_signals_total", signal="truncated") == 1
    assert support.total(found, "clasp_quality_signals_total", signal="invalid_tool_json") == 1  # not an object


def test_request_label_sets_are_resolved_once_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request's series are remembered per distinct label set (the same children
    every time), never more than LABEL_SETS of them; past it they are still counted,
    just not remembered. A series gets its child on its first sample only (none for a
    token direction never used), and attempts' children are remembered the same way."""
    from clasp_analytics import metrics as m
    from clasp_analytics.settings import MetricsSettings

    monkeypatch.setattr(m, "LABEL_SETS", 2)
    gm = m.GatewayMetrics(MetricsSettings())
    event = {"kind": "request", "public_model": "claude", "deployment": "d1", "provider": "anthropic",
             "status": 200, "request_class": "chat", "latency_ms": 100.0, "ttfb_ms": 20.0,
             "usage": {"input_tokens": 10, "output_tokens": 5}, "cost_usd": 0.01}
    first = gm._series(event)
    assert gm._series(dict(event)) is first
    for model in ("a", "b", "c"):
        gm.observe_request({**event, "public_model": model}, None)
    assert len(gm._series_of) == 2
    gm.observe_request(event, None)
    team = {"team": ""} if gm.settings.team_label else {}
    assert gm.registry.get_sample_value(
        "clasp_requests_total", {"model": "c", "deployment": "d1", "provider": "anthropic", "status": "200",
                                 "class": "chat", **team}) == 1.0
    assert gm.registry.get_sample_value(
        "clasp_tokens_total", {"model": "claude", "provider": "anthropic", **team, "direction": "input"}) == 10.0
    gm.observe_request({**event, "public_model": ["unhashable"]}, None)  # not remembered, still counted
    gm.observe_request(event, None)
    assert set(first.tokens) == {"input_tokens", "output_tokens"} and first.cut is None and first.unpriced is None
    assert 'direction="cache_read"' not in generate_latest(gm.registry).decode()
    attempt = {"kind": "attempt", "deployment": "d1", "provider": "anthropic", "ok": True, "upstream_status": 200}
    for deployment in ("d1", "d2", "d3", "d1"):
        gm.observe_attempt({**attempt, "deployment": deployment})
    assert len(gm._attempt_children) == 2
    assert gm.registry.get_sample_value(
        "clasp_upstream_attempts_total", {"deployment": "d1", "provider": "anthropic", "outcome": "ok",
                                          "upstream_status": "200"}) == 2.0
    assert gm.registry.get_sample_value(
        "clasp_upstream_attempts_total", {"deployment": "d3", "provider": "anthropic", "outcome": "ok",
                                          "upstream_status": "200"}) == 1.0

"""``/metrics`` reports what the gateway stands on (the shared state, the database, the
ledger's spool) and refusals by an exhausted budget: the series the alert rules in
``deploy/prometheus/clasp.rules.yml`` fire on, checked against real stores going down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clasp_gateway.testing import FakeUpstream, RedisServer, StartGateway, Text, load_module, openai_models

support = load_module(Path(__file__).with_name("analytics_support.py"), "clasp_analytics_test_support")
ADMIN = {"x-api-key": support.ADMIN_KEY}
MEMBER = {"x-api-key": support.MEMBER_KEY}


@pytest.fixture(autouse=True)
def only_these_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "analytics,fallback,claude,budgets_ledger,budgets_budgets")


def scrape(gw: Any) -> dict[Any, float]:
    response = httpx.get(gw.base_url + "/metrics", headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    return support.samples(response.text)


def chat(gw: Any, *, api: str = "openai") -> httpx.Response:
    if api == "openai":
        body: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        return httpx.post(gw.base_url + "/v1/chat/completions", headers=MEMBER, json=body, timeout=30)
    body = {"model": "gpt-4o", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(gw.base_url + "/v1/messages", headers=MEMBER, json=body, timeout=30)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, so stopping it disturbs nobody else."""
    server = RedisServer.start_own()
    try:
        yield server
    finally:
        server.stop()


def test_the_database_and_the_ledger_are_reported(fake_upstream: FakeUpstream, start_gateway: StartGateway,
                                                  postgres_server: Any) -> None:
    with postgres_server.database() as url:
        gw = start_gateway({"models": openai_models(fake_upstream.base_url), "storage": {"url": url},
                            "ledger": {"flush_interval": "50ms"}}, plugins=[support.RoleKeys()])
        fake_upstream.queue(Text("one"), Text("two"))
        assert chat(gw).status_code == 200
        assert chat(gw).status_code == 200
        found = scrape(gw)
        assert support.total(found, "clasp_database_up", dialect="postgresql") == 1
        assert support.total(found, "clasp_ledger_spool_bytes") == 0
        assert ("clasp_ledger_rows_total", frozenset({("outcome", "dropped")})) in found
        assert "clasp_state_up" not in {name for name, _ in found}  # memory state: nothing shared to watch
        postgres_server.drop(url)  # the database goes away under the running gateway
        found = scrape(gw)
        assert support.total(found, "clasp_database_up", dialect="postgresql") == 0


def test_the_shared_state_going_down_is_reported(fake_upstream: FakeUpstream, start_gateway: StartGateway,
                                                 sqlite_url: str, own_redis: RedisServer) -> None:
    gw = start_gateway({"models": openai_models(fake_upstream.base_url), "storage": {"url": sqlite_url},
                        "state": {"backend": "redis", "url": own_redis.url, "timeout": "200ms"}},
                       plugins=[support.RoleKeys()])
    found = scrape(gw)
    assert support.total(found, "clasp_state_up", backend="redis") == 1
    assert support.total(found, "clasp_database_up", dialect="sqlite") == 1
    own_redis.stop()
    found = scrape(gw)
    assert support.total(found, "clasp_state_up", backend="redis") == 0
    assert support.total(found, "clasp_database_up", dialect="sqlite") == 1


@pytest.mark.parametrize("api, status", [("anthropic", 402), ("openai", 429)])
def test_an_exhausted_budget_is_counted_and_a_rate_limit_is_not(fake_upstream: FakeUpstream,
                                                                start_gateway: StartGateway, sqlite_url: str,
                                                                api: str, status: int) -> None:
    gw = start_gateway({"models": openai_models(fake_upstream.base_url), "storage": {"url": sqlite_url},
                        "budgets": {"limits": [{"name": "tiny", "scope": "global", "usd": 0.000001,
                                                "period": "daily"}]}},
                       plugins=[support.RoleKeys()])
    response = chat(gw, api=api)
    assert response.status_code == status, response.text
    found = scrape(gw)
    assert support.total(found, "clasp_budget_exhausted_total", model="gpt-4o", team="red") == 1

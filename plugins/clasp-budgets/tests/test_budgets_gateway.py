"""Budgets in a real gateway, in front of a fake provider with known usage and prices:
refusals on both APIs (shape, no upstream call), lowering max_tokens, soft budgets,
keys' own budgets, cache hits, the admin listing, spend across a restart (SQLite and
Redis state), and configuration mistakes."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clasp_gateway import (
    CanonicalRequest,
    Chunk,
    ConfigError,
    KeyPolicy,
    Principal,
    RequestContext,
    completion_to_chunk,
    hookimpl,
)
from clasp_gateway.testing import FakeUpstream, GatewayServer, Text, config_from
from clasp_gateway.testing.processes import RedisServer, free_port

PRICES = {"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-5, "max_output_tokens": 1000}
# Each answer: 100 input and 50 output tokens, $0.0006.
ANSWER_COST = 100 * 1e-6 + 50 * 1e-5

PRINCIPALS = {
    "admin-key-000000000000000000": Principal(key_id="k-admin", name="admin", team="ops", role="admin"),
    "tight-key-000000000000000000": Principal(key_id="k-tight", name="tight", team="tight"),
    "lower-key-000000000000000000": Principal(key_id="k-lower", name="lower", team="lower"),
    "soft-key-0000000000000000000": Principal(key_id="k-soft", name="soft", team="softteam"),
    "capped-key-00000000000000000": Principal(key_id="k-capped", name="capped", team="free",
                                              policy=KeyPolicy(max_budget_usd=0.0015, budget_period="monthly")),
    "cache-key-00000000000000000": Principal(key_id="k-cache", name="cache", team="cached"),
    "lead-key-000000000000000000": Principal(key_id="k-lead", name="lead", team="tight", role="team_admin"),
}


class Keys:
    """Principals with roles and policies (what the keys plugin provides)."""

    @hookimpl(tryfirst=True)
    def authenticate(self, api_key: str | None, headers: dict[str, str], config: Any) -> Principal | None:
        return PRINCIPALS.get(api_key or "")


class FakeCache:
    """Answers team ``cached`` from "cache" without an upstream call."""

    @hookimpl
    def before_call(self, ctx: RequestContext, request: CanonicalRequest) -> list[Chunk] | None:
        if ctx.principal is None or ctx.principal.team != "cached":
            return None
        ctx.cache_hit, ctx.saved_usd = "exact", ANSWER_COST
        return [completion_to_chunk({"id": "c", "model": "gpt-4o", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "cached"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 50}})]


def budgets_config(upstream: FakeUpstream, storage: str, **extra: Any) -> dict[str, Any]:
    return {
        "storage": {"url": storage},  # a database of this module's own (the ledger rebuilds spend from it)
        "models": {"gpt-4o": [{"model": "openai/gpt-4o", "api_base": upstream.base_url, "api_key": "sk-fake", **PRICES}]},
        "permissions": {"enabled": False},
        "budgets": {"limits": [
            {"name": "tight", "scope": "team", "match": "tight", "usd": 0.0015, "period": "daily"},
            {"name": "lower", "scope": "team", "match": "lower", "usd": 0.002, "lower_max_tokens": True,
             "min_tokens": 10},
            {"name": "soft", "scope": "team", "match": "softteam", "usd": 0.001, "mode": "soft"},
            {"name": "cached", "scope": "team", "match": "cached", "usd": 0.0012},
        ]},
        **extra,
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as fake:
        fake.script = lambda body, rec: Text("hello there", usage=(100, 50))
        yield fake


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream, sqlite_url: str) -> Iterator[GatewayServer]:
    with GatewayServer(config_from(budgets_config(upstream, sqlite_url)), plugins=[Keys(), FakeCache()]) as server:
        yield server


def ask(gateway: GatewayServer, key: str, api: str = "openai", max_tokens: int = 100) -> httpx.Response:
    if api == "openai":
        return httpx.post(gateway.base_url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                          json={"model": "gpt-4o", "max_tokens": max_tokens,
                                "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    return httpx.post(gateway.base_url + "/v1/messages", headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
                      json={"model": "gpt-4o", "max_tokens": max_tokens,
                            "messages": [{"role": "user", "content": "hi"}]}, timeout=30)


def listing(gateway: GatewayServer, key: str = "admin-key-000000000000000000", **query: str) -> dict[str, Any]:
    answer = httpx.get(gateway.base_url + "/admin/budgets", params=query, headers={"x-api-key": key}, timeout=30)
    assert answer.status_code == 200, answer.text
    return {b["name"]: b for b in answer.json()["budgets"]}


def test_an_exhausted_budget_is_refused_on_both_apis_without_an_upstream_call(
    gateway: GatewayServer, upstream: FakeUpstream,
) -> None:
    key = "tight-key-000000000000000000"
    assert ask(gateway, key).status_code == 200  # worst case 0.001: fits 0.0015; costs 0.0006
    calls = len(upstream.requests)
    anthropic = ask(gateway, key, api="anthropic")
    assert anthropic.status_code == 402
    body = anthropic.json()
    assert body["type"] == "error" and body["error"]["type"] == "billing_error"
    assert "budget 'tight'" in body["error"]["message"] and "resets at" in body["error"]["message"]
    assert anthropic.headers["x-should-retry"] == "false" and anthropic.headers["x-clasp-budget"] == "tight"
    openai = ask(gateway, key)
    assert openai.status_code == 429
    assert openai.json()["error"]["type"] == "insufficient_quota" == openai.json()["error"]["code"]
    assert "budget 'tight'" in openai.json()["error"]["message"]
    assert openai.headers["x-should-retry"] == "false" and int(openai.headers["retry-after"]) > 0
    assert len(upstream.requests) == calls  # never reached upstream
    # A smaller request still fits what is left (0.0009).
    assert ask(gateway, key, max_tokens=50).status_code == 200
    tight = listing(gateway)["tight"]
    assert tight["spent_usd"] == pytest.approx(2 * ANSWER_COST) and tight["reserved_usd"] == 0
    assert tight["remaining_usd"] == pytest.approx(0.0015 - 2 * ANSWER_COST)


def test_lowering_max_tokens_is_opt_in_and_announced(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    key = "lower-key-000000000000000000"
    for _ in range(2):  # 0.0012 spent, 0.0008 left
        assert ask(gateway, key).status_code == 200
    answer = ask(gateway, key)  # worst case 0.001 does not fit: lowered to what is left
    assert answer.status_code == 200
    lowered = int(answer.headers["x-clasp-budget-max-tokens"])
    assert 60 <= lowered < 80 and upstream.last.body["max_tokens"] == lowered


def test_soft_budgets_alert_but_never_refuse(gateway: GatewayServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING")
    for _ in range(3):  # $0.0018 against $0.001
        assert ask(gateway, "soft-key-0000000000000000000").status_code == 200
    alerts = [json.loads(r.getMessage().split(": ", 1)[1]) for r in caplog.records
              if r.name == "clasp.alerts" and '"budget":"soft"' in r.getMessage()]
    assert sorted(a["threshold_pct"] for a in alerts) == [50.0, 80.0, 100.0]  # each once


def test_a_keys_own_budget_applies(gateway: GatewayServer) -> None:
    key = "capped-key-00000000000000000"
    assert ask(gateway, key).status_code == 200
    refused = ask(gateway, key, api="anthropic")
    assert refused.status_code == 402 and "budget 'key:capped'" in refused.json()["error"]["message"]
    assert listing(gateway)["key:capped"]["spent_usd"] == pytest.approx(ANSWER_COST)


def test_cache_hits_consume_no_budget(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    calls = len(upstream.requests)
    for _ in range(3):  # three answers a $0.0012 budget could not pay for
        assert ask(gateway, "cache-key-00000000000000000").status_code == 200
    assert len(upstream.requests) == calls
    assert listing(gateway)["cached"]["spent_usd"] == 0


def test_the_listing_needs_an_admin_and_a_team_admin_sees_its_team(gateway: GatewayServer) -> None:
    member = httpx.get(gateway.base_url + "/admin/budgets", headers={"x-api-key": "tight-key-000000000000000000"})
    assert member.status_code == 403 and member.json()["error"]["type"] == "permission_error"
    assert httpx.get(gateway.base_url + "/admin/budgets").status_code == 401
    assert set(listing(gateway, "lead-key-000000000000000000")) == {"tight"}


def test_configuration_mistakes_are_named(upstream: FakeUpstream, sqlite_url: str) -> None:
    config = budgets_config(upstream, sqlite_url)
    config["budgets"]["limits"][0]["perod"] = "daily"
    config["budgets"]["limits"][1]["usd"] = -1
    config["budgets"]["checkpoint_interval"] = "20s"
    with pytest.raises(ConfigError) as error:
        GatewayServer(config_from(config), plugins=[Keys()]).start()
    text = str(error.value)
    assert "budgets.limits.0.perod" in text and "did you mean 'period'" in text
    assert "budgets.limits.1.usd" in text and "budgets.checkpoint_interval" in text


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_spend_survives_a_restart(backend: str, upstream: FakeUpstream, redis_server: RedisServer) -> None:
    with tempfile.TemporaryDirectory() as tmp, redis_server.namespace() as ns:
        state = ({"backend": "sqlite", "url": f"sqlite:///{Path(tmp) / 'state.db'}"} if backend == "sqlite"
                 else {"backend": "redis", "url": ns.url, "prefix": ns.prefix, "timeout": "2s"})
        config = config_from(budgets_config(upstream, f"sqlite:///{Path(tmp) / 'clasp.db'}", state=state))
        with GatewayServer(config, plugins=[Keys()]) as first:
            assert ask(first, "tight-key-000000000000000000").status_code == 200
        with GatewayServer(config, plugins=[Keys()]) as second:
            assert listing(second)["tight"]["spent_usd"] == pytest.approx(ANSWER_COST)
            assert ask(second, "tight-key-000000000000000000", api="anthropic").status_code == 402


def test_state_outage_fails_closed_or_open_per_budget(upstream: FakeUpstream, sqlite_url: str) -> None:
    dead = {"backend": "redis", "url": f"redis://127.0.0.1:{free_port()}/0", "timeout": "200ms"}
    config = budgets_config(upstream, sqlite_url, state=dead)
    config["budgets"]["limits"] = [
        {"name": "closed", "scope": "team", "match": "tight", "usd": 10},
        {"name": "open", "scope": "team", "match": "lower", "usd": 10, "on_outage": "fail_open",
         "local_cap_usd": 0.0015},
    ]
    with GatewayServer(config_from(config), plugins=[Keys()]) as server:
        closed = ask(server, "tight-key-000000000000000000", api="anthropic")
        assert closed.status_code == 503 and closed.json()["error"]["type"] == "api_error"
        assert "budget 'closed'" in closed.json()["error"]["message"]
        assert ask(server, "lower-key-000000000000000000").status_code == 200  # within the local cap
        refused = ask(server, "lower-key-000000000000000000")  # 0.0006 + a worst case of 0.001: over it
        assert refused.status_code == 503 and "budget 'open'" in refused.json()["error"]["message"]

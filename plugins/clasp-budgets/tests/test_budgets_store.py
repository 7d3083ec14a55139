"""Budgets in the database (SQLite and PostgreSQL): created, changed and removed through
the admin API and applied at once; and spend rebuilt from the ledger when the state
(memory) did not survive a restart."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from clasp_gateway import KeyPolicy, Principal, hookimpl
from clasp_gateway.testing import FakeUpstream, GatewayServer, Text, config_from

ADMIN = "store-admin-key-0000000000000"
LEAD = "store-lead-key-00000000000000"
MEMBER = "store-member-key-000000000000"
OTHER = "store-other-key-0000000000000"
CAPPED = "store-capped-key-000000000000"
PRINCIPALS = {
    CAPPED: Principal(key_id="s-capped", name="capped", team="capped",
                      policy=KeyPolicy(max_budget_usd=0.0015, budget_period="weekly")),
    OTHER: Principal(key_id="s-other", name="other", team="rebuild"),
    ADMIN: Principal(key_id="s-admin", name="admin", team="ops", role="admin"),
    LEAD: Principal(key_id="s-lead", name="lead", team="web", role="team_admin"),
    MEMBER: Principal(key_id="s-member", name="member", team="web"),
}
ANSWER_COST = 100 * 1e-6 + 50 * 1e-5


class Keys:
    @hookimpl(tryfirst=True)
    def authenticate(self, api_key: str | None, headers: dict[str, str], config: Any) -> Principal | None:
        return PRINCIPALS.get(api_key or "")


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as fake:
        fake.script = lambda body, rec: Text("hello", usage=(100, 50))
        yield fake


def config(upstream: FakeUpstream, database_url: str, **extra: Any) -> Any:
    return config_from({
        "models": {"gpt-4o": [{"model": "openai/gpt-4o", "api_base": upstream.base_url, "api_key": "sk-x",
                               "input_cost_per_token": 1e-6, "output_cost_per_token": 1e-5}]},
        "permissions": {"enabled": False},
        "storage": {"url": database_url},
        **extra,
    })


def call(gateway: GatewayServer, method: str, path: str, key: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, gateway.base_url + path, headers={"x-api-key": key}, json=body, timeout=30)


def ask(gateway: GatewayServer, key: str = MEMBER) -> httpx.Response:
    return httpx.post(gateway.base_url + "/v1/messages", headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
                      json={"model": "gpt-4o", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]},
                      timeout=30)


def test_budgets_created_through_the_admin_api_apply_at_once(upstream: FakeUpstream, database_url: str) -> None:
    with GatewayServer(config(upstream, database_url), plugins=[Keys()]) as gateway:
        web = {"name": "web-daily", "scope": "team", "match": "web", "usd": 0.0015, "period": "daily"}
        assert call(gateway, "POST", "/admin/budgets", LEAD, {**web, "match": "ops"}).status_code == 403
        assert call(gateway, "POST", "/admin/budgets", MEMBER, web).status_code == 403
        bad = call(gateway, "POST", "/admin/budgets", ADMIN, {**web, "usd": "lots", "perod": "daily"})
        assert bad.status_code == 400 and "budget.usd" in bad.text and "did you mean 'period'" in bad.text
        created = call(gateway, "POST", "/admin/budgets", LEAD, web)
        assert created.status_code == 201 and created.json()["budget"]["source"] == "database"
        assert call(gateway, "POST", "/admin/budgets", ADMIN, web).status_code == 409
        assert ask(gateway).status_code == 200
        assert ask(gateway).status_code == 402  # 0.0006 spent: the next worst case (0.001) does not fit
        listed = {b["name"]: b for b in call(gateway, "GET", "/admin/budgets", ADMIN).json()["budgets"]}
        assert listed["web-daily"]["spent_usd"] == pytest.approx(ANSWER_COST)
        raised = call(gateway, "PUT", "/admin/budgets/web-daily", LEAD, {**web, "usd": 1.0})
        assert raised.status_code == 200
        assert ask(gateway).status_code == 200
        assert call(gateway, "DELETE", "/admin/budgets/web-daily", ADMIN).status_code == 200
        assert call(gateway, "DELETE", "/admin/budgets/web-daily", ADMIN).status_code == 404
        assert "web-daily" not in {b["name"] for b in call(gateway, "GET", "/admin/budgets", ADMIN).json()["budgets"]}


def test_spend_is_rebuilt_from_the_ledger_after_a_restart_on_memory_state(
    upstream: FakeUpstream, database_url: str,
) -> None:
    budgets = {"limits": [{"name": "rebuilt", "scope": "team", "match": "rebuild", "usd": 0.0015, "period": "monthly"}]}
    settings = config(upstream, database_url, budgets=budgets, state={"backend": "memory"})
    with GatewayServer(settings, plugins=[Keys()]) as first:
        assert ask(first, OTHER).status_code == 200  # the ledger's row is flushed when the gateway stops
        assert ask(first, CAPPED).status_code == 200  # a key's own budget
    with GatewayServer(settings, plugins=[Keys()]) as second:
        listed = {b["name"]: b for b in call(second, "GET", "/admin/budgets", ADMIN).json()["budgets"]}
        assert listed["rebuilt"]["spent_usd"] >= ANSWER_COST - 1e-9
        assert ask(second, OTHER).status_code == 402
        assert ask(second, CAPPED).status_code == 402

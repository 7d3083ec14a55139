"""Every admin route, for every role, as an attacker would try it (SQLite and PostgreSQL).

The routes come from ``GET /admin/openapi.json``, so a route added later is walked too:
without a key it must be a 401 (unless listed as public on purpose), a member may only
reach the routes listed as its own, a team_admin of team ``red`` pointed at team ``blue``
(by path id, by filter, by body, by export) must never get blue's data, and an admin is
never refused. Then the answers themselves: a team admin's usage, analytics and exports
hold its team only, a member's usage its own key only, key moves and role changes are
audited and bounded by role.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clasp_gateway.testing import GatewayServer, config_from, load_module

support = load_module(Path(__file__).with_name("analytics_support.py"), "clasp_analytics_test_support")
T0 = support.T0
WHOLE = {"since": str(T0), "until": str(T0 + 10 * 86400)}

KEYS = {
    "admin": "roles-admin-key-Q8m2Nv5Lx0Tz7Wc",
    "red_lead": "roles-red-lead-key-Hb4Kp9Rz2Ys6",
    "red_dev": "roles-red-dev-key-Mn3Jt7Vx1Qw5E",
    "lone_lead": "roles-lone-lead-key-Gc8Fh2Lk6Pd0",
}

PUBLIC = {
    ("GET", "/admin/login"), ("GET", "/admin/oidc/callback"), ("POST", "/admin/logout"),
    ("POST", "/admin/dashboard/login"), ("POST", "/admin/dashboard/logout"),
    ("GET", "/admin/dashboard/assets/{name}"),
}
"""Routes anyone may call: signing in and out, and the dashboard's static assets."""

MEMBER = {("GET", "/admin/me"), ("GET", "/admin/usage"), ("GET", "/admin/reports/spend"),
          ("GET", "/admin/reports/projection"), ("GET", "/admin/reports/savings")}
"""Routes a member may call (each narrowed to its own key)."""

TEAM = {
    ("GET", "/admin/openapi.json"), ("POST", "/admin/keys"), ("GET", "/admin/keys"), ("GET", "/admin/keys/{key_id}"),
    ("PATCH", "/admin/keys/{key_id}"), ("POST", "/admin/keys/{key_id}/revoke"),
    ("POST", "/admin/keys/{key_id}/assign"), ("GET", "/admin/teams"), ("GET", "/admin/teams/{name}"),
    ("GET", "/admin/budgets"), ("POST", "/admin/budgets"), ("PUT", "/admin/budgets/{name}"),
    ("DELETE", "/admin/budgets/{name}"), ("GET", "/admin/dashboard"), ("GET", "/admin/cache"),
    ("DELETE", "/admin/cache"), ("POST", "/admin/cache/clear"),
    *{("GET", f"/admin/analytics/{name}") for name in
      ("summary", "timeseries", "breakdown", "dimensions", "quality", "cohorts", "export")},
}
"""Routes a team_admin may call (each narrowed to its own team). Every other route is
admin only: a new route is assumed to be, and this test fails until it is listed here
if it lets others in."""

BLUE_MARKERS = ("bob", "blue dev", "blue-monthly")
"""What only team blue's records contain (its ledger rows' key name, its key, its budget)."""


def headers(who: str | None) -> dict[str, str]:
    return {"x-api-key": KEYS[who]} if who else {}


@pytest.fixture(scope="module")
def gw(database_url: str) -> Iterator[GatewayServer]:
    config = config_from({
        "keys": [{"key": KEYS["admin"], "name": "ops", "role": "admin"},
                 {"key": KEYS["red_lead"], "name": "red lead", "team": "red", "role": "team_admin"},
                 {"key": KEYS["red_dev"], "name": "red dev", "team": "red"},
                 {"key": KEYS["lone_lead"], "name": "lone lead", "role": "team_admin"}],
        "storage": {"url": database_url},
        # The walk sends a wrong key to every route from one address: the failed-key
        # throttle (shell/guard.py) would answer 429 once it passed 30 a minute.
        "server": {"auth_failures_per_minute": 100_000},
        "budgets": {"limits": [{"name": "per-team", "scope": "team", "usd": 50, "period": "total"}]},
    })
    with GatewayServer(config) as server:
        support.seed_into(database_url)
        yield server


def call(gw: GatewayServer, method: str, path: str, who: str | None, **kw: Any) -> httpx.Response:
    return httpx.request(method, gw.base_url + path, headers=headers(who), timeout=30, **kw)


@pytest.fixture(scope="module")
def world(gw: GatewayServer) -> dict[str, Any]:
    for team in ("red", "blue"):
        assert call(gw, "POST", "/admin/teams", "admin", json={"name": team}).status_code == 201
    blue = call(gw, "POST", "/admin/keys", "admin", json={"name": "blue dev", "team": "blue"}).json()
    red = call(gw, "POST", "/admin/keys", "admin", json={"name": "red bot", "team": "red"}).json()
    budget = call(gw, "POST", "/admin/budgets", "admin",
                  json={"name": "blue-monthly", "scope": "team", "match": "blue", "usd": 10, "period": "monthly"})
    assert budget.status_code == 201, budget.text
    return {"blue_key": blue["id"], "red_key": red["id"]}


def routes(gw: GatewayServer) -> list[tuple[str, str]]:
    document = call(gw, "GET", "/admin/openapi.json", "admin").json()
    found = [(method.upper(), path) for path, ops in document["paths"].items() for method in ops
             if method in ("get", "post", "put", "patch", "delete")]
    assert len(found) > 30, found
    return sorted(found)


def against_blue(route: tuple[str, str], world: dict[str, Any]) -> dict[str, Any]:
    """The request aimed at team blue's things: path ids, a team filter, a body."""
    method, path = route
    params = {"key_id": world["blue_key"], "name": "blue-monthly" if "budgets" in path else "blue"}
    concrete = re.sub(r"{(\w+)(?::\w+)?}", lambda m: params.get(m.group(1), "blue"), path)
    request: dict[str, Any] = {"params": {"team": "blue", **WHOLE}}
    if method in ("POST", "PUT", "PATCH"):
        request["json"] = {"name": "blue-monthly" if "budgets" in path else "x", "team": "blue", "scope": "team",
                           "match": "blue", "usd": 1000, "period": "monthly", "role": "member", "key": "nope"}
    return {"path": concrete, **request}


def test_every_route_for_every_role(gw: GatewayServer, world: dict[str, Any]) -> None:
    walked = routes(gw)
    problems: list[str] = []
    for route in walked:
        method, _ = route
        attempt = against_blue(route, world)
        path = attempt.pop("path")
        for who in (None, "red_dev", "red_lead", "lone_lead"):
            answer = call(gw, method, path, who, **attempt)
            status, text = answer.status_code, answer.text
            where = f"{method} {path} as {who or 'nobody'}: {status}"
            if status >= 500:
                problems.append(f"{where} (a server error)")
            elif route in PUBLIC:
                continue
            elif who is None:
                if status != 401:
                    problems.append(f"{where}, expected 401")
            elif who == "red_dev" and route not in MEMBER:
                if status != 403:
                    problems.append(f"{where}, expected 403")
            elif who in ("red_lead", "lone_lead") and route not in TEAM | MEMBER:
                if status != 403:
                    problems.append(f"{where}, expected 403")
            elif status < 400 and any(marker in text for marker in BLUE_MARKERS):
                problems.append(f"{where} shows team blue's records")
            if who and status < 300 and "application/json" in answer.headers.get("content-type", ""):
                assert not any(k in text for k in KEYS.values()), where
    assert not problems, "\n".join(problems)
    # and the admin is never refused on them
    for method, path in walked:
        if (method, path) in PUBLIC or method != "GET":
            continue
        attempt = against_blue((method, path), world)
        status = call(gw, method, attempt.pop("path"), "admin", **attempt).status_code
        assert status not in (401, 403) and status < 500, (method, path, status)


def test_a_team_admin_sees_its_team_only(gw: GatewayServer, world: dict[str, Any]) -> None:
    red_rows = [r for r in support.seed_rows() if r["team"] == "red"]
    summary = call(gw, "GET", "/admin/analytics/summary", "red_lead", params=WHOLE).json()
    assert summary["totals"]["requests"] == len(red_rows)
    assert call(gw, "GET", "/admin/analytics/summary", "red_lead", params={**WHOLE, "team": "blue"}).status_code == 403
    assert call(gw, "GET", "/admin/analytics/summary", "lone_lead", params=WHOLE).status_code == 403
    export = call(gw, "GET", "/admin/analytics/export", "red_lead", params={**WHOLE, "format": "csv"})
    assert export.status_code == 200
    teams = {row["team"] for row in csv.DictReader(io.StringIO(export.text))}
    assert teams == {"red"}, teams
    usage = call(gw, "GET", "/admin/usage", "red_lead", params={**WHOLE, "by": "team"}).json()
    assert {g["team"] for g in usage["groups"]} <= {"red"}
    assert call(gw, "GET", f"/admin/keys/{world['blue_key']}", "red_lead").status_code == 404
    assert call(gw, "GET", "/admin/keys", "red_lead", params={"team": "blue"}).status_code == 403
    budgets = call(gw, "GET", "/admin/budgets", "red_lead").json()["budgets"]
    assert {b["subject"] for b in budgets if b["scope"] == "team"} == {"red"}


def test_a_member_sees_its_own_usage_only(gw: GatewayServer) -> None:
    total = call(gw, "GET", "/admin/usage", "red_dev", params=WHOLE).json()["total"]
    assert total["requests"] == 0  # the seeded rows are other keys'
    assert call(gw, "GET", "/admin/usage", "admin", params=WHOLE).json()["total"]["requests"] == len(support.seed_rows())


def test_per_subject_budgets_are_listed_from_the_records(gw: GatewayServer, world: dict[str, Any]) -> None:
    listed = call(gw, "GET", "/admin/budgets", "admin").json()
    subjects = {b["subject"]: b for b in listed["budgets"] if b["name"] == "per-team"}
    assert {"red", "blue", "green"} <= set(subjects), subjects  # green: only in the ledger
    assert subjects["red"]["limit_usd"] == 50 and listed["truncated"] is False
    seen_only = call(gw, "GET", "/admin/budgets", "admin", params={"subjects": "seen"}).json()["budgets"]
    assert "green" not in {b["subject"] for b in seen_only if b["name"] == "per-team"}


def test_moving_keys_and_roles(gw: GatewayServer, world: dict[str, Any]) -> None:
    red_key = world["red_key"]
    assign = f"/admin/keys/{red_key}/assign"
    assert call(gw, "POST", assign, "red_lead", json={"role": "admin"}).status_code == 403
    assert call(gw, "POST", assign, "red_lead", json={"team": "blue"}).status_code == 403
    assert call(gw, "POST", assign, "red_dev", json={"role": "team_admin"}).status_code == 403
    assert call(gw, "POST", assign, "red_lead", json={}).status_code == 400
    promoted = call(gw, "POST", assign, "red_lead", json={"role": "team_admin"})
    assert promoted.status_code == 200 and promoted.json()["role"] == "team_admin"
    assert call(gw, "POST", assign, "admin", json={"team": "nowhere"}).status_code == 404
    moved = call(gw, "POST", assign, "admin", json={"team": "blue", "role": "member"})
    assert moved.status_code == 200 and (moved.json()["team"], moved.json()["role"]) == ("blue", "member")
    assert call(gw, "GET", f"/admin/keys/{red_key}", "red_lead").status_code == 404  # blue's now
    audit = call(gw, "GET", "/admin/audit", "admin", params={"action": "key.assign"}).json()["data"]
    assert len(audit) == 2
    latest = audit[0]
    assert latest["target"] == red_key and latest["actor"]["name"] == "ops"
    assert latest["details"]["before"] == {"team": "red", "role": "team_admin"}
    assert latest["details"]["after"] == {"team": "blue", "role": "member"}

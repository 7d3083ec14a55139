"""A key's team and role changed in place (``PATCH /admin/keys/{id}``, ``clasp keys
update``) with two gateway processes on one database (SQLite, then PostgreSQL) and one
Redis: replica B, whose lookup cache would keep the key for an hour, sees the change
within a second, and the key keeps working throughout."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from clasp_gateway.testing import GatewayProcesses, RedisServer

ADMIN_KEY = "admin-static-key-Uu62mNw0pLx3"
ENV = {"CLASP_LOAD_PLUGINS": "budgets_keys"}


@pytest.fixture(scope="module")
def replicas(database_url: str, redis_server: RedisServer) -> Iterator[GatewayProcesses]:
    with redis_server.namespace() as ns:
        config: dict[str, Any] = {
            "server": {"log_level": "info"},
            "keys": [{"key": ADMIN_KEY, "name": "ops", "role": "admin"}],
            "models": {},
            "storage": {"url": database_url},
            "state": {"backend": "redis", "url": ns.url, "prefix": ns.prefix},
            "virtual_keys": {"cache": {"ttl": "1h"}},  # only an invalidation can make B see the change
        }
        with GatewayProcesses(config, count=2, env=ENV) as processes:
            yield processes


def admin(gateway: Any, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, gateway.base_url + path, headers={"x-api-key": ADMIN_KEY}, timeout=30, **kw)


def me(gateway: Any, key: str) -> dict[str, Any]:
    answer = httpx.get(gateway.base_url + "/admin/me", headers={"x-api-key": key}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def seen_within(gateway: Any, key: str, want: dict[str, Any], seconds: float = 1.0) -> dict[str, Any]:
    """``/admin/me`` on ``gateway`` once it shows ``want`` (fails after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while True:
        found = me(gateway, key)
        if all(found.get(k) == v for k, v in want.items()):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"after {seconds}s replica still shows {found} (wanted {want})")
        time.sleep(0.02)


def test_a_team_and_role_change_on_one_replica_applies_on_the_other(replicas: GatewayProcesses) -> None:
    a, b = replicas[0], replicas[1]
    for name, body in (("north", {"rpm": 11}), ("south", {"rpm": 22})):
        assert admin(a, "POST", "/admin/teams", json={"name": name, **body}).status_code == 201
    made = admin(a, "POST", "/admin/keys", json={"name": "wanderer", "team": "north"}).json()
    key = made["key"]
    before = me(b, key)  # cached on B now, for an hour
    assert before["team"] == "north" and before["role"] == "member" and before["effective_policy"]["rpm"] == 11
    changed = admin(a, "PATCH", f"/admin/keys/{made['id']}", json={"team": "south", "role": "team_admin"})
    assert changed.status_code == 200, changed.text
    after = seen_within(b, key, {"team": "south", "role": "team_admin"})
    assert after["effective_policy"]["rpm"] == 22
    listed = httpx.get(b.base_url + "/admin/keys", headers={"x-api-key": key}, timeout=30)
    assert listed.status_code == 200 and {k["team"] for k in listed.json()["data"]} == {"south"}
    audit = admin(b, "GET", "/admin/audit", params={"action": "key.update", "target": made["id"]}).json()["data"]
    assert audit[0]["details"]["before"] == {"team": "north", "role": "member"}


def test_clasp_keys_update_reaches_running_replicas(replicas: GatewayProcesses) -> None:
    assert admin(replicas[0], "POST", "/admin/teams", json={"name": "east", "rpm": 33}).status_code == 201
    made = admin(replicas[0], "POST", "/admin/keys", json={"name": "cli-mover", "rpm": 5}).json()
    key = made["key"]
    assert me(replicas[1], key)["team"] is None
    env = {**os.environ, **ENV, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run([sys.executable, "-m", "clasp_gateway.cli", "keys", "update", "cli-mover", "--team", "east",
                           "--role", "team_admin", "--clear", "rpm", "--config", str(replicas.config_path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "team east" in done.stderr and "role team_admin" in done.stderr and key not in done.stderr
    after = seen_within(replicas[1], key, {"team": "east", "role": "team_admin"})
    assert after["effective_policy"]["rpm"] == 33  # the key's own limit cleared: the team's
    nothing = subprocess.run([sys.executable, "-m", "clasp_gateway.cli", "keys", "update", made["id"],
                              "--config", str(replicas.config_path)], capture_output=True, text=True, env=env,
                             timeout=120)
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr

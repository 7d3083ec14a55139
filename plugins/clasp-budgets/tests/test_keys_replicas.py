"""Two gateway processes on one PostgreSQL database and one Redis: a key revoked (or a
team changed) through replica A is refused by replica B within a second, though B's
lookup cache would keep it for an hour; the CLI's changes reach running replicas too."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from clasp_gateway.testing import GatewayProcesses, RedisServer

ADMIN_KEY = "admin-static-key-Rr51mNw0pLx9"
ENV = {"CLASP_LOAD_PLUGINS": "budgets_keys"}


@pytest.fixture(scope="module")
def replicas(postgres_url: str, redis_server: RedisServer) -> Iterator[GatewayProcesses]:
    with redis_server.namespace() as ns:
        config: dict[str, Any] = {
            "server": {"log_level": "info"},
            "keys": [{"key": ADMIN_KEY, "name": "ops", "role": "admin"}],
            "models": {},
            "storage": {"url": postgres_url},
            "state": {"backend": "redis", "url": ns.url, "prefix": ns.prefix},
            "virtual_keys": {"cache": {"ttl": "1h"}},  # only an invalidation can make B forget a key
        }
        with GatewayProcesses(config, count=2, env=ENV) as processes:
            yield processes


def admin(gateway: Any, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, gateway.base_url + path, headers={"x-api-key": ADMIN_KEY}, timeout=30, **kw)


def status(gateway: Any, key: str) -> int:
    return httpx.get(gateway.base_url + "/v1/models", headers={"x-api-key": key}, timeout=30).status_code


def refused_within(gateway: Any, key: str, seconds: float, expected: int = 401) -> float | None:
    """Seconds until ``gateway`` answers ``key`` with ``expected`` (None: not within ``seconds``)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if status(gateway, key) == expected:
            return time.monotonic() - start
        time.sleep(0.02)
    return None


def test_a_revocation_on_one_replica_is_refused_on_the_other(replicas: GatewayProcesses) -> None:
    a, b = replicas[0], replicas[1]
    made = admin(a, "POST", "/admin/keys", json={"name": "roaming"}).json()
    key = made["key"]
    assert status(b, key) == 200 and status(a, key) == 200  # both have it cached now
    assert admin(a, "POST", f"/admin/keys/{made['id']}/revoke").status_code == 200
    took = refused_within(b, key, 1.0)
    assert took is not None, "replica B still accepts a key revoked on replica A after 1 s"
    answer = httpx.get(b.base_url + "/v1/models", headers={"x-api-key": key}, timeout=30)
    assert "revoked" in answer.json()["error"]["message"]
    for gateway in replicas:
        assert key not in gateway.log_text()


def test_a_team_change_on_one_replica_applies_on_the_other(replicas: GatewayProcesses) -> None:
    a, b = replicas[0], replicas[1]
    assert admin(a, "POST", "/admin/teams", json={"name": "travellers"}).status_code == 201
    key = admin(a, "POST", "/admin/keys", json={"name": "t", "team": "travellers"}).json()["key"]
    me = httpx.get(b.base_url + "/admin/me", headers={"x-api-key": key}, timeout=30).json()
    assert me["effective_policy"]["rpm"] is None
    assert admin(a, "PATCH", "/admin/teams/travellers", json={"rpm": 7}).status_code == 200
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        me = httpx.get(b.base_url + "/admin/me", headers={"x-api-key": key}, timeout=30).json()
        if me["effective_policy"]["rpm"] == 7:
            break
        time.sleep(0.02)
    assert me["effective_policy"]["rpm"] == 7


def test_the_cli_reaches_running_replicas_through_redis(replicas: GatewayProcesses) -> None:
    config = replicas.config_path
    env = {**os.environ, **ENV, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    made = subprocess.run([sys.executable, "-m", "clasp_gateway.cli", "keys", "create", "--name", "from-cli",
                           "--config", str(config)], capture_output=True, text=True, env=env, timeout=120)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert status(replicas[1], key) == 200
    revoked = subprocess.run([sys.executable, "-m", "clasp_gateway.cli", "keys", "revoke", "from-cli",
                              "--config", str(config)], capture_output=True, text=True, env=env, timeout=120)
    assert revoked.returncode == 0, revoked.stderr
    assert refused_within(replicas[1], key, 1.0) is not None
    assert yaml.safe_load(config.read_text())["virtual_keys"]["cache"]["ttl"] == "1h"

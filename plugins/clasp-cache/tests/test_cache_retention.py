"""Cached answers deleted by team or key on demand and by age by the retention job
(``register_data_stores``: ``cache``), on the memory backend and on a real Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from clasp_gateway.testing import FakeClock, FakeUpstream, GatewayServer, RedisServer, config_from

KEYS = [{"key": "key-alpha-0123456789abcdef", "name": "alpha", "team": "alpha"},
        {"key": "key-beta-0123456789abcdefg", "name": "beta", "team": "beta"},
        {"key": "key-admin-0123456789abcdef", "name": "root", "role": "admin"}]
ADMIN = {"x-api-key": "key-admin-0123456789abcdef"}


@pytest.fixture(params=["memory", "redis"])
def cache_section(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    if request.param == "memory":
        yield {"ttl": "2d"}
        return
    redis: RedisServer = request.getfixturevalue("redis_server")
    with redis.namespace() as ns:
        yield {"ttl": "2d", "backend": "redis", "backend_options": {"url": ns.url, "prefix": ns.prefix}}


def chat(server: GatewayServer, content: str, key: str) -> httpx.Response:
    return httpx.post(server.base_url + "/v1/chat/completions", headers={"x-api-key": key}, timeout=30,
                      json={"model": "gpt-4o", "messages": [{"role": "user", "content": content}]})


def cached(server: GatewayServer, content: str, key: str) -> None:
    """Ask until the answer comes from the cache (the store is written after the answer)."""
    chat(server, content, key)
    deadline = time.monotonic() + 5
    while chat(server, content, key).headers.get("x-clasp-cache") != "exact":
        assert time.monotonic() < deadline, "the answer was never cached"
        time.sleep(0.02)


def test_cached_answers_go_by_team_and_by_age(fake_upstream: FakeUpstream, cache_section: dict[str, Any]) -> None:
    config = config_from({
        "keys": KEYS, "cache": cache_section, "retention": {"max_age": {"cache": "1d"}},
        "models": {"*": [{"model": "openai/gpt-4o", "api_base": fake_upstream.base_url, "api_key": "sk-up-123456789"}]},
    })
    with GatewayServer(config) as server:
        runtime = server.gateway.pm.get_plugin("cache.runtime")
        clock = FakeClock(time.time())
        runtime.clock = runtime.backend.clock = clock
        server.gateway.pm.get_plugin("clasp_gateway.retention").clock = clock  # one clock for "before"
        alpha, beta = KEYS[0]["key"], KEYS[1]["key"]
        cached(server, "one", alpha)
        cached(server, "two", alpha)
        cached(server, "three", beta)
        answer = httpx.post(server.base_url + "/admin/data/delete", headers=ADMIN, json={"team": "alpha"})
        assert answer.status_code == 200 and answer.json()["deleted"]["cache"] == 2
        assert chat(server, "one", alpha).headers["x-clasp-cache"] == "miss"
        assert chat(server, "three", beta).headers["x-clasp-cache"] == "exact"
        # By age: 30 hours later the job deletes what was created more than a day ago.
        clock.now += 30 * 3600
        cached(server, "four", beta)  # created now: stays
        rounds = httpx.post(server.base_url + "/admin/data/retention", headers=ADMIN).json()
        assert rounds["deleted"]["cache"] >= 2  # "three", "one" (cached again above)
        assert chat(server, "three", beta).headers["x-clasp-cache"] == "miss"
        assert chat(server, "four", beta).headers["x-clasp-cache"] == "exact"

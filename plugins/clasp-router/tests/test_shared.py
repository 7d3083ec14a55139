"""Replicas share measured latency through the gateway's state (a real Redis)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from clasp_gateway.testing import GATEWAY_KEY, FakeUpstream, RedisServer, Text, redis_server


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def test_a_replica_ranks_by_what_another_measured(
    start: Callable[..., Any], redis: RedisServer, kit: Any
) -> None:
    with redis.namespace() as ns, FakeUpstream("openai") as slow, FakeUpstream("openai") as fast:
        slow.script = lambda body, rec: Text("from slow", delay=0.2)
        fast.script = lambda body, rec: Text("from fast")
        models = {"m": [kit.deployment(slow, "slow"), kit.deployment(fast, "fast")]}
        state = {"backend": "redis", "url": ns.url, "prefix": ns.prefix}
        a = start(models, state=state)
        b = start(models, state=state)
        assert a.text(a.chat("m")) == "from slow"  # chain order: replica A measures slow
        rows = {d["id"]: d for d in httpx.get(b.base_url + "/-/catalogue", headers={"x-api-key": GATEWAY_KEY},
                                              timeout=5).json()["deployments"]}
        assert rows["slow"]["ttfb_ms"] is not None and rows["slow"]["ttfb_ms"] >= 150  # B never called it
        assert rows["fast"]["ttfb_ms"] is None

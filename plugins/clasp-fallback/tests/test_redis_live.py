"""Breaker state shared by two gateways through Redis, and serving through Redis outages."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.fakes import Error, FakeUpstream, Text
from tests.support import free_port


def shared(redis_url: str, key_prefix: str, **breaker: Any) -> dict[str, Any]:
    return {
        "retry": {"attempts": 0},
        "breaker": {"failures": 2, "cooldown": 0.5, "redis_url": redis_url, "key_prefix": key_prefix, **breaker},
    }


def test_two_gateways_share_one_breaker(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream], redis_url: str, key_prefix: str
) -> None:
    primary, secondary = up
    primary.script = lambda body, rec: Error(500)
    # A 1 s cooldown: the requests below must fall inside it, even on a busy machine.
    first = serve(kit.pair(primary, secondary), fallback=shared(redis_url, key_prefix, cooldown=1.0))
    second = serve(kit.pair(primary, secondary), fallback=shared(redis_url, key_prefix, cooldown=1.0))
    assert first.status()["breaker_state"] == f"redis ({redis_url})"

    for _ in range(2):
        assert first.text(first.chat()) == "from secondary"
    assert kit.chat_requests(primary) == 2
    # The second gateway never saw primary fail, yet it skips it.
    for _ in range(5):
        assert second.text(second.chat()) == "from secondary"
    assert kit.chat_requests(primary) == 2
    assert second.status()["by_id"]["primary"]["state"] == "open"
    assert second.events.kind("skip")[0]["deployment"] == "primary"

    # Recovery seen through the second gateway closes the breaker for the first.
    primary.script = lambda body, rec: Text("primary is back")
    time.sleep(1.05)
    assert second.text(second.chat()) == "primary is back"
    assert first.status()["by_id"]["primary"]["state"] == "closed"
    assert first.text(first.chat()) == "primary is back"


def test_one_probe_across_replicas(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream], redis_url: str, key_prefix: str
) -> None:
    primary, secondary = up
    primary.script = lambda body, rec: Error(500)
    gateways = [serve(kit.pair(primary, secondary), fallback=shared(redis_url, key_prefix)) for _ in range(2)]
    gateways[0].chat(), gateways[0].chat()
    primary.script = lambda body, rec: Text("slow probe", delay=0.4)
    time.sleep(0.55)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        texts = list(pool.map(lambda i: gateways[i % 2].text(gateways[i % 2].chat()), range(6)))
    assert texts.count("slow probe") == 1


def test_a_dead_redis_does_not_stop_serving(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream], key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary, secondary = up
    primary.script = lambda body, rec: Error(500)
    caplog.set_level(logging.INFO, logger="clasp.fallback")
    dead = f"redis://:s3cret-redis-pw@127.0.0.1:{free_port()}/0"
    gw = serve(kit.pair(primary, secondary), fallback=shared(dead, key_prefix, cooldown=30))
    started = time.monotonic()
    for _ in range(10):
        assert gw.text(gw.chat()) == "from secondary"
    assert time.monotonic() - started < 3
    assert kit.chat_requests(primary) == 2  # the local breaker opened and held
    status = gw.status()
    assert status["breaker_state"].startswith("memory (Redis at redis://:***@127.0.0.1:")
    outage_logs = [r for r in caplog.records if r.getMessage().startswith("Redis at") and "failed" in r.getMessage()]
    assert len(outage_logs) == 1
    assert "s3cret-redis-pw" not in caplog.text


def test_serving_continues_while_redis_restarts(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream], key_prefix: str,
    caplog: pytest.LogCaptureFixture, own_redis: Any,
) -> None:
    primary, secondary = up
    caplog.set_level(logging.INFO, logger="clasp.fallback")
    gw = serve(kit.pair(primary, secondary), fallback=shared(own_redis.url, key_prefix))
    assert gw.text(gw.chat()) == "ok"
    own_redis.stop()
    primary.script = lambda body, rec: Error(500)
    for _ in range(4):
        assert gw.text(gw.chat()) == "from secondary"  # local breakers meanwhile
    assert gw.status()["breaker_state"].startswith("memory (")
    own_redis.start()
    time.sleep(2.1)  # the plugin retries Redis every 2 s after a failure
    primary.script = lambda body, rec: Error(500)
    for _ in range(2):
        gw.chat()
    assert gw.status()["breaker_state"] == f"redis ({own_redis.url})"
    assert any("reachable again" in r.getMessage() for r in caplog.records)

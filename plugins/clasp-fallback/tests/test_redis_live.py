"""Breaker state shared by gateway processes (Redis, or one SQLite file for the workers of
one gateway), and serving through Redis outages."""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from clasp_gateway.testing import Error, FakeClock, FakeUpstream, Text, free_port


def shared(redis_url: str, key_prefix: str, **breaker: Any) -> dict[str, Any]:
    return {
        "retry": {"attempts": 0},
        "breaker": {"failures": 2, "cooldown": 0.5, "redis_url": redis_url, "key_prefix": key_prefix, **breaker},
    }


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def probe_due(replicas: Any, index: int = 0) -> bool:
    """Whether the open breaker of "primary" lets its probe through now."""
    return bool(replicas.status(index)["by_id"]["primary"]["breaker"]["probe_in_s"] == 0)


def test_two_gateway_processes_share_one_breaker_through_the_core_state(
    replicas: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream], redis_ns: Any
) -> None:
    primary, secondary = up
    primary.script = lambda body, rec: Error(500)
    gateways = replicas(
        kit.pair(primary, secondary), count=2,
        fallback={"retry": {"attempts": 0}, "breaker": {"failures": 2, "cooldown": 2}},
        state={"backend": "redis", "url": redis_ns.url, "prefix": redis_ns.prefix},
    )
    assert gateways.status(0)["breaker_state"] == f"redis ({redis_ns.url})"
    for _ in range(2):
        assert gateways.text(gateways.chat(0)) == "from secondary"
    assert kit.chat_requests(primary) == 2
    # The second gateway (another process) never saw primary fail, yet it skips it.
    for _ in range(5):
        assert gateways.text(gateways.chat(1)) == "from secondary"
    assert kit.chat_requests(primary) == 2
    entry = gateways.status(1)["by_id"]["primary"]
    assert entry["state"] == "open" and entry["attempts"]["skipped_open_breaker"] == 5
    assert f"{redis_ns.prefix}fallback:breaker:primary" in redis_ns.keys()

    # Recovery seen through the second gateway closes the breaker for the first.
    primary.script = lambda body, rec: Text("primary is back")
    wait_for(lambda: probe_due(gateways, 1))
    assert gateways.text(gateways.chat(1)) == "primary is back"
    assert gateways.status(0)["by_id"]["primary"]["state"] == "closed"
    assert gateways.text(gateways.chat(0)) == "primary is back"


def test_one_probe_across_processes_with_the_plugins_own_redis(
    replicas: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream], redis_ns: Any
) -> None:
    primary, secondary = up
    primary.script = lambda body, rec: Error(500)
    # breaker.redis_url: the per-plugin override, key_prefix its whole key prefix.
    gateways = replicas(kit.pair(primary, secondary), count=2,
                        fallback=shared(redis_ns.url, redis_ns.prefix, cooldown=1))
    gateways.chat(0), gateways.chat(0)
    assert f"{redis_ns.prefix}breaker:primary" in redis_ns.keys()
    primary.script = lambda body, rec: Text("slow probe", delay=0.4)
    wait_for(lambda: probe_due(gateways, 0))
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        texts = list(pool.map(lambda i: gateways.text(gateways.chat(i % 2)), range(6)))
    assert texts.count("slow probe") == 1 and texts.count("from secondary") == 5


def test_workers_of_one_gateway_share_breakers_without_redis(
    replicas: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]
) -> None:
    """server.workers: 2 and no state: section: the workers share one SQLite file, so
    every worker reports (and acts on) the same breaker, whichever one saw the failures."""
    primary, secondary = up
    primary.script = lambda body, rec: Error(500)
    gateway = replicas(kit.pair(primary, secondary), server={"workers": 2},
                       fallback={"retry": {"attempts": 0}, "breaker": {"failures": 2, "cooldown": 60}})
    for _ in range(2):  # one kept-alive connection: both failures reach the same worker
        assert gateway.text(gateway.chat(0)) == "from secondary"
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(300):  # new connections until both workers have answered
        status = gateway.status(0, new_connection=True)
        seen[status["pid"]] = status
        if len(seen) == 2:
            break
    assert len(seen) == 2, "only one worker answered"
    for status in seen.values():
        assert status["breaker_state"].startswith("sqlite (")
        assert status["by_id"]["primary"]["state"] == "open"
        assert status["by_id"]["primary"]["breaker"]["reason"] == "2 consecutive failures"
    for _ in range(10):  # whichever worker answers skips primary
        response = gateway.http.post(gateway.urls[0] + "/v1/chat/completions", headers={"connection": "close"},
                                     json={"model": "chain", "messages": [{"role": "user", "content": "hi"}]})
        assert gateway.text(response) == "from secondary"
    assert kit.chat_requests(primary) == 2


def test_a_dead_redis_does_not_stop_serving(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream], key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary, secondary = up
    primary.script = lambda body, rec: Error(500)
    caplog.set_level(logging.INFO, logger="clasp.fallback")
    dead = f"redis://:s3cret-redis-pw@127.0.0.1:{free_port()}/0"
    gw = serve(kit.pair(primary, secondary), fallback=shared(dead, key_prefix, cooldown=30))
    for _ in range(10):
        assert gw.text(gw.chat()) == "from secondary"
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
    # The plugin leaves a failed Redis alone for 2 s (then tries again): on a clock moved here.
    pause = gw.server.app.starlette_app.state.fallback.own_state._outage.clock = FakeClock()
    assert gw.text(gw.chat()) == "ok"
    own_redis.stop()
    primary.script = lambda body, rec: Error(500)
    for _ in range(4):
        assert gw.text(gw.chat()) == "from secondary"  # local breakers meanwhile
    assert gw.status()["breaker_state"].startswith("memory (")
    own_redis.restart()
    assert gw.text(gw.chat()) == "from secondary" and gw.status()["breaker_state"].startswith("memory (")  # paused
    pause.advance(2.01)
    primary.script = lambda body, rec: Error(500)
    for _ in range(2):
        gw.chat()
    assert gw.status()["breaker_state"] == f"redis ({own_redis.url})"
    assert any("reachable again" in r.getMessage() for r in caplog.records)

"""The breaker state machine, run identically against the memory and the Redis store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from clasp_fallback.breaker import BreakerStore, MemoryBreakers, RedisBreakers
from clasp_fallback.settings import BreakerSettings
from clasp_fallback.shared import SharedRedis, safe_url

POLICY = BreakerSettings(failures=3, error_rate=0.5, min_requests=6, window=30, cooldown=0.2,
                         max_cooldown=0.8, probe_timeout=0.3)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_url: str, key_prefix: str) -> AsyncIterator[BreakerStore]:
    policy = BreakerSettings(**{**{f: getattr(POLICY, f) for f in POLICY.__slots__}, "key_prefix": key_prefix})  # type: ignore[attr-defined]
    if request.param == "memory":
        yield MemoryBreakers(policy)
        return
    breakers = RedisBreakers(policy, SharedRedis(redis_url, timeout=0.5))
    yield breakers
    await breakers.redis.client.delete(key_prefix + "breaker:d1")
    await breakers.close()


async def fail(store: BreakerStore, times: int, key: str = "d1") -> None:
    for _ in range(times):
        await store.report(key, False, probe=False)


async def test_consecutive_failures_open_then_one_probe_closes(store: BreakerStore) -> None:
    assert (await store.acquire("d1")).allowed
    await fail(store, 2)
    await store.report("d1", True, probe=False)  # a success resets the consecutive count
    await fail(store, 2)
    assert (await store.view("d1")).state == "closed"
    await fail(store, 1)
    view = await store.view("d1")
    assert view.state == "open" and view.reason == "3 consecutive failures" and 0 < view.reopens_in <= 0.2 + 1e-6
    assert store.peek("d1").state == "open"
    assert not (await store.acquire("d1")).allowed

    await asyncio.sleep(0.25)
    tickets = [await store.acquire("d1") for _ in range(3)]
    assert [t.allowed for t in tickets] == [True, False, False]  # exactly ONE probe
    assert tickets[0].probe and tickets[0].state == "half_open"
    await store.report("d1", True, probe=True)
    view = await store.view("d1")
    assert view.state == "closed" and view.trips == 0 and view.consecutive_failures == 0
    assert (await store.acquire("d1")).allowed


async def test_a_failed_probe_reopens_with_a_doubled_cooldown(store: BreakerStore) -> None:
    await fail(store, 3)
    await asyncio.sleep(0.25)
    assert (await store.acquire("d1")).probe
    await store.report("d1", False, probe=True)
    view = await store.view("d1")
    assert view.state == "open" and view.trips == 2 and 0.3 < view.reopens_in <= 0.4 + 1e-6
    assert view.reason == "the half-open probe failed"


async def test_an_unreported_probe_frees_its_slot_after_probe_timeout(store: BreakerStore) -> None:
    await fail(store, 3)
    await asyncio.sleep(0.25)
    assert (await store.acquire("d1")).probe
    assert not (await store.acquire("d1")).allowed
    await asyncio.sleep(0.35)
    assert (await store.acquire("d1")).probe


async def test_error_rate_opens_without_consecutive_failures(store: BreakerStore) -> None:
    for _ in range(4):
        await store.report("d1", True, probe=False)
        await store.report("d1", False, probe=False)
        await store.report("d1", False, probe=False)
    view = await store.view("d1")
    assert view.state == "open" and "recent requests failed" in view.reason


async def test_a_long_retry_after_rests_the_deployment(store: BreakerStore) -> None:
    view = await store.report("d1", False, probe=False, rest_for=0.6)
    assert view.state == "open" and 0.5 < view.reopens_in <= 0.6 + 1e-6
    assert view.reason == "rate limited: the provider asked to wait 1s"
    assert not (await store.acquire("d1")).allowed


async def test_health_checks_feed_the_breaker(store: BreakerStore) -> None:
    for _ in range(3):
        await store.report_check("d1", False, conclusive=False)
    assert (await store.view("d1")).state == "open"
    await asyncio.sleep(0.1)
    await store.report_check("d1", False, conclusive=False)  # still dead: stays open longer
    assert (await store.view("d1")).reopens_in > 0.15
    await store.report_check("d1", True, conclusive=False)  # GET /models proves little
    assert (await store.view("d1")).state == "open"
    await asyncio.sleep(0.25)
    await store.report_check("d1", True, conclusive=True)  # a real completion after the cooldown
    assert (await store.view("d1")).state == "closed"


async def test_redis_outage_falls_back_to_local_state_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    from tests.support import free_port

    breakers = RedisBreakers(POLICY, SharedRedis(f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0", timeout=0.2))
    try:
        for _ in range(5):
            assert (await breakers.acquire("d1")).allowed or True
            await breakers.report("d1", False, probe=False)
        view = await breakers.view("d1")
        assert view.state == "open"  # the local breaker carried on
        assert not (await breakers.acquire("d1")).allowed
        assert breakers.describe.startswith("memory (Redis at redis://:***@127.0.0.1:")
    finally:
        await breakers.close()
    failures = [r for r in caplog.records if "failed" in r.getMessage() and "Redis at" in r.getMessage()]
    assert len(failures) == 1
    assert "hunter2" not in caplog.text


def test_safe_url_hides_the_password() -> None:
    assert safe_url("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert safe_url("redis://:pw@host/0") == "redis://:***@host/0"
    assert safe_url("redis://host:6379") == "redis://host:6379"

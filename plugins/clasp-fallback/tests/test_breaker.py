"""The breaker state machine, run identically against every store: the plain in-process
one, and the gateway's state backends (memory, SQLite, a real Redis).

Stores with a clock (all but Redis, which takes the time from itself) get an injected
one: time moves when the test says so, not while it sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from clasp_fallback.breaker import BreakerStore, MemoryBreakers, SharedBreakers
from clasp_fallback.settings import BreakerSettings

from clasp_gateway.state.memory import MemoryState
from clasp_gateway.state.redis import RedisState
from clasp_gateway.state.sqlite import SqliteState
from clasp_gateway.testing import RedisNamespace

POLICY = BreakerSettings(failures=3, error_rate=0.5, min_requests=6, window=30, cooldown=0.2,
                         max_cooldown=0.8, probe_timeout=0.3)

Advance = Callable[[float], Awaitable[None]]


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["plain", "memory", "sqlite", "redis"])
async def breakers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[BreakerStore, Advance]]:
    """A breaker store, and how to let ``seconds`` pass for it."""
    clock = Clock(1_000_000.0)

    async def tick(seconds: float) -> None:
        clock.now += seconds

    if request.param == "plain":
        yield MemoryBreakers(POLICY, clock=clock), tick
        return
    if request.param == "memory":
        yield SharedBreakers(POLICY, MemoryState(clock=clock)), tick
        return
    if request.param == "sqlite":
        sqlite = SqliteState(str(tmp_path / "state.sqlite3"), clock=clock)
        yield SharedBreakers(POLICY, sqlite), tick
        await sqlite.close()
        return
    ns: RedisNamespace = request.getfixturevalue("redis_ns")
    redis = RedisState(ns.url, prefix=ns.prefix, timeout=1.0)
    yield SharedBreakers(POLICY, redis), asyncio.sleep
    await redis.close()


@pytest.fixture
def store(breakers: tuple[BreakerStore, Advance]) -> BreakerStore:
    return breakers[0]


@pytest.fixture
def advance(breakers: tuple[BreakerStore, Advance]) -> Advance:
    return breakers[1]


async def fail(store: BreakerStore, times: int, key: str = "d1") -> None:
    for _ in range(times):
        await store.report(key, False, probe=False)


async def test_consecutive_failures_open_then_one_probe_closes(store: BreakerStore, advance: Advance) -> None:
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

    await advance(0.25)
    tickets = [await store.acquire("d1") for _ in range(3)]
    assert [t.allowed for t in tickets] == [True, False, False]  # exactly ONE probe
    assert tickets[0].probe and tickets[0].state == "half_open"
    await store.report("d1", True, probe=True)
    view = await store.view("d1")
    assert view.state == "closed" and view.trips == 0 and view.consecutive_failures == 0
    assert (await store.acquire("d1")).allowed


async def test_a_failed_probe_reopens_with_a_doubled_cooldown(store: BreakerStore, advance: Advance) -> None:
    await fail(store, 3)
    await advance(0.25)
    assert (await store.acquire("d1")).probe
    await store.report("d1", False, probe=True)
    view = await store.view("d1")
    assert view.state == "open" and view.trips == 2 and 0.3 < view.reopens_in <= 0.4 + 1e-6
    assert view.reason == "the half-open probe failed"


async def test_an_unreported_probe_frees_its_slot_after_probe_timeout(store: BreakerStore, advance: Advance) -> None:
    await fail(store, 3)
    await advance(0.25)
    assert (await store.acquire("d1")).probe
    assert not (await store.acquire("d1")).allowed
    await advance(0.35)
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


async def test_health_checks_feed_the_breaker(store: BreakerStore, advance: Advance) -> None:
    for _ in range(3):
        await store.report_check("d1", False, conclusive=False)
    assert (await store.view("d1")).state == "open"
    await advance(0.1)
    await store.report_check("d1", False, conclusive=False)  # still dead: stays open longer
    assert (await store.view("d1")).reopens_in > 0.15
    await store.report_check("d1", True, conclusive=False)  # GET /models proves little
    assert (await store.view("d1")).state == "open"
    await advance(0.25)
    await store.report_check("d1", True, conclusive=True)  # a real completion after the cooldown
    assert (await store.view("d1")).state == "closed"


async def test_redis_outage_falls_back_to_local_state_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    from clasp_gateway.testing import free_port

    redis = RedisState(f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0", timeout=0.2)
    breakers = SharedBreakers(POLICY, redis)
    try:
        for _ in range(5):
            assert (await breakers.acquire("d1")).allowed or True
            await breakers.report("d1", False, probe=False)
        view = await breakers.view("d1")
        assert view.state == "open"  # the local breaker carried on
        assert not (await breakers.acquire("d1")).allowed
        assert breakers.describe.startswith("memory (Redis at redis://:***@127.0.0.1:")
    finally:
        await redis.close()
    failures = [r for r in caplog.records if "failed" in r.getMessage() and "Redis at" in r.getMessage()]
    assert len(failures) == 1
    assert "hunter2" not in caplog.text


async def test_breakers_in_sqlite_are_shared_by_two_instances(tmp_path: Path) -> None:
    """What two workers see: one opens the breaker, the other skips the deployment."""
    path = str(tmp_path / "state.sqlite3")
    first, second = SqliteState(path), SqliteState(path)
    try:
        a, b = SharedBreakers(POLICY, first), SharedBreakers(POLICY, second)
        for _ in range(3):
            await a.report("d1", False, probe=False)
        assert (await b.view("d1")).state == "open"
        assert not (await b.acquire("d1")).allowed
        assert b.describe == f"sqlite ({path})"
    finally:
        await first.close()
        await second.close()


async def test_a_closed_breaker_is_trusted_briefly_then_read_again(tmp_path: Path) -> None:
    """A request skips the store while its process saw the breaker closed within
    ``trust_closed_for``; another process opening it is noticed after that."""
    path = str(tmp_path / "state.sqlite3")
    first, second = SqliteState(path), SqliteState(path)
    clock = Clock(0.0)
    try:
        a = SharedBreakers(POLICY, first, trust_closed_for=0.1, clock=clock)
        b = SharedBreakers(POLICY, second)
        assert (await a.acquire("d1")).allowed  # read: closed
        for _ in range(3):
            await b.report("d1", False, probe=False)  # another process opens it
        clock.now = 0.09
        assert (await a.acquire("d1")).allowed  # still trusted: no round trip
        clock.now = 0.11
        assert not (await a.acquire("d1")).allowed  # read again: open
        assert a.peek("d1").state == "open"
    finally:
        await first.close()
        await second.close()


async def test_successes_are_written_together_and_before_anything_that_must_see_them(tmp_path: Path) -> None:
    """On a shared backend, successes on a closed breaker are coalesced into one write
    (at most ``trust_closed_for`` later); a failure, a check or a status read writes
    them first, so the order of outcomes, and what a status page shows, stay exact."""
    path = str(tmp_path / "state.sqlite3")
    first, second = SqliteState(path), SqliteState(path)
    try:
        a = SharedBreakers(POLICY, first, trust_closed_for=30)
        b = SharedBreakers(POLICY, second)
        await a.report("d1", False, probe=False)  # known: closed, one failure
        for _ in range(4):
            assert (await a.report("d1", True, probe=False)).consecutive_failures == 0
        assert (await b.view("d1")).recent_requests == pytest.approx(1)  # not written yet
        await a.report("d1", False, probe=False)  # the successes go first, then this failure
        seen = await b.view("d1")
        assert seen.consecutive_failures == 1 and seen.recent_requests == pytest.approx(6, rel=0.01)
        await a.report("d1", True, probe=False)
        assert (await a.view("d1")).consecutive_failures == 0  # a status read writes them
        await a.report("d1", True, probe=False)
        await a.close()  # and so does shutting down
        assert (await b.view("d1")).recent_requests == pytest.approx(8, rel=0.01)
    finally:
        await first.close()
        await second.close()


async def test_pending_successes_are_written_within_the_trust_window(tmp_path: Path) -> None:
    path = str(tmp_path / "state.sqlite3")
    first, second = SqliteState(path), SqliteState(path)
    try:
        a = SharedBreakers(POLICY, first, trust_closed_for=0.05)
        await a.report("d1", False, probe=False)
        await a.report("d1", True, probe=False)
        raw = SharedBreakers(POLICY, second)
        for _ in range(200):  # bounded wait for the timer (no assertion on how long it took)
            if (await raw.view("d1")).consecutive_failures == 0:
                break
            await asyncio.sleep(0.01)
        assert (await raw.view("d1")).consecutive_failures == 0
    finally:
        await first.close()
        await second.close()


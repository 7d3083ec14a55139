"""Per-deployment limits (rpm, tpm, rpd, max_concurrency): the atomic script on every
state backend (memory and SQLite with an injected clock, a real Redis on its own)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from clasp_fallback.deployment_limits import DeploymentLimits, Limits, limits_of

from clasp_gateway import Deployment
from clasp_gateway.state.memory import MemoryState
from clasp_gateway.state.redis import RedisState
from clasp_gateway.state.sqlite import SqliteState
from clasp_gateway.testing import RedisNamespace


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


Advance = Callable[[float], Awaitable[None]] | None


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[DeploymentLimits, Advance]]:
    """The limits in a backend, and how to let time pass (``None`` on Redis: its own clock)."""
    clock = Clock(1_000_020.0)  # 20 s into a minute: no window boundary during a test

    async def tick(seconds: float) -> None:
        clock.now += seconds

    if request.param == "memory":
        yield DeploymentLimits(MemoryState(clock=clock), "fallback:"), tick
        return
    if request.param == "sqlite":
        sqlite = SqliteState(str(tmp_path / "state.sqlite3"), clock=clock)
        yield DeploymentLimits(sqlite, "fallback:"), tick
        await sqlite.close()
        return
    ns: RedisNamespace = request.getfixturevalue("redis_ns")
    redis = RedisState(ns.url, prefix=ns.prefix, timeout=1.0)
    yield DeploymentLimits(redis, "fallback:"), None
    await redis.close()


async def test_requests_per_day_refuse_at_the_limit_and_say_when(store: tuple[DeploymentLimits, Advance]) -> None:
    limits, _ = store
    rule = Limits(rpd=3)
    assert [(await limits.acquire("a", rule, 0)).ok for _ in range(3)] == [True, True, True]
    refused = await limits.acquire("a", rule, 0)
    assert not refused.ok and refused.reason == "rpd" and 0 < refused.retry_after <= 2 * 86400
    assert refused.headroom == 0.0
    assert (await limits.acquire("b", rule, 0)).ok  # per deployment


async def test_requests_per_minute_come_back_as_the_window_slides(store: tuple[DeploymentLimits, Advance]) -> None:
    limits, advance = store
    rule = Limits(rpm=2)
    assert (await limits.acquire("a", rule, 0)).ok and (await limits.acquire("a", rule, 0)).ok
    refused = await limits.acquire("a", rule, 0)
    assert not refused.ok and refused.reason == "rpm" and 0 < refused.retry_after <= 120
    if advance is None:
        return  # Redis keeps its own time
    await advance(refused.retry_after + 0.5)
    assert (await limits.acquire("a", rule, 0)).ok


async def test_concurrency_slots_are_taken_and_released(store: tuple[DeploymentLimits, Advance]) -> None:
    limits, _ = store
    rule = Limits(max_concurrency=2)
    assert (await limits.acquire("a", rule, 0)).ok
    second = await limits.acquire("a", rule, 0)
    assert second.ok and second.headroom == 0.0
    third = await limits.acquire("a", rule, 0)
    assert not third.ok and third.reason == "max_concurrency"
    await limits.release("a", rule, 0)
    assert (await limits.acquire("a", rule, 0)).ok


async def test_tokens_are_counted_then_corrected_to_what_was_used(store: tuple[DeploymentLimits, Advance]) -> None:
    limits, _ = store
    rule = Limits(tpm=100)
    assert (await limits.acquire("a", rule, 60)).ok
    refused = await limits.acquire("a", rule, 60)
    assert not refused.ok and refused.reason == "tpm"
    await limits.release("a", rule, -50)  # the first one used 10 tokens, not 60
    assert (await limits.acquire("a", rule, 60)).ok
    assert not (await limits.acquire("a", rule, 60)).ok


async def test_a_refused_request_counts_nothing_and_a_peek_counts_nothing(store: tuple[DeploymentLimits, Advance]) -> None:
    limits, _ = store
    rule = Limits(rpm=5, max_concurrency=1)
    assert (await limits.acquire("a", rule, 0)).ok
    for _ in range(10):
        assert not (await limits.acquire("a", rule, 0)).ok  # concurrency refuses: rpm not counted
    peek = await limits.peek("a", rule)
    assert not peek.ok and peek.reason == "max_concurrency"
    await limits.release("a", rule, 0)
    peek = await limits.peek("a", rule)
    assert peek.ok and peek.headroom == pytest.approx(0.8)
    assert [(await limits.acquire("a", rule, 0)).ok and await _free(limits, rule) for _ in range(4)] == [True] * 4
    assert not (await limits.acquire("a", rule, 0)).ok  # 5 per minute, whatever the concurrency


async def _free(limits: DeploymentLimits, rule: Limits) -> bool:
    await limits.release("a", rule, 0)
    return True


async def test_concurrent_acquires_never_exceed_the_limit(store: tuple[DeploymentLimits, Advance]) -> None:
    limits, _ = store
    rule = Limits(max_concurrency=7, rpm=1000)
    verdicts = await asyncio.gather(*(limits.acquire("a", rule, 0) for _ in range(40)))
    assert sum(v.ok for v in verdicts) == 7


def test_limits_of_reads_the_deployment_settings() -> None:
    dep = Deployment(id="a", provider="openai", model="m", api_base="", settings={"limits": {"rpm": 3, "tpm": None}})
    assert limits_of(dep) == Limits(rpm=3)
    assert limits_of(Deployment(id="b", provider="openai", model="m", api_base="")) is None

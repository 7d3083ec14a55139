"""The backend contract, on memory and on a real Redis: get/put, TTL and stale keeping,
LRU eviction by entries and bytes, the entry size bound, selectors, per-scope vectors;
and a Redis outage is a miss, logged once, never an error."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from clasp_cache.backends.base import BackendLimits, CacheBackend, CacheEntry, CacheUnavailable, EntryMeta, Selector
from clasp_cache.backends.memory import MemoryBackend
from clasp_cache.backends.redis import RedisBackend

from clasp_gateway.testing import FakeClock, RedisServer, free_port

LIMITS = BackendLimits(max_entries=5, max_bytes=10_000, max_entry_bytes=4_000, max_vectors_per_scope=3)


def entry(ident: str, now: float, *, scope: str = "s1", team: str = "alpha", model: str = "gpt-4o", size: int = 100,
          ttl: float = 60.0, keep: float = 0.0, created: float | None = None) -> CacheEntry:
    meta = EntryMeta(id=ident, scope=scope, tenant="team:" + team, model=model, created=created or now,
                     fresh_until=now + ttl, keep_until=now + ttl + keep, team=team, key_id="k-" + team,
                     cost_usd=0.01, namespace="ns")
    return CacheEntry(meta, b"x" * size)


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    yield redis_server.url


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[tuple[CacheBackend, Any]]:
    clock = FakeClock(1_900_000_000.0) if request.param == "memory" else time.time
    if request.param == "memory":
        yield MemoryBackend(LIMITS, clock), clock
        return
    with redis_server.namespace() as ns:
        store = RedisBackend(LIMITS, clock, url=ns.url, prefix=ns.prefix)
        yield store, clock
        await store.close()


async def test_put_get_and_replace(backend: tuple[CacheBackend, Any]) -> None:
    store, clock = backend
    assert await store.get("a") is None
    assert await store.put(entry("a", clock(), size=10))
    got = await store.get("a")
    assert got is not None and got.payload == b"x" * 10 and got.meta.size == 10 and got.meta.team == "alpha"
    assert await store.put(entry("a", clock(), size=20))
    stats = await store.stats()
    assert (stats.entries, stats.bytes) == (1, 20)


async def test_an_answer_over_the_entry_size_bound_is_not_stored(backend: tuple[CacheBackend, Any]) -> None:
    store, clock = backend
    assert not await store.put(entry("big", clock(), size=4_001))
    assert await store.get("big") is None


async def test_lru_eviction_by_entries_and_by_bytes(backend: tuple[CacheBackend, Any]) -> None:
    store, clock = backend
    for i in range(5):
        assert await store.put(entry(f"e{i}", clock(), size=100))
        if isinstance(store, RedisBackend):
            await asyncio.sleep(0.002)  # Redis orders use by its millisecond clock
    assert await store.get("e0") is not None  # used: e1 is now the least recently used
    if isinstance(store, RedisBackend):
        await asyncio.sleep(0.002)
    await store.put(entry("e5", clock()))
    assert await store.get("e1") is None and await store.get("e0") is not None
    await store.put(entry("huge", clock(), size=3_900))
    await store.put(entry("huge2", clock(), size=3_900))
    await store.put(entry("huge3", clock(), size=3_900))  # 11,700 bytes > 10,000: the oldest go
    stats = await store.stats()
    assert stats.bytes <= 10_000 and stats.entries <= 5 and stats.evictions >= 3
    assert await store.get("huge3") is not None


async def test_ttl_and_stale_keeping(backend: tuple[CacheBackend, Any]) -> None:
    store, clock = backend
    ttl, keep = (10.0, 20.0) if isinstance(store, MemoryBackend) else (0.2, 0.3)
    await store.put(entry("t", clock(), ttl=ttl, keep=keep))
    got = await store.get("t")
    assert got is not None and got.meta.fresh(clock())
    if isinstance(store, MemoryBackend):
        clock.advance(ttl + 1)
    else:
        await asyncio.sleep(ttl + 0.05)  # Redis keeps its own time
    got = await store.get("t")
    assert got is not None and not got.meta.fresh(clock())  # kept for stale-if-error
    if isinstance(store, MemoryBackend):
        clock.advance(keep)
    else:
        await asyncio.sleep(keep)
    assert await store.get("t") is None
    assert (await store.stats()).entries <= 1  # (Redis sweeps its indexes on the next write)


async def test_selectors_list_and_purge(backend: tuple[CacheBackend, Any]) -> None:
    store, clock = backend
    now = clock()
    await store.put(entry("a1", now, team="alpha", model="claude-sonnet", created=now - 7200))
    await store.put(entry("a2", now, team="alpha", model="gpt-4o", scope="s2"))
    await store.put(entry("b1", now, team="beta", model="claude-haiku"))
    assert {m.id for m in await store.entries(Selector(team="alpha"))} == {"a1", "a2"}
    assert {m.id for m in await store.entries(Selector(model="claude-*"))} == {"a1", "b1"}
    assert {m.id for m in await store.entries(Selector(scope="s2"))} == {"a2"}
    assert {m.id for m in await store.entries(Selector(older_than=3600))} == {"a1"}
    assert await store.purge(Selector(team="alpha", model="claude-*")) == 1
    assert await store.purge(Selector(key_id="k-beta")) == 1
    assert [m.id for m in await store.entries(Selector())] == ["a2"]
    assert await store.purge(Selector()) == 1
    assert (await store.stats()).entries == 0


async def test_vectors_per_scope_follow_their_entries(backend: tuple[CacheBackend, Any]) -> None:
    store, clock = backend
    for i in range(4):
        await store.put(entry(f"v{i}", clock(), scope="sv"))
    assert await store.add_vector("sv", "missing", b"vec") == 0
    assert await store.add_vector("other", "v0", b"vec") == 0  # not that entry's scope
    seqs = [await store.add_vector("sv", f"v{i}", f"vec{i}".encode()) for i in range(4)]
    assert seqs == [1, 2, 3, 4]
    full = await store.scope_vectors("sv")
    assert full.seq == 4 and [i for i, _ in full.items] == ["v1", "v2", "v3"]  # at most 3 per scope
    newer = await store.scope_vectors("sv", since=3)
    assert newer.items == [("v3", b"vec3")] and not newer.reset
    await store.purge(Selector(ids=("v3",)))
    assert [i for i, _ in (await store.scope_vectors("sv")).items] == ["v1", "v2"]
    ahead = await store.scope_vectors("sv", since=99)
    assert ahead.reset and [i for i, _ in ahead.items] == ["v1", "v2"]


async def test_a_redis_outage_is_a_miss_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    store = RedisBackend(LIMITS, time.time, url=f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    with caplog.at_level(logging.ERROR, logger="clasp.cache"):
        assert await store.get("a") is None
        assert not await store.put(entry("a", time.time()))
        assert await store.add_vector("s", "a", b"v") == 0
        assert (await store.scope_vectors("s", since=5)).seq == 5
        with pytest.raises(CacheUnavailable):
            await store.entries(Selector())
    assert store.outage
    assert len([r for r in caplog.records if "cache is bypassed" in r.getMessage()]) == 1
    await store.close()


def test_the_memory_backend_takes_a_clock() -> None:
    clock = FakeClock(100.0)
    store = MemoryBackend(LIMITS, clock)
    asyncio.run(store.put(entry("m", clock(), ttl=5)))
    clock.advance(6)
    assert asyncio.run(store.get("m")) is None

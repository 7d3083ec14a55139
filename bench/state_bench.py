"""Per-operation cost of each state backend (clasp_gateway/state): latency and CPU.

    .venv/bin/python bench/state_bench.py                 # memory, sqlite (tmpfs, disk), redis
    .venv/bin/python bench/state_bench.py --ops 5000 --only sqlite-shm,redis

For each backend and operation: awaited one at a time (``--ops`` times) -> mean, p50
and p99 latency in microseconds and CPU per operation (``time.process_time``: every
thread of this process, so the SQLite thread counts); then ``--concurrency`` tasks at
once -> operations per second. ``breaker`` rows are clasp-fallback's real transitions
(``acquire`` then ``report``, what every upstream attempt costs), when it is installed.
A second process (``--contention``) hammers the same store meanwhile, as a second
worker or replica would. Redis is the machine's (127.0.0.1:6379) or one started here and
stopped at the end. Read ratios, not absolutes: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clasp_gateway.state import StateBackend  # noqa: E402
from clasp_gateway.state.memory import MemoryState  # noqa: E402
from clasp_gateway.state.redis import RedisState  # noqa: E402
from clasp_gateway.state.sqlite import SqliteState  # noqa: E402
from clasp_gateway.testing import redis_server  # noqa: E402

Op = Callable[[int], Awaitable[Any]]


def operations(state: StateBackend) -> dict[str, Op]:
    """The operations measured, each called with the iteration number."""
    value = b"x" * 200
    ops: dict[str, Op] = {
        "get": lambda i: state.get("bench:key"),
        "set ttl": lambda i: state.set("bench:key", value, ttl=60),
        "set if_absent": lambda i: state.set(f"bench:lease:{i % 64}", "1", ttl=0.5, if_absent=True),
        "incr ttl": lambda i: state.incr("bench:counter", ttl=60),
        "add_within": lambda i: state.add_within("bench:slots", 1 if i % 2 == 0 else -1, 1000, ttl=60),
        "hit": lambda i: state.hit("bench:rate", 1e9, 60),
    }
    try:
        from clasp_fallback.breaker import MemoryBreakers, SharedBreakers
        from clasp_fallback.settings import BreakerSettings
    except ImportError:
        return ops
    breakers = SharedBreakers(BreakerSettings(), state, "bench:")

    async def attempt(i: int) -> None:
        await breakers.acquire("deployment")
        await breakers.report("deployment", True, probe=False)

    ops["breaker attempt"] = attempt
    if isinstance(state, MemoryState):  # the reference: the plugin's plain in-process breakers
        plain = MemoryBreakers(BreakerSettings())

        async def plain_attempt(i: int) -> None:
            await plain.acquire("deployment")
            await plain.report("deployment", True, probe=False)

        ops["breaker (plain)"] = plain_attempt
    return ops


async def measure(state: StateBackend, n: int, concurrency: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for name, op in operations(state).items():
        for i in range(min(200, n)):  # warm-up: connections, scripts loaded, caches
            await op(i)
        samples: list[float] = []
        cpu0 = time.process_time()
        for i in range(n):
            t0 = time.perf_counter()
            await op(i)
            samples.append(time.perf_counter() - t0)
        cpu = time.process_time() - cpu0
        samples.sort()
        # Throughput with many requests in flight (one event loop, as in a worker).
        queue = iter(range(n))

        async def worker(op: Op = op, queue: Any = queue) -> None:
            for i in queue:
                await op(i)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        results[name] = {
            "mean_us": round(statistics.fmean(samples) * 1e6, 1),
            "p50_us": round(samples[len(samples) // 2] * 1e6, 1),
            "p99_us": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e6, 1),
            "cpu_us": round(cpu / n * 1e6, 1),
            "ops_per_s_concurrent": round(n / wall),
        }
    return results


CONTENDER = """
import asyncio, sys, time
sys.path.insert(0, sys.argv[4])
from clasp_gateway.state.redis import RedisState
from clasp_gateway.state.sqlite import SqliteState

async def main():
    kind, where, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
    state = SqliteState(where, prefix=prefix, timeout=5) if kind == "sqlite" else RedisState(where, prefix=prefix, timeout=5)
    await state.open()
    print("ready", flush=True)
    n = 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        await state.add_within("bench:other", 1 if n % 2 == 0 else -1, 1000, ttl=60)
        n += 1
        if n % 50 == 0:
            await asyncio.sleep(0)  # stay killable

try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


def start_contender(kind: str, where: str, prefix: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", CONTENDER, kind, where, prefix, str(ROOT)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def run_backend(name: str, args: argparse.Namespace, redis_url: str | None, tmp: Path) -> dict[str, Any]:
    prefix = f"clasp-bench:{uuid.uuid4().hex[:8]}:"
    contender: subprocess.Popen[str] | None = None
    if name == "memory":
        state: StateBackend = MemoryState()
    elif name.startswith("sqlite"):
        directory = "/dev/shm" if name == "sqlite-shm" else str(tmp)
        path = os.path.join(directory, f"clasp-bench-{os.getpid()}.sqlite3")
        state = SqliteState(path, prefix=prefix, timeout=5)
        if args.contention:
            contender = start_contender("sqlite", path, prefix)
    else:
        assert redis_url is not None
        state = RedisState(redis_url, prefix=prefix, timeout=5)
        if args.contention:
            contender = start_contender("redis", redis_url, prefix)
    await state.open()
    try:
        return {"describe": state.describe, "ops": await measure(state, args.ops, args.concurrency)}
    finally:
        if contender is not None:
            stop(contender)
        if isinstance(state, RedisState):
            await state.delete_prefix("")
        await state.close()
        if isinstance(state, SqliteState):
            for suffix in ("", "-wal", "-shm"):
                Path(state.path + suffix).unlink(missing_ok=True)  # noqa: ASYNC240 (after measuring)


def table(results: dict[str, Any]) -> str:
    lines = [f"{'backend':<11} {'operation':<16} {'mean us':>8} {'p50 us':>8} {'p99 us':>8} {'cpu us':>8} {'ops/s @c':>9}"]
    for backend, data in results.items():
        for op, r in data["ops"].items():
            lines.append(f"{backend:<11} {op:<16} {r['mean_us']:>8} {r['p50_us']:>8} {r['p99_us']:>8} "
                         f"{r['cpu_us']:>8} {r['ops_per_s_concurrent']:>9}")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=2000, help="operations per measurement (default 2000)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--only", default="memory,sqlite-shm,sqlite-disk,redis")
    parser.add_argument("--contention", action="store_true", help="a second process uses the same store meanwhile")
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="clasp-state-bench-", dir=str(ROOT / "bench")) as tmp:
        if "redis" in names:
            with redis_server() as redis:
                url = f"redis://{redis.host}:{redis.port}/14"
                for name in names:
                    results[name] = await run_backend(name, args, url, Path(tmp))
        else:
            for name in names:
                results[name] = await run_backend(name, args, None, Path(tmp))
    print(table(results))
    if args.output:
        Path(args.output).write_text(json.dumps({"args": vars(args), "results": results}, indent=1) + "\n")  # noqa: ASYNC240


if __name__ == "__main__":
    try:  # the gateway's own loop (clasp serve uses uvloop when installed)
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())

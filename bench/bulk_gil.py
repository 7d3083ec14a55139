#!/usr/bin/env python3
"""A background writer's SQLite batch beside a busy event loop: ``executemany`` against
:class:`clasp_gateway.BulkInsert`'s multi-row statements.

aiosqlite runs the driver in its own thread. Python's ``sqlite3`` releases the GIL
around each row's step in an ``executemany`` and needs it back for the next row's
parameters; while the event loop's thread is busy (serving requests), each row then
waits for it to let go and forces a switch. This script inserts ledger request rows
(33 columns, ``clasp_budgets``' table) in batches of ``--batch`` through SQLAlchemy
over aiosqlite, as the ledger's writer does, alternating the two ways, with a task
on the loop doing pure-Python work in slices (``--busy``: a stand-in for requests;
``--idle``: no such task). Per way: the driver thread's CPU per row
(``pthread_getcpuclockid``), the process's CPU per row (both threads, the busy
task's work excluded by measuring it alone first), and the wall time per batch.

    .venv/bin/python bench/bulk_gil.py [--batches 20] [--batch 300] [--idle]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "plugins" / "clasp-budgets"))

from clasp_budgets.ledger.tables import METADATA, REQUESTS  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from clasp_gateway import BulkInsert  # noqa: E402
from clasp_gateway.pipeline import new_request_id  # noqa: E402


def rows(n: int) -> list[tuple[Any, ...]]:
    return [(new_request_id(), time.time(), "anthropic", "claude-sonnet-4-5", "coding", "openai", "gpt-4o",
             "openai/gpt-4o", None, "3fa2b1c0d9e8", "alice", "core", "alice", "api", '{"feature":"review"}',
             5200, 310, 12000, 0, 0, 0.0191, None, 0.0, 240.4, 812.9, 200, None, False, True, 1, 0, 0, "h" * 64)
            for _ in range(n)]


def driver_threads() -> list[int]:
    return [t.ident for t in threading.enumerate() if "_connection_worker_thread" in t.name and t.ident]


def thread_cpu(idents: list[int]) -> float:
    return sum(time.clock_gettime(time.pthread_getcpuclockid(i)) for i in idents)


async def busy(stop: asyncio.Event, done: list[int]) -> None:
    """Pure-Python work in ~0.2 ms slices, yielding to the loop between them."""
    while not stop.is_set():
        x = 0
        for i in range(2000):
            x += i
        done[0] += 1
        await asyncio.sleep(0)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch", type=int, default=300)
    parser.add_argument("--idle", action="store_true", help="no busy task on the loop")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bulk-gil-"))
    engine = create_async_engine(f"sqlite+aiosqlite:///{folder / 'l.db'}")
    async with engine.begin() as conn:
        await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        await conn.run_sync(METADATA.create_all)
    insert = BulkInsert(REQUESTS, ignore_conflicts=True)

    async def executemany(conn: Any, values: list[tuple[Any, ...]]) -> None:
        await conn.exec_driver_sql(insert.sql("sqlite"), values)

    ways = {"executemany": executemany, "multi-row": insert.execute_values}
    # The busy task's own CPU per slice, alone.
    stop, done = asyncio.Event(), [0]
    task = asyncio.create_task(busy(stop, done))
    start = time.process_time()
    await asyncio.sleep(1.0)
    stop.set()
    await task
    per_slice = (time.process_time() - start) / max(1, done[0])
    figures: dict[str, dict[str, list[float]]] = {w: {"driver": [], "process": [], "wall": []} for w in ways}
    async with engine.connect() as warm:  # the driver's thread exists from here on
        await warm.exec_driver_sql("SELECT 1")
    for b in range(args.batches):
        for name in (list(ways) if b % 2 == 0 else list(reversed(ways))):
            values = rows(args.batch)
            stop, done = asyncio.Event(), [0]
            task = None if args.idle else asyncio.create_task(busy(stop, done))
            await asyncio.sleep(0)
            async with engine.begin() as conn:
                idents = driver_threads()
                d0, p0, w0 = thread_cpu(idents), time.process_time(), time.perf_counter()
                await ways[name](conn, values)
                d1, p1, w1 = thread_cpu(idents), time.process_time(), time.perf_counter()
            stop.set()
            if task is not None:
                await task
            f = figures[name]
            f["driver"].append((d1 - d0) / args.batch * 1e6)
            f["process"].append(((p1 - p0) - done[0] * per_slice) / args.batch * 1e6)
            f["wall"].append((w1 - w0) * 1000)
    await engine.dispose()
    print(f"batches of {args.batch} ledger rows, {'idle' if args.idle else 'busy'} loop, medians of {args.batches}:")
    for name, f in figures.items():
        print(f"  {name:12s} driver thread {statistics.median(f['driver']):7.1f} us/row   "
              f"process {statistics.median(f['process']):7.1f} us/row   wall {statistics.median(f['wall']):8.1f} ms/batch")


if __name__ == "__main__":
    asyncio.run(main())

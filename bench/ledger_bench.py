#!/usr/bin/env python3
"""What the spend ledger costs: CPU per request on the hot path, and rows per second
of its batch writer on SQLite and PostgreSQL.

- **hot path**: the ``record`` hook's work for one request (its ``attempt`` and
  ``request`` events made into rows and queued) plus the prompt fingerprint of the
  ``before_call`` hook on a 21 KB Claude-Code-like request (``workload.py``); CPU
  time (``time.process_time``) per request over many requests.
- **writer**: rows queued, then written by ``LedgerWriter.flush`` in batches of
  ``--batch`` (default 500) to a fresh SQLite file and a fresh PostgreSQL database:
  rows per second (wall) and CPU per row of this process. ``--existing N``: the
  database first holds N requests' rows (a gateway that has served a while; written
  before the measurement), where the shape of the request ids shows: ids from
  ``new_request_id`` (ordered by time) are appended to the tables' key indexes,
  ``--random-ids`` (the ids before: 96 random bits) land all over them.

Run: ``.venv/bin/python bench/ledger_bench.py [--rows 20000] [--existing 300000] [--random-ids]
[--pg postgresql://postgres@127.0.0.1/postgres]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workload  # noqa: E402
from clasp_budgets.ledger.rows import attempt_row, request_row  # noqa: E402
from clasp_budgets.ledger.settings import LedgerSettings  # noqa: E402
from clasp_budgets.ledger.writer import LedgerWriter  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from clasp_gateway.pipeline import new_request_id  # noqa: E402
from clasp_gateway.request_facts import fingerprint_of  # noqa: E402

RANDOM_IDS = False
"""``--random-ids``: request ids as they were before ``new_request_id`` ordered them."""


def events(n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    rid = f"req_{uuid.uuid4().hex[:24]}" if RANDOM_IDS else new_request_id()
    attempt = {"kind": "attempt", "request_id": rid, "attempt": 1, "public_model": "claude-sonnet-4-5",
               "request_class": "coding", "deployment": "openai/gpt-4o", "provider": "openai", "model": "gpt-4o",
               "region": None, "ok": True, "error": None, "upstream_status": 200, "ms": 812.5, "ttfb_ms": 240.1,
               "usage": {"input_tokens": 5200, "output_tokens": 310, "cache_read_input_tokens": 12000,
                         "cache_creation_input_tokens": 0}, "cost_usd": 0.0191, "started_at": 1.7e9 + n, "time": 1.7e9 + n}
    request = {"kind": "request", "request_id": rid, "api": "anthropic", "public_model": "claude-sonnet-4-5",
               "deployment": "openai/gpt-4o", "provider": "openai", "model": "gpt-4o", "region": None,
               "key_id": "3fa2b1c0d9e8", "key_name": "alice", "team": "core", "project": "api", "user": "alice",
               "tags": {"feature": "review"}, "stream": True, "status": 200, "error": None, "cut": False,
               "usage": attempt["usage"] | {"reasoning_tokens": 0}, "cost_usd": 0.0191, "cache_hit": None,
               "saved_usd": 0.0, "latency_ms": 812.9, "ttfb_ms": 240.4,
               "attempts": [{"deployment": "openai/gpt-4o", "ok": True, "error": None, "ms": 812.5}],
               "retries": 0, "fallbacks": 0, "request_class": "coding", "traits": ["coding"],
               "started_at": 1.7e9 + n, "time": 1.7e9 + n}
    return attempt, request


def hot_path(requests: int) -> dict[str, float]:
    """CPU per request of the ledger's hooks (rows and queue; fingerprint separately)."""
    settings = LedgerSettings(max_queue=requests * 2 + 10, batch_size=10**9)
    writer = LedgerWriter(lambda: None, "sqlite", settings, Path(tempfile.mkdtemp()) / "s.jsonl")  # type: ignore[arg-type,return-value]
    pairs = [events(i) for i in range(requests)]
    start = time.process_time()
    for attempt, request in pairs:
        writer.add("a", attempt_row(attempt, 1))
        writer.add("r", request_row(request, "h" * 64))
    rows_cpu = (time.process_time() - start) / requests
    body = workload.openai_request(workload.UPSTREAM_SHORT)  # the canonical request (OpenAI chat), 21 KB
    start = time.process_time()
    for _ in range(requests):
        fingerprint_of(body)
    hash_cpu = (time.process_time() - start) / requests
    return {"rows_and_queue_us": rows_cpu * 1e6, "fingerprint_us": hash_cpu * 1e6,
            "request_bytes": float(len(workload.encode(body)))}


def queue_requests(writer: LedgerWriter, numbers: range) -> None:
    """Queue each numbered request's two rows (attempt, request) on ``writer``."""
    for i in numbers:
        attempt, request = events(i)
        writer.add("a", attempt_row(attempt, 1))
        writer.add("r", request_row(request, "h" * 64))


async def writer_rate(url: str, rows: int, batch: int, existing: int = 0) -> dict[str, float]:
    sys.path.insert(0, str(HERE.parent / "plugins" / "clasp-budgets" / "tests"))
    from ledger_support import apply_ledger_migration  # type: ignore[import-not-found]

    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(apply_ledger_migration)
    if existing:
        fill = LedgerWriter(engine.begin, engine.dialect.name,
                            LedgerSettings(max_queue=20_010, batch_size=20_000), Path(tempfile.mkdtemp()) / "s.jsonl")
        for done in range(0, existing, 10_000):
            queue_requests(fill, range(done, min(existing, done + 10_000)))
            await fill.flush()
        fill.release()
    settings = LedgerSettings(max_queue=rows * 2 + 10, batch_size=batch)
    writer = LedgerWriter(engine.begin, engine.dialect.name, settings, Path(tempfile.mkdtemp()) / "s.jsonl")
    queue_requests(writer, range(rows // 2))
    wall, cpu = time.perf_counter(), time.process_time()
    await writer.flush()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert writer.stats.written == rows // 2 * 2, writer.stats
    await engine.dispose()
    return {"rows": float(writer.stats.written), "rows_per_s": writer.stats.written / wall,
            "cpu_us_per_row": cpu / writer.stats.written * 1e6}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--existing", type=int, default=0, help="requests already in the ledger (default 0)")
    parser.add_argument("--random-ids", action="store_true", help="random request ids (as before they were ordered)")
    parser.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    global RANDOM_IDS
    RANDOM_IDS = args.random_ids
    print("hot path per request:", {k: round(v, 1) for k, v in hot_path(args.requests).items()})
    folder = Path(tempfile.mkdtemp(prefix="ledger-bench-"))
    print("sqlite writer:", {k: round(v, 1) for k, v in
                             (await writer_rate(f"sqlite+aiosqlite:///{folder / 'l.db'}", args.rows, args.batch,
                                                args.existing)).items()})
    name = "ledger_bench_" + uuid.uuid4().hex[:8]
    admin = create_async_engine(args.pg, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = args.pg.rsplit("/", 1)[0] + "/" + name
        print("postgresql writer:", {k: round(v, 1) for k, v in (await writer_rate(url, args.rows, args.batch, args.existing)).items()})
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


if __name__ == "__main__":
    asyncio.run(main())

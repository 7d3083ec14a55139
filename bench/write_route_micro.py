#!/usr/bin/env python3
"""Two micro-benchmarks behind issue 10's round two (CPU per request, in process).

- ``ledger``: one batch of 50 requests' ledger rows (a request row and an attempt row
  each) written to SQLite through SQLAlchemy's ``insert().on_conflict_do_nothing()``
  against :class:`clasp_gateway.BulkInsert` (the driver's executemany), interleaved;
- ``routes``: matching ``POST /v1/messages`` behind 36 admin routes (as the team plugins
  register them) against the API route first (``shell/app.py``'s ``api_first``).

    .venv/bin/python bench/write_route_micro.py
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from typing import Any

from clasp_budgets.ledger.rows import as_mapping, attempt_row, request_row
from clasp_budgets.ledger.tables import ATTEMPTS, METADATA, REQUESTS
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from clasp_gateway import BulkInsert


def event(i: int) -> dict[str, Any]:
    return {"kind": "request", "request_id": f"r{i}", "api": "anthropic", "public_model": "claude-sonnet",
            "provider": "anthropic", "model": "claude-sonnet-4", "deployment": "d1", "key_id": "k1",
            "key_name": "bench", "user": "u1", "tags": {}, "usage": {"input_tokens": 100, "output_tokens": 20},
            "cost_usd": 0.001, "latency_ms": 50.0, "ttfb_ms": 10.0, "status": 200, "stream": True,
            "attempts": [{}], "time": 1e9, "started_at": 1e9}


async def ledger(batches: int = 40, size: int = 50) -> dict[str, float]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/ledger.db")
    async with engine.begin() as conn:
        await conn.run_sync(METADATA.create_all)
    bulk_r, bulk_a = BulkInsert(REQUESTS, ignore_conflicts=True), BulkInsert(ATTEMPTS, ignore_conflicts=True)
    n, cpu = 0, {"sqlalchemy": [], "bulk": []}  # type: ignore[var-annotated]
    for rnd in range(batches):
        for how in ("sqlalchemy", "bulk") if rnd % 2 else ("bulk", "sqlalchemy"):
            rows = []
            for _ in range(size):
                n += 1
                e = event(n)
                rows.append((request_row(e, "h"), attempt_row({**e, "kind": "attempt", "ok": True, "ms": 40.0}, 1)))
            mappings = [(as_mapping("r", r), as_mapping("a", a)) for r, a in rows]  # SQLAlchemy takes dicts
            start = time.process_time()
            async with engine.begin() as conn:
                if how == "sqlalchemy":
                    await conn.execute(sqlite.insert(REQUESTS).on_conflict_do_nothing(), [r for r, _ in mappings])
                    await conn.execute(sqlite.insert(ATTEMPTS).on_conflict_do_nothing(), [a for _, a in mappings])
                else:  # the ledger's rows are already tuples in column order
                    await bulk_r.execute_values(conn, [r for r, _ in rows])
                    await bulk_a.execute_values(conn, [a for _, a in rows])
            if rnd >= 4:  # warm-up
                cpu[how].append((time.process_time() - start) / size * 1000)
    await engine.dispose()
    return {how: statistics.median(values) for how, values in cpu.items()}


async def endpoint(request: Request) -> Response:
    return Response()


def routes(loops: int = 20_000) -> dict[str, float]:
    admin = [Route(f"/admin/thing{i}/{{id}}", endpoint, methods=["GET"]) for i in range(36)]
    api = Route("/v1/messages", endpoint, methods=["POST"])
    scope = {"type": "http", "path": "/v1/messages", "method": "POST", "root_path": ""}
    out = {}
    for name, table in (("admin first", [*admin, api]), ("api first", [api, *admin])):
        start = time.process_time()
        for _ in range(loops):
            for route in table:
                if route.matches(scope)[0] == Match.FULL:
                    break
        out[name] = (time.process_time() - start) / loops * 1000
    return out


if __name__ == "__main__":
    for name, ms in asyncio.run(ledger()).items():
        print(f"ledger batch ({name}): {ms:.4f} ms CPU/request")
    for name, ms in routes().items():
        print(f"route match ({name}): {ms:.4f} ms CPU/request")

"""The batch writer against real SQLite and PostgreSQL: batches, idempotent inserts,
the spool while the database is down and its replay once it is back, the flush at
close, a dead process's spool adopted, bounds (queue, spool) and refused rows."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from clasp_budgets.ledger import ATTEMPTS, REQUESTS
from clasp_budgets.ledger.rows import as_mapping, attempt_row, request_row
from clasp_budgets.ledger.settings import LedgerSettings
from clasp_budgets.ledger.tables import ATTEMPT_COLUMNS, REQUEST_COLUMNS
from clasp_budgets.ledger.writer import LedgerWriter
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from clasp_gateway.testing import FakeClock, load_module

support = load_module(Path(__file__).with_name("ledger_support.py"), "clasp_budgets_ledger_support")

DIALECTS = ["sqlite", "postgresql"]


def request_event(n: int, **extra: Any) -> dict[str, Any]:
    event = {
        "kind": "request", "request_id": f"req_{n:06d}", "api": "anthropic", "public_model": "claude-sonnet",
        "deployment": "openai/gpt-4o", "provider": "openai", "model": "gpt-4o", "key_id": "k1", "team": "core",
        "status": 200, "usage": {"input_tokens": 10 + n, "output_tokens": 5}, "cost_usd": 0.001 * n,
        "latency_ms": 12.5, "attempts": [{}], "tags": {"feature": "review"}, "started_at": 1_700_000_000.0 + n,
    }
    event.update(extra)
    return event


def attempt_event(n: int) -> dict[str, Any]:
    return {"kind": "attempt", "request_id": f"req_{n:06d}", "deployment": "openai/gpt-4o", "ok": True,
            "ms": 10.0, "usage": {"input_tokens": 10, "output_tokens": 5}, "cost_usd": 0.001, "started_at": 1.7e9}


def settings(**changes: Any) -> LedgerSettings:
    base = {"batch_size": 50, "flush_interval": 60.0, "retry_interval": 5.0, "write_timeout": 5.0,
            "shutdown_timeout": 10.0, "max_queue": 10_000}
    base.update(changes)
    return LedgerSettings(**base)


@pytest.fixture(params=DIALECTS)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with support.ledger_engine(request.param, tmp_path) as eng:
        yield eng


async def count(engine: AsyncEngine, table: Any = REQUESTS) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(REQUESTS.c.request_id).order_by(REQUESTS.c.ts))).scalars())


def add(writer: LedgerWriter, n: int) -> None:
    writer.add("a", attempt_row(attempt_event(n), 1))
    writer.add("r", request_row(request_event(n), prompt_hash="h" * 64))


def test_rows_have_every_column_in_the_tables_order() -> None:
    """A batch insert takes each row's values in the table's column order: every
    builder gives one value per column, each where its column is (checked here, not
    per row), and the spool's form keys them by the columns' names."""
    assert REQUEST_COLUMNS == tuple(c.name for c in REQUESTS.columns)
    assert ATTEMPT_COLUMNS == tuple(c.name for c in ATTEMPTS.columns)
    row = as_mapping("r", request_row(request_event(7, user="u1", project="p", error="boom", cut=True, stream=True,
                                                    usage={"input_tokens": 17, "output_tokens": 5,
                                                           "cache_read_input_tokens": 3,
                                                           "cache_creation_input_tokens": 2,
                                                           "reasoning_tokens": 1},
                                                    ttfb_ms=3.5, saved_usd=0.25, cache_hit="exact",
                                                    key_name="alice", request_class="coding", region="eu",
                                                    retries=1, fallbacks=2),
                                      prompt_hash="h" * 64))
    assert tuple(row) == REQUEST_COLUMNS
    assert row == {
        "request_id": "req_000007", "ts": 1_700_000_007.0, "api": "anthropic", "public_model": "claude-sonnet",
        "request_class": "coding", "provider": "openai", "model": "gpt-4o", "deployment": "openai/gpt-4o",
        "region": "eu", "key_id": "k1", "key_name": "alice", "team": "core", "user_id": "u1", "project": "p",
        "tags": {"feature": "review"}, "input_tokens": 17, "output_tokens": 5, "cache_read_tokens": 3,
        "cache_write_tokens": 2, "reasoning_tokens": 1, "cost_usd": 0.007, "cache_hit": "exact",
        "saved_usd": 0.25, "ttfb_ms": 3.5, "duration_ms": 12.5, "status": 200, "error": "boom", "cut": True,
        "stream": True, "attempts": 1, "retries": 1, "fallbacks": 2, "prompt_hash": "h" * 64,
    }
    bare = as_mapping("r", request_row({"request_id": "r", "tags": "not a dict"}))
    assert tuple(bare) == REQUEST_COLUMNS and bare["tags"] == {} and bare["status"] == 0
    attempt = as_mapping("a", attempt_row(attempt_event(1) | {"upstream_status": 529, "error": "overloaded",
                                                              "ttfb_ms": 2.0, "model": "gpt-4o",
                                                              "provider": "openai", "region": "eu"}, 3))
    assert attempt == {
        "request_id": "req_000001", "attempt": 3, "ts": 1.7e9, "deployment": "openai/gpt-4o", "provider": "openai",
        "model": "gpt-4o", "region": "eu", "ok": True, "upstream_status": 529, "error": "overloaded", "ms": 10.0,
        "ttfb_ms": 2.0, "input_tokens": 10, "output_tokens": 5, "cost_usd": 0.001,
    }
    assert tuple(as_mapping("a", attempt_row({"request_id": "r"}, 2))) == ATTEMPT_COLUMNS


async def test_batches_and_idempotent_inserts(engine: AsyncEngine, tmp_path: Path) -> None:
    writer = LedgerWriter(engine.begin, engine.dialect.name, settings(), tmp_path / "spool" / "ledger-spool.jsonl")
    for n in range(120):
        add(writer, n)
    assert writer.backlog == 240
    await writer.flush()
    assert writer.backlog == 0
    assert await count(engine) == 120 and await count(engine, ATTEMPTS) == 120
    assert writer.stats.batches == 5 and writer.stats.written == 240
    add(writer, 7)  # the same request again (a replay): no duplicate, no error
    await writer.flush()
    assert await count(engine) == 120
    async with engine.connect() as conn:
        row = (await conn.execute(select(REQUESTS).where(REQUESTS.c.request_id == "req_000003"))).mappings().one()
    assert row["tags"] == {"feature": "review"} and row["input_tokens"] == 13 and row["cost_usd"] == pytest.approx(0.003)
    assert row["prompt_hash"] == "h" * 64 and row["ts"] == 1_700_000_003.0 and row["attempts"] == 1
    await writer.close()


async def _break(dialect: str, engine_url: str, tmp_path: Path) -> tuple[AsyncEngine, Any, Any]:
    """An engine on a database that is down until ``up()``; ``down()`` takes it away again."""
    if dialect == "sqlite":
        folder = tmp_path / "not-yet"
        engine = create_async_engine(f"sqlite+aiosqlite:///{folder / 'ledger.db'}")

        async def up() -> None:
            folder.mkdir()
            async with engine.begin() as conn:
                await conn.run_sync(support.apply_ledger_migration)

        return engine, up, None
    name = await support.create_pg_database()
    engine = create_async_engine(support.pg_url(name))
    await support.drop_pg_database(name)  # down: the database is gone

    async def up_pg() -> None:
        admin = create_async_engine(support.PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        await admin.dispose()
        async with engine.begin() as conn:
            await conn.run_sync(support.apply_ledger_migration)

    async def drop() -> None:
        await engine.dispose()
        await support.drop_pg_database(name)

    return engine, up_pg, drop


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_database_down_then_up(dialect: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine, up, drop = await _break(dialect, "", tmp_path)
    clock = FakeClock()
    base = tmp_path / "data" / "ledger-spool.jsonl"
    writer = LedgerWriter(engine.begin, dialect, settings(), base, clock=clock)
    try:
        for n in range(60):
            add(writer, n)
        with caplog.at_level(logging.WARNING, "clasp.ledger"):
            await writer.flush()
        assert "database is unavailable" in caplog.text
        assert writer.stats.spooled == 120 and writer.stats.written == 0
        lines = writer.spool.path.read_bytes().splitlines()
        assert len(lines) == 120 and orjson.loads(lines[1])["row"]["request_id"] == "req_000000"
        # the spool's form: a JSON object per row, keyed by column, tags an object
        assert orjson.loads(lines[1]) == {"t": "r", "row": as_mapping("r", request_row(request_event(0), "h" * 64))}
        assert orjson.loads(lines[1])["row"]["tags"] == {"feature": "review"}
        # later rows queue behind the spooled ones, even once the database is back
        await up()
        for n in range(60, 70):
            add(writer, n)
        await writer.flush()  # not yet time to try again: spooled, in order
        assert writer.stats.spooled == 140 and await count(engine) == 0
        clock.advance(5.0)
        await writer.flush()
        assert writer.stats.replayed == 140 and not writer.spool.path.exists()
        assert await ids(engine) == [f"req_{n:06d}" for n in range(70)]
        assert await count(engine, ATTEMPTS) == 70
        async with engine.connect() as conn:
            tags = (await conn.execute(select(REQUESTS.c.tags).where(REQUESTS.c.request_id == "req_000003"))).scalar_one()
        assert tags == {"feature": "review"}
        # replaying the same lines again (a crash between the writes and the delete) adds nothing
        writer.spool.path.write_bytes(b"\n".join(lines) + b"\n")
        writer._spool_pending = None
        clock.advance(5.0)
        await writer.flush()
        assert await count(engine) == 70 and not writer.spool.path.exists()
        await writer.close()
    finally:
        if drop is not None:
            await drop()
        else:
            await engine.dispose()


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_close_flushes_and_a_dead_writers_spool_is_adopted(dialect: str, tmp_path: Path) -> None:
    engine, up, drop = await _break(dialect, "", tmp_path)
    base = tmp_path / "data" / "ledger-spool.jsonl"
    try:
        first = LedgerWriter(engine.begin, dialect, settings(shutdown_timeout=5.0), base, clock=FakeClock())
        for n in range(30):
            add(first, n)
        await first.close()  # the database is down: everything goes to the spool, nothing is lost
        assert first.stats.spooled == 60 and first.stats.dropped == 0
        assert first.spool.path.exists() and first.spool.acquire()  # released at close
        first.spool.release()
        await up()
        second = LedgerWriter(engine.begin, dialect, settings(), base, clock=FakeClock())
        add(second, 99)
        await second.flush()
        assert second.stats.replayed == 60 and second.stats.written == 2
        assert not first.spool.path.exists() and not first.spool.lock_path.exists()
        assert await count(engine) == 31
        # a flush at close with the database up writes what is queued
        for n in range(100, 110):
            add(second, n)
        await second.close()
        assert await count(engine) == 41
    finally:
        if drop is not None:
            await drop()
        else:
            await engine.dispose()


async def test_a_live_writers_spool_is_not_adopted(tmp_path: Path) -> None:
    engine, up, _ = await _break("sqlite", "", tmp_path)
    base = tmp_path / "data" / "ledger-spool.jsonl"
    live = LedgerWriter(engine.begin, "sqlite", settings(), base, clock=FakeClock())
    add(live, 1)
    await live.flush()
    assert live.spool.pending()
    await up()
    other = LedgerWriter(engine.begin, "sqlite", settings(), base, clock=FakeClock())
    await other.flush()
    assert other.stats.replayed == 0 and live.spool.pending()
    await other.close()
    await live.close()
    await engine.dispose()


async def test_bounds_are_loud(engine: AsyncEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    writer = LedgerWriter(engine.begin, engine.dialect.name, settings(max_queue=10), tmp_path / "s.jsonl")
    with caplog.at_level(logging.ERROR, "clasp.ledger"):
        for n in range(8):
            add(writer, n)
    assert writer.backlog == 10 and writer.stats.dropped == 6
    assert "LEDGER ROWS LOST: the ledger queue is full" in caplog.text
    await writer.flush()
    assert await count(engine) == 5
    # a full spool drops the batch and says so
    spool = writer.spool
    spool.max_bytes = 4096
    with caplog.at_level(logging.ERROR, "clasp.ledger"):
        assert spool.append([("r", {"x": "y" * 5000})]) == 0
    assert "the spool" in caplog.text and "is full" in caplog.text and spool.dropped == 1
    await writer.close()


async def test_torn_line_and_refused_rows(engine: AsyncEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    writer = LedgerWriter(engine.begin, engine.dialect.name, settings(), tmp_path / "s.jsonl", clock=FakeClock())
    good = as_mapping("r", request_row(request_event(1)))
    bad = as_mapping("r", request_row(request_event(2)))
    bad["status"] = None  # NOT NULL: the database refuses this row, not the batch
    await writer.flush()  # takes the spool's lock
    writer.spool.path.write_bytes(
        orjson.dumps({"t": "r", "row": good}) + b"\n" + orjson.dumps({"t": "r", "row": bad}) + b"\n{\"t\": \"r\", \"ro")
    writer._spool_pending = None
    with caplog.at_level(logging.WARNING, "clasp.ledger"):
        await writer.flush()
    assert "line 3 is not a row" in caplog.text and "refused 1 row(s)" in caplog.text
    assert await ids(engine) == ["req_000001"] and writer.stats.rejected == 1
    rejected = writer.spool.path.with_name(writer.spool.path.name + ".rejected").read_bytes()
    assert b"req_000002" in rejected and not writer.spool.path.exists()
    await writer.close()


async def test_a_batch_stuck_at_shutdown_is_spooled_not_lost(tmp_path: Path) -> None:
    """PostgreSQL with the table locked by another session: the writer's insert hangs;
    the shutdown deadline passes; the batch it was writing goes to the spool, and a
    later writer replays it once the lock is gone."""
    async with support.ledger_engine("postgresql", tmp_path) as engine:
        base = tmp_path / "ledger-spool.jsonl"
        locker = await engine.connect()
        await locker.begin()
        await locker.execute(text("LOCK TABLE ledger_requests IN ACCESS EXCLUSIVE MODE"))
        stuck = LedgerWriter(engine.begin, "postgresql", settings(shutdown_timeout=0.5, flush_interval=0.01), base)
        stuck.start()
        for n in range(5):
            add(stuck, n)
        async with asyncio.timeout(10):
            while stuck.backlog:  # noqa: ASYNC110 (until the task took the batch; it waits for the lock)
                await asyncio.sleep(0.01)
        await stuck.close()
        assert stuck.stats.spooled == 10 and stuck.stats.dropped == 0
        await locker.rollback()
        await locker.close()
        later = LedgerWriter(engine.begin, "postgresql", settings(), base)
        await later.flush()
        assert later.stats.replayed == 10 and await count(engine) == 5
        await later.close()

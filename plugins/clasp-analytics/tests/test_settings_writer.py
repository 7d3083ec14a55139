"""The ``analytics:`` section's checks, and the batched writer when the database fails."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from clasp_analytics.settings import parse_settings
from clasp_analytics.tables import QUALITY
from clasp_analytics.writer import BatchWriter
from sqlalchemy import func, select

from clasp_gateway import ConfigError
from clasp_gateway.testing import config_from, load_module

support = load_module(Path(__file__).with_name("analytics_support.py"), "clasp_analytics_test_support")


def test_defaults_need_no_configuration() -> None:
    settings = parse_settings(config_from({"models": {}}))
    assert settings.metrics.auth == "admin" and not settings.metrics.key_label
    assert settings.quality.retry_window == 300 and settings.export.batch_rows == 2000


@pytest.mark.parametrize(("section", "message"), [
    ({"metrics": {"auht": "none"}}, "analytics.metrics.auht: unknown key; did you mean 'auth'?"),
    ({"metrics": {"auth": "open"}}, "analytics.metrics.auth: expected one of admin, token, none"),
    ({"metrics": {"auth": "token"}}, "analytics.metrics.token: required with auth: token"),
    ({"quality": {"retry_window": "soon"}}, "analytics.quality.retry_window: expected a duration"),
    ({"export": {"batch_rows": 0}}, "analytics.export.batch_rows"),
])
def test_mistakes_are_named(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_settings(config_from({"models": {}, "analytics": section}))
    assert any(message in p for p in raised.value.problems), raised.value.problems


def row(i: int) -> tuple[Any, ...]:
    values = {"request_id": f"w{i}", "ts": 1.0 * i, "status": 200, "error": False, "truncated": False,
              "invalid_tool_json": False}
    return tuple(values.get(column.name) for column in QUALITY.columns)


class FlakyDatabase:
    """The engine, or an outage while ``down`` is set."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.down = False

    def begin(self) -> Any:
        if self.down:
            raise ConnectionRefusedError("database down")
        return self.engine.begin()


def test_rows_wait_out_an_outage_and_are_written_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> int:
        url, _ = await support.create_database("sqlite", tmp_path)
        async with support.engine_at(url) as engine:
            db = FlakyDatabase(engine)
            writer = BatchWriter(db, QUALITY, batch=3, max_pending=5)
            db.down = True
            for i in range(7):
                writer.add(row(i))
            assert await writer.flush() == 0 and await writer.flush() == 0
            assert len(writer.pending) == 5 and writer.dropped == 2  # bounded: the oldest go first
            db.down = False
            assert await writer.flush() == 5
            await writer.close()
            async with engine.connect() as conn:
                return int((await conn.execute(select(func.count()).select_from(QUALITY))).scalar() or 0)

    caplog.set_level(logging.INFO, logger="clasp.analytics")
    assert asyncio.run(go()) == 5
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1  # once per outage
    assert any("works again" in r.getMessage() for r in caplog.records)


def test_a_row_already_written_does_not_block_the_queue(tmp_path: Path) -> None:
    async def go() -> int:
        url, _ = await support.create_database("sqlite", tmp_path)
        async with support.engine_at(url) as engine:
            writer = BatchWriter(FlakyDatabase(engine), QUALITY, batch=10)
            writer.add(row(1))
            await writer.flush()
            for i in (1, 2, 3):  # w1 again, in a batch with new rows
                writer.add(row(i))
            await writer.flush()
            assert not writer.pending
            async with engine.connect() as conn:
                return int((await conn.execute(select(func.count()).select_from(QUALITY))).scalar() or 0)

    assert asyncio.run(go()) == 3


def test_a_row_of_the_wrong_shape_is_dropped_not_queued(caplog: pytest.LogCaptureFixture) -> None:
    writer = BatchWriter(None, QUALITY)
    writer.add(row(1)[:-1])
    writer.add(dict(zip([c.name for c in QUALITY.columns], row(2), strict=True)))  # type: ignore[arg-type]
    writer.add(row(3))
    assert list(writer.pending) == [row(3)] and writer.dropped == 2
    assert any("dropped" in r.getMessage() for r in caplog.records)


def test_a_batch_goes_to_sqlite_as_multi_row_statements(tmp_path: Path) -> None:
    """Not the driver's executemany, which on SQLite releases and retakes the GIL per row
    from aiosqlite's thread (beside a busy event loop, each row waits for it)."""
    from sqlalchemy import event

    async def go() -> tuple[list[tuple[bool, int]], int]:
        url, _ = await support.create_database("sqlite", tmp_path)
        async with support.engine_at(url) as engine:
            calls: list[tuple[bool, int]] = []

            def seen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
                if statement.startswith('INSERT INTO "analytics_quality"'):
                    calls.append((many, statement.count("(?")))

            event.listen(engine.sync_engine, "before_cursor_execute", seen)
            writer = BatchWriter(FlakyDatabase(engine), QUALITY, batch=500)
            for i in range(300):
                writer.add(row(i))
            assert await writer.flush() == 300
            async with engine.connect() as conn:
                return calls, int((await conn.execute(select(func.count()).select_from(QUALITY))).scalar() or 0)

    calls, written = asyncio.run(go())
    assert written == 300
    assert calls == [(False, 256), (False, 32), (False, 8), (False, 4)]  # 300 rows, four statements


class SlowWriter(BatchWriter):
    """A batch that takes a while inside its transaction (a busy database)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inside = asyncio.Event()

    async def _insert(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        await super()._insert(conn, rows)  # the write lock is taken
        self.inside.set()
        await conn.exec_driver_sql(  # ~0.3 s inside the driver, the lock held
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) SELECT count(*) FROM c")


def test_closing_during_a_flush_lets_it_finish_and_loses_nothing(tmp_path: Path) -> None:
    """Shutdown (SIGTERM) while the background flush is inside its transaction: the
    flush ends (a transaction cancelled half-way would hold SQLite's write lock and
    every later write, the ledger's too, would fail after the busy timeout)."""
    async def go() -> tuple[int, int]:
        url, _ = await support.create_database("sqlite", tmp_path)
        async with support.engine_at(url) as engine:
            writer = SlowWriter(FlakyDatabase(engine), QUALITY, interval=0.01)
            for i in range(20):
                writer.add(row(i))
            writer.start()
            await asyncio.wait_for(writer.inside.wait(), 5)
            writer.add(row(20))  # arrived while the batch was being written
            await asyncio.wait_for(writer.close(), 10)
            async with engine.begin() as conn:  # the write lock is free
                count = int((await conn.execute(select(func.count()).select_from(QUALITY))).scalar() or 0)
            return count, len(writer.pending)

    assert asyncio.run(go()) == (21, 0)


class HeldWriter(BatchWriter):
    """A batch held inside its transaction until the test lets it go."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inside = asyncio.Event()
        self.go_on = asyncio.Event()
        self.batches: list[int] = []

    async def _insert(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        self.batches.append(len(rows))
        await super()._insert(conn, rows)
        self.inside.set()
        await self.go_on.wait()


def test_a_flush_writes_what_was_queued_when_it_began_not_what_comes_during_it(tmp_path: Path) -> None:
    """Rows queued while a flush writes wait for the next one. A flush that took them
    too never ended under steady traffic: one small transaction after another (each a
    dozen round trips to the driver's thread), instead of one batch per interval."""
    async def go() -> tuple[list[int], int, int, int]:
        url, _ = await support.create_database("sqlite", tmp_path)
        async with support.engine_at(url) as engine:
            writer = HeldWriter(FlakyDatabase(engine), QUALITY, batch=4)
            for i in range(6):
                writer.add(row(i))
            flushing = asyncio.create_task(writer.flush())
            await asyncio.wait_for(writer.inside.wait(), 5)  # the first batch of 4 is in
            for i in range(6, 9):
                writer.add(row(i))  # arrive while it writes
            writer.go_on.set()
            written = await asyncio.wait_for(flushing, 5)
            left = len(writer.pending)
            second = await writer.flush()
            return writer.batches, written, left, second

    batches, written, left, second = asyncio.run(go())
    assert written == 6 and batches[:2] == [4, 2]  # the 6 queued at the start, in batches of 4
    assert left == 3 and second == 3 and batches[2:] == [3]

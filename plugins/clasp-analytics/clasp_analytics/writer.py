"""Rows written off the hot path: queued per request, inserted in batches.

A request adds its quality row to a bounded in-memory queue (no I/O, no await); a
background task inserts what is queued every ``interval`` seconds or as soon as
``batch`` rows wait, in one transaction. While the database is down the rows stay
queued (up to ``max_pending``; past that the oldest are dropped and counted), the
failure is logged once per outage, and the next flush retries. ``close`` (the app's
shutdown, SIGTERM included) flushes what is left.

A row is a tuple of the table's values in its column order, built by the request that
makes it (cheaper than a dict keyed by column, and what the driver takes): a batch
goes to the driver as those tuples are, with :class:`clasp_gateway.BulkInsert`'s
statements (built once; on SQLite multi-row ones), not SQLAlchemy's per-row
parameter processing. So the values must be what the columns take
without conversion (``int``, ``float``, ``str``, ``bool``, ``None``), and the table
has no JSON column.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from sqlalchemy import JSON, Table
from sqlalchemy.exc import IntegrityError

from clasp_gateway import BulkInsert

log = logging.getLogger("clasp.analytics")


CLOSE_WAIT = 10.0
"""Seconds ``close`` waits for a flush in progress to end before it gives up on it (as
the ledger's ``shutdown_timeout``)."""


class BatchWriter:
    """Inserts rows (tuples in ``table``'s column order) into ``table`` through
    ``database`` (a ``clasp_gateway.Database``)."""

    def __init__(self, database: Any, table: Table, *, interval: float = 1.0, batch: int = 500,
                 max_pending: int = 50_000) -> None:
        if any(isinstance(column.type, JSON) for column in table.columns):
            raise ValueError(f"{table.name}: a JSON column needs its values serialised (BulkInsert.execute)")
        self.database = database
        self.table = table
        self.insert = BulkInsert(table)
        self.width = len(table.columns)
        """Values per row."""
        self.interval = interval
        self.batch = batch
        self.pending: deque[tuple[Any, ...]] = deque()
        self.max_pending = max_pending
        self.dropped = 0
        self.failing = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closing = False

    def add(self, row: tuple[Any, ...]) -> None:
        """Queue a row (never blocks, never raises). A row that is not a tuple of the
        table's width (a bug) is dropped and logged here: in a batch it would fail every
        retry of it."""
        if type(row) is not tuple or len(row) != self.width:
            log.error("analytics: a %s row that is not %d values dropped: %.200r", self.table.name, self.width, row)
            self.dropped += 1
            return
        if len(self.pending) >= self.max_pending:
            self.pending.popleft()
            self.dropped += 1
        self.pending.append(row)
        if len(self.pending) >= self.batch:
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._task = asyncio.create_task(self._loop(), name=f"clasp-analytics-{self.table.name}")

    async def _loop(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            if not self._closing:  # (close flushes what is left)
                await self.flush()

    async def flush(self) -> int:
        """Insert the rows queued when it is called; returns how many were written (0
        when the database failed: the rows stay queued for the next flush). Rows queued
        while it writes wait for the next flush: taking them too, a flush under steady
        traffic never ended, one small transaction after another as each came back (a
        transaction's round trips to aiosqlite's thread take milliseconds on a busy
        loop), instead of one per ``interval``: ~15 transactions a second of ~10 rows
        each, where one of ~300 does (``run_bench.py``'s team gateway)."""
        async with self._lock:
            written = 0
            left = len(self.pending)
            while left > 0 and self.pending:
                rows = [self.pending[i] for i in range(min(self.batch, left, len(self.pending)))]
                try:
                    async with self.database.begin() as conn:
                        await self._insert(conn, rows)
                except IntegrityError:
                    # A row already there (a flush whose commit answer was lost): write the
                    # batch row by row and drop the duplicates, or it would block the queue.
                    await self._one_by_one(rows)
                except Exception as exc:
                    if not self.failing:
                        log.error("analytics: writing %s failed (%d rows kept, retried every %gs): %s: %s",
                                  self.table.name, len(self.pending), self.interval, type(exc).__name__, exc)
                    self.failing = True
                    return written
                if self.failing:
                    log.info("analytics: writing %s works again", self.table.name)
                    self.failing = False
                for _ in rows:
                    self.pending.popleft()
                written += len(rows)
                left -= len(rows)
            return written

    async def _insert(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        # Multi-row statements on SQLite: the driver's executemany there releases and
        # retakes the GIL per row from aiosqlite's thread, so beside a busy event loop
        # each row waited for it (bench/bulk_gil.py: ~5 ms of CPU a row).
        await self.insert.execute_values(conn, rows)

    async def _one_by_one(self, rows: list[tuple[Any, ...]]) -> None:
        for row in rows:
            try:
                async with self.database.begin() as conn:
                    await self._insert(conn, [row])
            except IntegrityError:
                log.debug("analytics: %s row already written, dropped", self.table.name)

    async def close(self) -> None:
        """Stop the loop and write what is left (once; the database may be gone)."""
        # The loop is told to stop and waited for, not cancelled: cancelled in the middle
        # of a flush, a transaction leaves its connection holding SQLite's write lock (every
        # later write, this flush's and the ledger's, waits for it until it fails); and
        # asyncio.wait_for on Python 3.11 can swallow a cancellation, so a cancelled
        # loop may never end.
        self._closing = True
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=CLOSE_WAIT)
            if not done:  # a flush stuck on the database: its rows stay queued
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        await self.flush()
        if self.pending:
            log.error("analytics: %d %s rows could not be written at shutdown", len(self.pending), self.table.name)

"""The ledger writer: rows queued in memory, written in batches off the hot path.

``add`` (called by the ``record`` hook) only appends to a bounded in-memory queue and,
when a batch is full, wakes the writer task: no I/O on the request's path. The task
writes a batch when ``batch_size`` rows wait or ``flush_interval`` passed, both
tables in one transaction, with inserts that ignore an existing primary key (so a
replayed row is never duplicated), each table's rows handed to the driver as they are
(:meth:`clasp_gateway.BulkInsert.execute_values`: the rows are already tuples in column
order, :mod:`.rows`; on SQLite a few multi-row statements, on PostgreSQL one
``executemany``).

Nothing is lost while the process lives or is stopped cleanly:
- the database down (an error or a write slower than ``write_timeout``): the batch
  goes to the local :class:`~.spool.Spool` (fsync'd), and while the spool holds rows
  every later batch goes there too, behind them, so the ledger keeps their order;
  every ``retry_interval`` the writer replays the spool into the database, in order,
  then deletes it;
- the database slower than the traffic (the queue past half of ``max_queue``):
  batches go straight to the spool, which is fast; only past ``max_queue`` (the disk
  slow too) are new rows refused, each counted in ``stats.dropped`` and logged as an
  error;
- shutdown (SIGTERM): :meth:`close` flushes within ``shutdown_timeout``; what the
  database did not take by then is spooled, and the next start replays it;
- a crash (SIGKILL): a batch the database committed, or the spool fsync'd, survives;
  rows still in memory are lost (at most ``flush_interval`` worth).

Rows the database refuses for what they are (not because it is down) are written
to ``<spool>.rejected`` and logged, so one bad row cannot block the spool forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from clasp_gateway import BulkInsert

from .rows import Values, as_mapping
from .settings import LedgerSettings
from .spool import Row, Spool, spool_file
from .tables import ATTEMPTS, REQUESTS

log = logging.getLogger("clasp.ledger")

Begin = Callable[[], contextlib.AbstractAsyncContextManager[AsyncConnection]]
"""``engine.begin`` or ``Database.begin``: a connection in a transaction."""
Queued = tuple[str, Values]
"""``("r", request_row)`` or ``("a", attempt_row)``: a row as :mod:`.rows` builds it
(the spool keeps the same rows as JSON objects: :data:`.spool.Row`)."""


@dataclass(slots=True)
class WriterStats:
    """Counters for metrics and tests (rows, not batches, unless named so)."""

    queued: int = 0
    written: int = 0
    batches: int = 0
    spooled: int = 0
    replayed: int = 0
    dropped: int = 0
    rejected: int = 0
    write_failures: int = 0


_DOWN = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, OSError, TimeoutError, ConnectionError)


def _is_down(error: BaseException) -> bool:
    """Whether ``error`` says the database is unreachable (rather than a bad row)."""
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, sa_exc.DBAPIError):
        # asyncpg's "database does not exist", "connection closed"... arrive wrapped as
        # ProgrammingError or InternalError by some paths; only integrity and data
        # errors are about the rows themselves.
        return not isinstance(error, (sa_exc.IntegrityError, sa_exc.DataError))
    return isinstance(error, _DOWN)


class LedgerWriter:
    """Queue ledger rows and write them in batches (see the module docstring)."""

    def __init__(
        self,
        begin: Begin,
        dialect: str,
        settings: LedgerSettings,
        spool_path: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._begin = begin
        self.dialect = dialect  # informative: the statements follow each connection's own dialect
        # Built once: each batch goes to the driver as it is, per table (no per-row
        # SQLAlchemy parameter processing: most of the writer's CPU otherwise).
        self._requests = BulkInsert(REQUESTS, ignore_conflicts=True)
        self._attempts = BulkInsert(ATTEMPTS, ignore_conflicts=True)
        self.settings = settings
        # This writer's own spool; other (dead) processes' spools are adopted on replay.
        self.spool = Spool(spool_file(spool_path, f"{os.getpid()}-{uuid.uuid4().hex[:6]}"),
                           settings.spool_max_bytes)
        self._orphans: list[Spool] | None = None  # found on the first flush
        self.clock = clock
        self.stats = WriterStats()
        self._queue: deque[Queued] = deque()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._next_try = 0.0  # when the database may be tried again (clock)
        self._spool_pending: bool | None = None  # unknown until the spool is looked at

    # --- the hot path ------------------------------------------------------------------

    def add(self, kind: str, row: Values) -> None:
        """Queue one row (``"r"``: ``ledger_requests``, ``"a"``: ``ledger_attempts``).
        Never blocks and never raises for a full queue: a row beyond ``max_queue`` is
        dropped, counted and logged (the writer task spools a queue that fills)."""
        if len(self._queue) >= self.settings.max_queue:
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 1000 == 0:
                log.error("LEDGER ROWS LOST: the ledger queue is full (%d rows): %d row(s) dropped so far",
                          self.settings.max_queue, self.stats.dropped)
            return
        self._queue.append((kind, row))
        self.stats.queued += 1
        if len(self._queue) >= self.settings.batch_size:
            self._wake.set()

    @property
    def backlog(self) -> int:
        """Rows waiting in memory."""
        return len(self._queue)

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="clasp-ledger-writer")

    async def close(self) -> None:
        """Stop the task and flush what is queued within ``shutdown_timeout``; what
        the database has not taken by then goes to the spool."""
        self._closing = True
        self._wake.set()
        try:
            async with asyncio.timeout(self.settings.shutdown_timeout):
                if self._task is not None:  # let it end the batch it is writing
                    await asyncio.shield(self._task)
                await self.flush()
        except TimeoutError:
            log.warning("ledger: the database did not take the last rows within %.1fs: spooling %d row(s)",
                        self.settings.shutdown_timeout, len(self._queue))
        if self._task is not None:
            self._task.cancel()  # a batch it was writing went back to the queue
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue:
            rows = list(self._queue)
            self._queue.clear()
            await asyncio.to_thread(self._spool_rows, rows)
        await asyncio.to_thread(self.release)

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.flush_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush(once=len(self._queue) < self.settings.batch_size * 2)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop the writer: the rows stay queued
                log.exception("ledger: the writer failed; retrying")

    # --- writing -----------------------------------------------------------------------

    async def flush(self, *, once: bool = False) -> None:
        """Write what is queued (one batch when ``once``), and replay the spools
        when the database may be back."""
        async with self._lock:
            if self._orphans is None:
                await asyncio.to_thread(self.spool.acquire)
                self._orphans = await asyncio.to_thread(self.spool.orphans)
                if self._orphans:
                    log.warning("ledger: %d spool(s) left by stopped processes: replaying them", len(self._orphans))
            while True:
                if (self._orphans or await self._spool_has_rows()) and self.clock() >= self._next_try:
                    await self._replay()
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.settings.batch_size))]
                try:
                    if await self._spool_has_rows() or len(self._queue) > self.settings.max_queue // 2:
                        # behind the older rows; or the database is too slow for the traffic
                        await asyncio.to_thread(self._spool_rows, batch)
                    elif not await self._write(batch):
                        await asyncio.to_thread(self._spool_rows, batch)
                except asyncio.CancelledError:
                    # Not lost: back to the front of the queue (written or spooled at close;
                    # written twice at worst, which the insert ignores).
                    self._queue.extendleft(reversed(batch))
                    raise
                if once:
                    return

    async def _spool_has_rows(self) -> bool:
        if self._spool_pending is None:
            self._spool_pending = await asyncio.to_thread(self.spool.pending)
        return self._spool_pending

    def _spool_rows(self, rows: list[Queued]) -> None:
        kept = self.spool.append([(kind, as_mapping(kind, row)) for kind, row in rows])
        self.stats.spooled += kept
        self.stats.dropped += len(rows) - kept
        if kept:
            self._spool_pending = True

    async def _write(self, batch: list[Queued], *, replay: bool = False) -> bool:
        """Insert ``batch``; ``False`` when the database is down (the caller spools
        it). Rows refused for what they are go to the rejected file."""
        requests = [row for kind, row in batch if kind == "r"]
        attempts = [row for kind, row in batch if kind == "a"]
        try:
            async with asyncio.timeout(self.settings.write_timeout):
                async with self._begin() as conn:
                    await self._requests.execute_values(conn, requests)
                    await self._attempts.execute_values(conn, attempts)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self.stats.write_failures += 1
            if _is_down(error):
                self._next_try = self.clock() + self.settings.retry_interval
                log.warning("ledger: the database is unavailable (%s: %s): %d row(s) to the spool %s",
                            type(error).__name__, str(error).splitlines()[0][:300] if str(error) else "",
                            len(batch), self.spool.path)
                return False
            if len(batch) > 1:  # find the bad row(s): the others go in
                for item in batch:
                    if not await self._write([item], replay=replay):
                        return False
                return True
            await asyncio.to_thread(self._reject, batch, error)
            return True
        if replay:
            self.stats.replayed += len(batch)
        else:
            self.stats.written += len(batch)
        self.stats.batches += 1
        return True

    def _reject(self, batch: list[Queued], error: BaseException) -> None:
        self.stats.rejected += len(batch)
        path = self.spool.path.with_name(self.spool.path.name + ".rejected")
        log.error("ledger: the database refused %d row(s) (%s: %s); kept in %s",
                  len(batch), type(error).__name__, str(error).splitlines()[0][:300] if str(error) else "", path)
        with path.open("ab") as handle:
            for kind, row in batch:
                handle.write(orjson.dumps({"t": kind, "row": as_mapping(kind, row)}) + b"\n")

    async def _replay(self) -> None:
        """Write the spools into the database in order (dead processes' first), each
        deleted once all its rows went in. Stops at the first batch the database
        cannot take (tried again after ``retry_interval``)."""
        while self._orphans:
            orphan = self._orphans[0]
            if not await self._replay_one(orphan):
                return
            await asyncio.to_thread(orphan.clear)
            await asyncio.to_thread(orphan.release, remove=True)
            self._orphans.pop(0)
        if await self._spool_has_rows() and await self._replay_one(self.spool):
            await asyncio.to_thread(self.spool.clear)
            self._spool_pending = False

    async def _replay_one(self, spool: Spool) -> bool:
        batches = spool.batches(self.settings.batch_size)
        count = 0
        try:
            while True:
                spooled = await asyncio.to_thread(next, batches, None)
                if spooled is None:
                    break
                if not await self._write(self._values(spooled), replay=True):
                    return False
                count += len(spooled)
        finally:
            await asyncio.to_thread(batches.close)
        if count:
            log.warning("ledger: the database took %d spooled row(s) from %s", count, spool.path)
        return True

    def _values(self, spooled: list[Row]) -> list[Queued]:
        """Spooled rows (JSON objects; a column one lacks: NULL) as the queue holds them."""
        return [(kind, (self._requests if kind == "r" else self._attempts).values(row)) for kind, row in spooled]

    def release(self) -> None:
        """Let this writer's spool lock go (at close): a spool still holding rows is
        then replayed by the next writer (the next start, or another worker)."""
        empty = not self.spool.pending()
        self.spool.release(remove=empty)
        for orphan in self._orphans or ():
            orphan.release()

"""State in one SQLite file, shared by the processes of one machine (``server.workers`` > 1).

Why SQLite: it is in the standard library, atomic across processes (one writer at a
time, readers never blocked in WAL mode), and fast enough for what runs per request
(``bench/state_bench.py``: tens of microseconds per operation). The state is
ephemeral (TTLs everywhere, a fresh file per ``clasp serve`` run by default, on tmpfs
when there is one), so durability is switched off (``synchronous=OFF``).

Nothing blocks the event loop: each backend has one thread and one connection, and
every operation runs there (:class:`_Worker`: a queue in, ``call_soon_threadsafe`` out,
about half the CPU of ``run_in_executor`` per operation). Atomic operations are write
transactions (``BEGIN IMMEDIATE``); a lock held longer than ``timeout`` by another
process is an outage (:class:`StateUnavailable`, logged once). Pub/sub is a small
table polled every :attr:`SqliteState.poll_interval` seconds while someone subscribes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import orjson

from ..sqlite_wal import OPEN_WAIT, enable_wal
from . import Handler, Script, ScriptArg, StateBackend, Subscription
from .memory import deliver
from .outage import Outage, StateUnavailable

log = logging.getLogger("clasp.state")

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scopes (scope TEXT NOT NULL, key TEXT NOT NULL, expires REAL,
                                   PRIMARY KEY (scope, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL,
                                     payload BLOB NOT NULL, at REAL NOT NULL);
"""

SWEEP_EVERY = 30.0
"""Seconds between deletions of expired keys and old messages (per process)."""
MESSAGES_KEPT = 60.0
"""Seconds a published message stays in the table (pollers read it well before)."""

_UPSERT = ("INSERT INTO kv (key, value, expires) VALUES (?, ?, ?) "
           "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires")
_LIVE = "(expires IS NULL OR expires > ?)"


class _Worker:
    """One thread that runs submitted functions in order and hands each result back to
    its event loop: the lightest thread handoff (no concurrent.futures machinery)."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]] | None]
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._started = False
        self.stopped = False

    def submit(self, work: Callable[[], T]) -> asyncio.Future[T]:
        if self.stopped:
            raise RuntimeError("the state thread has stopped")
        if not self._started:
            self._started = True
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((loop, future, work))
        return future

    def stop(self) -> None:
        """Finish what is queued, then end the thread (not waited for)."""
        self.stopped = True
        if self._started:
            self._queue.put(None)

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            loop, future, work = item
            try:
                result, error = work(), None
            except BaseException as exc:  # handed to the awaiting task
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_resolve, future, result, error)
            except RuntimeError:  # that loop is closed: nobody waits any more
                pass


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class SqliteState(StateBackend):
    """State in the SQLite file at ``path``; ``clock`` is wall-clock seconds (shared by
    every process; injectable for tests)."""

    kind = "sqlite"
    shared = True
    label = "SQLite"
    poll_interval = 0.2
    """Seconds between reads of the messages table while there are subscribers."""

    def __init__(self, path: str, *, prefix: str = "clasp:", timeout: float = 0.25,
                 clock: Callable[[], float] = time.time, remove_on_close: bool = False) -> None:
        super().__init__(prefix=prefix)
        self.path = os.path.abspath(path)
        self.remove_on_close = remove_on_close
        """Delete the file on close (a fresh file this process chose for one run)."""
        self.timeout = timeout
        self.clock = clock
        self._worker = _Worker("clasp-state-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._outage = Outage(self.label, self.path)
        self._next_sweep = 0.0
        self._subscribers: dict[str, list[Subscription]] = {}
        self._last_id: int | None = None
        self._poller: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def url(self) -> str:
        return self.path

    @property
    def outage(self) -> bool:
        return self._outage.down

    # --- the thread --------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """Open the file (in the backend's thread): WAL, no fsync, the schema."""
        # A generous timeout while workers start together and create the schema.
        wait = max(OPEN_WAIT, self.timeout)
        conn = sqlite3.connect(self.path, timeout=wait, isolation_level=None, check_same_thread=False)
        try:
            enable_wal(conn.execute, wait=wait)  # another worker opening the file at once: wait for it
            conn.execute("PRAGMA synchronous=OFF")
            conn.executescript(SCHEMA)
            conn.execute(f"PRAGMA busy_timeout={max(1, int(self.timeout * 1000))}")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _in_thread(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self._conn = self._connect()
        result = work(self._conn)
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + SWEEP_EVERY
            self._sweep(self._conn)
        return result

    def _sweep(self, conn: sqlite3.Connection) -> None:
        now = self.clock()
        with contextlib.suppress(sqlite3.Error):  # busy now: the next sweep will do
            conn.execute("DELETE FROM kv WHERE expires IS NOT NULL AND expires <= ?", (now,))
            conn.execute("DELETE FROM scopes WHERE expires IS NOT NULL AND expires <= ?", (now,))
            conn.execute("DELETE FROM messages WHERE at < ?", (now - MESSAGES_KEPT,))

    async def _call(self, work: Callable[[sqlite3.Connection], T], what: str) -> T:
        """Run ``work(connection)`` in the thread, with the outage policy."""
        if self._closed:
            raise StateUnavailable(f"the SQLite state at {self.path} is closed")
        self._outage.check()
        try:
            result = await self._worker.submit(partial(self._in_thread, work))
        except sqlite3.Error as exc:
            raise self._outage.failed(exc, what) from None
        except RuntimeError as exc:  # the thread was stopped under us (closing)
            raise StateUnavailable(f"the SQLite state at {self.path} is closed ({exc})") from None
        self._outage.succeeded()
        return result

    @staticmethod
    def _transaction(conn: sqlite3.Connection, work: Callable[[], T]) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    # --- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Create the file and its tables (an error is logged once; calls then raise)."""
        with contextlib.suppress(StateUnavailable):
            await self._call(lambda conn: None, "opening the state file")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        self._subscribers.clear()

        def close_connection() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        with contextlib.suppress(sqlite3.Error, RuntimeError):
            await self._worker.submit(close_connection)
        self._worker.stop()
        if self.remove_on_close:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path + suffix)

    # --- values --------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        full = self.prefix + key

        def read(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(f"SELECT value FROM kv WHERE key = ? AND {_LIVE}", (full, self.clock())).fetchone()
            return None if row is None else bytes(row[0])

        return await self._call(read, "reading a key")

    async def set(
        self, key: str, value: bytes | str, *, ttl: float | None = None, if_absent: bool = False,
        scopes: Sequence[str] = (),
    ) -> bool:
        if ttl is not None and ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds or None, got {ttl!r}")
        full = self.prefix + key
        data = value.encode() if isinstance(value, str) else bytes(value)
        scope_keys = [self.prefix + s for s in scopes]

        def write(conn: sqlite3.Connection) -> bool:
            now = self.clock()
            expires = now + ttl if ttl is not None else None
            if not scope_keys:
                if not if_absent:
                    conn.execute(_UPSERT, (full, data, expires))
                    return True
                # One statement, so atomic: replaces only an expired entry.
                cursor = conn.execute(
                    "INSERT INTO kv (key, value, expires) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                    "value = excluded.value, expires = excluded.expires WHERE kv.expires IS NOT NULL AND kv.expires <= ?",
                    (full, data, expires, now),
                )
                return cursor.rowcount == 1

            def scoped() -> bool:
                if if_absent and conn.execute(f"SELECT 1 FROM kv WHERE key = ? AND {_LIVE}", (full, now)).fetchone():
                    return False
                conn.execute(_UPSERT, (full, data, expires))
                conn.executemany(
                    "INSERT INTO scopes (scope, key, expires) VALUES (?, ?, ?) "
                    "ON CONFLICT (scope, key) DO UPDATE SET expires = excluded.expires",
                    [(s, full, expires) for s in scope_keys],
                )
                return True

            return self._transaction(conn, scoped)

        return await self._call(write, "storing a key")

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        full = [self.prefix + k for k in keys]
        marks = ",".join("?" * len(full))

        def remove(conn: sqlite3.Connection) -> int:
            def both() -> int:
                found = conn.execute(f"DELETE FROM kv WHERE key IN ({marks}) AND {_LIVE}", (*full, self.clock())).rowcount
                conn.execute(f"DELETE FROM kv WHERE key IN ({marks})", full)
                return int(found)

            return self._transaction(conn, both)

        return await self._call(remove, "deleting keys")

    async def delete_prefix(self, prefix: str) -> int:
        start = self.prefix + prefix
        end = _after_prefix(start)
        bound = "key >= ?" + (" AND key < ?" if end is not None else "")
        params: tuple[str, ...] = (start, end) if end is not None else (start,)

        def remove(conn: sqlite3.Connection) -> int:
            def both() -> int:
                found = conn.execute(f"DELETE FROM kv WHERE {bound} AND {_LIVE}", (*params, self.clock())).rowcount
                conn.execute(f"DELETE FROM kv WHERE {bound}", params)
                return int(found)

            return self._transaction(conn, both)

        return await self._call(remove, "deleting keys by prefix")

    async def delete_scope(self, scope: str) -> int:
        full = self.prefix + scope

        def remove(conn: sqlite3.Connection) -> int:
            members = "SELECT key FROM scopes WHERE scope = ?"

            def all_members() -> int:
                found = conn.execute(f"DELETE FROM kv WHERE key IN ({members}) AND {_LIVE}", (full, self.clock())).rowcount
                conn.execute(f"DELETE FROM kv WHERE key IN ({members})", (full,))
                conn.execute("DELETE FROM scopes WHERE scope = ?", (full,))
                return int(found)

            return self._transaction(conn, all_members)

        return await self._call(remove, "deleting a scope")

    async def run(self, script: Script[T], keys: Sequence[str], args: Sequence[ScriptArg] = ()) -> T:
        full = [self.prefix + k for k in keys]

        def execute(conn: sqlite3.Connection) -> T:
            return self._transaction(conn, lambda: script.python(_SqliteTx(conn, self.clock()), full, args))

        return await self._call(execute, f"running {script.name}")

    # --- pub/sub -------------------------------------------------------------------------

    async def publish(self, channel: str, message: bytes | str) -> None:
        row = (self.prefix + channel, message.encode() if isinstance(message, str) else bytes(message), self.clock())
        await self._call(lambda conn: conn.execute("INSERT INTO messages (channel, payload, at) VALUES (?, ?, ?)", row),
                         "publishing a message")

    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        if self._closed:
            raise StateUnavailable(f"the SQLite state at {self.path} is closed")
        subscription = Subscription(channel, handler, self)
        if self._last_id is None:
            with contextlib.suppress(StateUnavailable):  # in an outage: the first poll starts the count
                self._last_id = await self._call(_last_message_id, "subscribing")
        self._subscribers.setdefault(self.prefix + channel, []).append(subscription)
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="clasp-state-sqlite-poll")
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        full = self.prefix + subscription.channel
        subscribers = self._subscribers.get(full, [])
        if subscription in subscribers:
            subscribers.remove(subscription)
        if not subscribers:
            self._subscribers.pop(full, None)

    async def _poll(self) -> None:
        """Read new messages every ``poll_interval`` and hand them to subscribers."""
        while not self._closed:
            await asyncio.sleep(self.poll_interval)
            if not self._subscribers:
                continue
            try:
                if self._last_id is None:
                    self._last_id = await self._call(_last_message_id, "reading published messages")
                    continue
                rows = await self._call(partial(_messages_after, self._last_id), "reading published messages")
            except StateUnavailable:
                continue
            for ident, channel, payload in rows:
                self._last_id = max(self._last_id or 0, int(ident))
                subscribers = self._subscribers.get(channel)
                if subscribers:
                    await deliver(list(subscribers), bytes(payload))


def _messages_after(last_id: int, conn: sqlite3.Connection) -> list[Any]:
    return conn.execute(
        "SELECT id, channel, payload FROM messages WHERE id > ? ORDER BY id LIMIT 1000", (last_id,)).fetchall()


def _last_message_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0])


def _after_prefix(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix``
    (None: there is none), for an index range scan."""
    stripped = prefix.rstrip("\U0010ffff")
    if not stripped:
        return None
    last = ord(stripped[-1]) + 1
    if 0xD800 <= last <= 0xDFFF:
        last = 0xE000
    return stripped[:-1] + chr(last)


class _SqliteTx:
    """:class:`~clasp_gateway.state.ScriptTx` inside a write transaction (the backend's thread)."""

    __slots__ = ("conn", "_now")

    def __init__(self, conn: sqlite3.Connection, now: float) -> None:
        self.conn = conn
        self._now = now

    def now(self) -> float:
        return self._now

    def get(self, key: str) -> bytes | None:
        row = self.conn.execute(f"SELECT value FROM kv WHERE key = ? AND {_LIVE}", (key, self._now)).fetchone()
        return None if row is None else bytes(row[0])

    def set(self, key: str, value: bytes | str, *, ttl: float | None = None, keep_ttl: bool = False) -> None:
        data = value.encode() if isinstance(value, str) else bytes(value)
        if keep_ttl:
            self.conn.execute(
                "INSERT INTO kv (key, value, expires) VALUES (?, ?, NULL) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, data))
            return
        self.conn.execute(_UPSERT, (key, data, self._now + ttl if ttl is not None else None))

    def delete(self, key: str) -> None:
        self.conn.execute("DELETE FROM kv WHERE key = ?", (key,))

    def get_json(self, key: str) -> Any:
        raw = self.get(key)
        return None if raw is None else orjson.loads(raw)

    def set_json(self, key: str, value: Any, *, ttl: float | None = None, keep_ttl: bool = False) -> None:
        self.set(key, orjson.dumps(value), ttl=ttl, keep_ttl=keep_ttl)


__all__ = ["SqliteState"]

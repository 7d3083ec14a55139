"""The gateway's database: SQLAlchemy 2 async Core over SQLite (aiosqlite) or
PostgreSQL (asyncpg), for records plugins keep (ledger, virtual keys, analytics).

One :class:`Database` per gateway (``gateway.database``), built from ``storage:``:

- a bounded pool (``pool_size`` + ``max_overflow`` connections, ``pool_timeout`` to get
  one, ``pool_recycle``), a connect timeout, and on PostgreSQL a statement timeout: a
  slow or unreachable database costs a bounded wait, never a hung worker;
- SQLite in WAL mode (readers never wait for the writer) with a busy timeout (a
  writer waits for another process's write, up to ``busy_timeout``), foreign keys on,
  and real transactions: SQLAlchemy's recipe for pysqlite's legacy transaction
  handling (``BEGIN`` emitted by us, so DDL and SAVEPOINTs are transactional), and
  ``BEGIN IMMEDIATE`` for :meth:`Database.begin`, so a write transaction takes the
  write lock first and waits for it instead of failing mid-way with "database is
  locked" when another process committed in between;
- the URL's password never in a log line or an error: :attr:`Database.url` is the
  safe form, and errors raised while connecting say which database by that form.

SQLAlchemy is imported when the first :class:`Database` is built, never at start-up of
a gateway that has no plugin needing one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..sqlite_wal import OPEN_WAIT, enable_wal
from .settings import StorageSettings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from ..registrations import MigrationRegistration

log = logging.getLogger("clasp.storage")

_BEGIN = "clasp_sqlite_begin"
"""Execution option: how a SQLite transaction begins (``DEFERRED`` or ``IMMEDIATE``)."""


class DatabaseError(RuntimeError):
    """The database cannot be used (unreachable, refused, a migration failed). The
    message names the database by its safe URL, never its password."""


class Database:
    """SQLAlchemy async Core over the ``storage:`` section.

    ``async with db.begin() as conn`` runs a transaction (committed at the end, rolled
    back on an exception); ``async with db.connect() as conn`` lends a connection
    (autobegin; call ``await conn.commit()``). :attr:`engine` is the ``AsyncEngine``,
    :attr:`dialect` ``"sqlite"`` or ``"postgresql"``. :meth:`upgrade` brings every
    registered migration branch to its head (the gateway does it at start-up unless
    ``storage.auto_migrate: false``).

    Write portable SQL (``sqlalchemy.Table`` objects on a plugin's own ``MetaData``,
    ``insert()``/``select()``): the same plugin runs on SQLite for one machine and on
    PostgreSQL for a team.
    """

    def __init__(self, settings: StorageSettings, migrations: Sequence[MigrationRegistration] = ()) -> None:
        self.settings = settings
        self.migrations = list(migrations)
        self._engine: AsyncEngine | None = None

    # --- what it is --------------------------------------------------------------------------

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.settings.dialect

    @property
    def url(self) -> str:
        """The database URL without its password (safe to log and show)."""
        return self.settings.safe_url

    def __repr__(self) -> str:
        return f"Database({self.url!r})"

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy ``AsyncEngine`` (built on first use; connects lazily)."""
        if self._engine is None:
            self._engine = self._create_engine()
        return self._engine

    def _create_engine(self) -> AsyncEngine:
        from sqlalchemy import event
        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy.pool import AsyncAdaptedQueuePool
        from sqlalchemy.util import await_only

        s = self.settings
        connect_args: dict[str, Any]
        if s.dialect == "sqlite":
            self._prepare_sqlite_dir()
            _adapt_bools()
            # sqlite3's own timeout is its busy handler; check_same_thread: aiosqlite's thread.
            connect_args = {"timeout": s.busy_timeout, "check_same_thread": False}
        else:
            connect_args = {
                "timeout": s.connect_timeout,
                "command_timeout": s.statement_timeout,
                "server_settings": {"application_name": "clasp-gateway",
                                    "statement_timeout": str(int(s.statement_timeout * 1000))},
            }
        engine = create_async_engine(
            s.url,
            poolclass=AsyncAdaptedQueuePool,
            pool_size=s.pool_size,
            max_overflow=s.max_overflow,
            pool_timeout=s.pool_timeout,
            pool_recycle=int(s.pool_recycle),
            pool_pre_ping=s.dialect == "postgresql",  # a connection a restart or a balancer dropped
            hide_parameters=True,  # a failed statement's values (keys, prompts) stay out of errors
            connect_args=connect_args,
        )
        if s.dialect == "sqlite":
            busy_ms = int(s.busy_timeout * 1000)

            def _pause(seconds: float) -> None:
                await_only(asyncio.sleep(seconds))

            @event.listens_for(engine.sync_engine, "connect")
            def _on_connect(dbapi_connection: Any, _record: Any) -> None:
                # We emit BEGIN ourselves (below): pysqlite's implicit transactions would
                # commit before DDL and ignore SAVEPOINT semantics.
                dbapi_connection.isolation_level = None
                cursor = dbapi_connection.cursor()
                try:
                    # Another worker opening the file at once fails this without a busy
                    # wait: retry, pausing through the event loop (this runs in its greenlet).
                    enable_wal(cursor.execute, wait=max(OPEN_WAIT, s.busy_timeout), sleep=_pause)
                    cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
                    cursor.execute("PRAGMA foreign_keys=ON")
                    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, fast commits
                finally:
                    cursor.close()

            @event.listens_for(engine.sync_engine, "begin")
            def _on_begin(conn: Any) -> None:
                mode = conn.get_execution_options().get(_BEGIN, "DEFERRED")
                conn.exec_driver_sql(f"BEGIN {mode}")

        return engine

    def _prepare_sqlite_dir(self) -> None:
        path = self.settings.url.split(":///", 1)[1].split("?", 1)[0]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)

    # --- using it ----------------------------------------------------------------------------

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction, committed when the block ends (rolled back
        if it raises). On SQLite it begins ``IMMEDIATE``: it holds the write lock from
        the start, waiting up to ``busy_timeout`` for it."""
        async with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                await conn.execution_options(**{_BEGIN: "IMMEDIATE"})
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection from the pool (autobegin: ``await conn.commit()`` to keep
        writes), returned when the block ends. For reads, or several transactions."""
        async with self.engine.connect() as conn:
            yield conn

    # --- lifecycle ---------------------------------------------------------------------------

    async def check(self) -> None:
        """Raise :class:`DatabaseError` (naming the database by its safe URL and the
        driver's reason) unless the database answers a query."""
        try:
            from sqlalchemy import text

            async with self.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            raise DatabaseError(f"the database at {self.url} cannot be used: {describe_error(exc)}") from None

    async def open(self) -> None:
        """Check the database answers (:meth:`check`) and, with ``auto_migrate``,
        upgrade every registered branch."""
        await self.check()
        if not self.migrations:
            return
        if self.settings.auto_migrate:
            await self.upgrade()
            return
        from .migrations import heads

        found, latest = await self.current(), heads(self.migrations)
        behind = [f"{name} at {found.get(name) or 'nothing'} (latest {head})"
                  for name, head in latest.items() if found.get(name) != head]
        if behind:  # a plugin querying a table it expects will fail: say why now, once
            log.warning("database %s is behind its plugins: %s; run `clasp db upgrade` (storage.auto_migrate is "
                        "false)", self.url, ", ".join(behind))

    async def upgrade(self) -> dict[str, str | None]:
        """Upgrade every registered branch to its head; returns each branch's revision
        after. Safe to call from several processes at once: on PostgreSQL they take
        turns behind an advisory lock, on SQLite behind the write lock."""
        from .migrations import upgrade

        return await upgrade(self)

    async def current(self) -> dict[str, str | None]:
        """Each registered branch's revision in the database (``None``: not created)."""
        from .migrations import current

        return await current(self)

    async def dispose(self) -> None:
        """Close every pooled connection (the gateway does it in ``close``)."""
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


def _adapt_bools() -> None:
    """Bind ``bool`` parameters through a registered adapter (``int``: what SQLite stores
    for them anyway). Without one, Python's ``sqlite3`` looks for an adapter protocol on
    every ``bool`` it binds, and that lookup raises and clears an ``AttributeError``
    each time: the ledger's and analytics' rows carry six booleans per request, and
    those failed lookups were a measurable share of what a request's rows cost (see
    ``bench/README.md``). Process-wide and idempotent; the values stored are the same."""
    import sqlite3

    sqlite3.register_adapter(bool, int)


def describe_error(exc: BaseException) -> str:
    """A database error for a person: its type and first line, without the SQL
    SQLAlchemy appends, redacted (a driver may quote its connection string)."""
    from ..redact import redact

    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()[0] if str(original).strip() else ""
    return redact(f"{type(original).__name__}: {text}" if text else type(original).__name__)

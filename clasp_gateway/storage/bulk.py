"""Batch inserts through the database driver: pre-built statements, a few driver calls.

Background writers (the ledger, analytics' quality rows) insert hundreds of rows per
batch. SQLAlchemy's ``conn.execute(table.insert(), rows)`` processes every parameter of
every row in Python (bind processors, key lookups, the compiled cache) before handing
the batch to the driver; for a 30-column row that is most of the writer's CPU. A
:class:`BulkInsert` builds the ``INSERT`` text once for the dialect (``?`` for SQLite,
``$n`` for asyncpg), turns each row into a tuple with one C-level ``itemgetter`` call,
serialises its JSON columns with orjson, and runs ``exec_driver_sql`` inside the
caller's transaction: on PostgreSQL the driver's own ``executemany`` (asyncpg runs it on
the event loop), on SQLite multi-row ``INSERT ... VALUES (...), (...)`` statements.

Why not ``executemany`` on SQLite: Python's ``sqlite3`` releases the GIL around every
row's step and takes it back for the next row's parameters. aiosqlite runs the driver in
its own thread, so under traffic each row waits for the event loop's thread to let go of
the GIL (up to the 5 ms switch interval) and forces a switch back. ``bench/bulk_gil.py``:
a batch of 300 ledger rows beside an event loop busy with Python work took ~10 s and
~5 ms of the driver thread's CPU a row, against 15 ms and 17 µs a row as multi-row
statements (~12 µs a row either way beside an idle loop). A multi-row statement is one
step: one release however many rows. Statements hold
:data:`SQLITE_ROWS` rows at most, split in power-of-two sizes (the same few statement
texts every batch, so SQLite's statement cache keeps them prepared).

What the rows must hold is what the columns take without conversion: ``int``,
``float``, ``str``, ``bool`` or ``None``; a JSON column any orjson-serialisable value
(written as JSON text, which both drivers accept: SQLAlchemy's asyncpg codecs take
JSON as text). Errors are SQLAlchemy's usual wrappers (``IntegrityError``,
``OperationalError``...), as from ``conn.execute``.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Iterable, Mapping
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # SQLAlchemy is imported only by a gateway that uses a database
    from sqlalchemy import Table
    from sqlalchemy.ext.asyncio import AsyncConnection


SQLITE_ROWS = 256
"""Rows in one multi-row statement on SQLite at most (fewer when a row has so many
columns that SQLite's limit on parameters, :func:`sqlite_parameters`, comes first)."""


@functools.cache
def sqlite_parameters() -> int:
    """How many parameters one statement may have in the SQLite library Python links
    (``SQLITE_LIMIT_VARIABLE_NUMBER``: 32766 by default since 3.32, 999 before; a build
    may set another)."""
    try:
        with contextlib.closing(sqlite3.connect(":memory:")) as probe:
            return probe.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    except (AttributeError, sqlite3.Error):  # (no getlimit before Python 3.11)
        return 999


class BulkInsert:
    """``INSERT INTO table (columns) VALUES (...)``; ``ignore_conflicts`` adds ``ON
    CONFLICT DO NOTHING`` (a replayed row whose primary key is already there is
    skipped). The statement text is built once per dialect (the connection's: SQLite
    or PostgreSQL), and on SQLite once per number of rows, on first use."""

    __slots__ = ("columns", "table", "ignore_conflicts", "_sql", "_get", "_json", "_multi", "_sqlite_rows")

    def __init__(self, table: Table, *, ignore_conflicts: bool = False) -> None:
        from sqlalchemy import JSON

        self.table = table
        self.ignore_conflicts = ignore_conflicts
        self.columns: tuple[str, ...] = tuple(c.name for c in table.columns)
        first = self.columns[0]
        self._get: Any = itemgetter(*self.columns) if len(self.columns) > 1 else (lambda row: (row[first],))
        self._json = tuple(i for i, c in enumerate(table.columns) if isinstance(c.type, JSON))
        self._sql: dict[str, str] = {}
        self._multi: dict[int, str] = {}
        """SQLite statements by their number of rows (powers of two)."""
        rows = min(SQLITE_ROWS, max(1, sqlite_parameters() // len(self.columns)))
        self._sqlite_rows = 1 << (rows.bit_length() - 1)  # a power of two

    def sql(self, dialect: str) -> str:
        """The statement's text for ``dialect`` (``sqlite``: ``?`` marks; ``postgresql``:
        ``$n``, asyncpg's)."""
        text = self._sql.get(dialect)
        if text is None:
            if dialect == "sqlite":
                marks = ", ".join("?" for _ in self.columns)
            elif dialect == "postgresql":
                marks = ", ".join(f"${i}" for i in range(1, len(self.columns) + 1))
            else:
                raise ValueError(f"no bulk insert for the {dialect!r} dialect")
            text = self._sql[dialect] = self._statement(f"({marks})")
        return text

    def values(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """One row's values in column order (a column the row lacks: NULL), JSON
        columns as text."""
        try:
            values = self._get(row)
        except KeyError:
            values = tuple(row.get(name) for name in self.columns)
        if not self._json:
            return values  # type: ignore[no-any-return]
        out = list(values)
        for i in self._json:
            value = out[i]
            if value is not None:
                out[i] = orjson.dumps(value).decode()
        return tuple(out)

    def sqlite_sql(self, rows: int) -> str:
        """The SQLite statement inserting ``rows`` rows (its parameters: the rows'
        values one after another)."""
        text = self._multi.get(rows)
        if text is None:
            row = "(" + ", ".join("?" for _ in self.columns) + ")"
            text = self._multi[rows] = self._statement(", ".join([row] * rows))
        return text

    def _statement(self, values: str) -> str:
        names = ", ".join(f'"{name}"' for name in self.columns)
        text = f'INSERT INTO "{self.table.name}" ({names}) VALUES {values}'
        return text + " ON CONFLICT DO NOTHING" if self.ignore_conflicts else text

    async def execute(self, conn: AsyncConnection, rows: Iterable[Mapping[str, Any]]) -> None:
        """Insert ``rows`` on ``conn`` (in its transaction)."""
        await self.execute_values(conn, [self.values(row) for row in rows])

    async def execute_values(self, conn: AsyncConnection, values: list[tuple[Any, ...]]) -> None:
        """Insert rows already in the form :meth:`values` gives (every column, in order,
        JSON columns as text) on ``conn``: for a writer that builds its rows as tuples
        on the request path, so a batch costs no per-row conversion at all. On SQLite,
        a few multi-row statements (see the module docstring); elsewhere one
        ``executemany``."""
        if not values:
            return
        dialect = conn.dialect.name
        if dialect != "sqlite":
            await conn.exec_driver_sql(self.sql(dialect), values)
            return
        start, left, size = 0, len(values), self._sqlite_rows
        while left:
            while size > left:
                size >>= 1
            part = values[start:start + size]
            await conn.exec_driver_sql(self.sqlite_sql(size), tuple(chain.from_iterable(part)))
            start += size
            left -= size

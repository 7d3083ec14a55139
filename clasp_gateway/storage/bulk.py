"""Batch inserts through the database driver: one pre-built statement, one executemany.

Background writers (the ledger, analytics' quality rows) insert hundreds of rows per
batch. SQLAlchemy's ``conn.execute(table.insert(), rows)`` processes every parameter of
every row in Python (bind processors, key lookups, the compiled cache) before handing
the batch to the driver; for a 30-column row that is most of the writer's CPU. A
:class:`BulkInsert` builds the ``INSERT`` text once for the dialect (``?`` for SQLite,
``$n`` for asyncpg), turns each row into a tuple with one C-level ``itemgetter`` call,
serialises its JSON columns with orjson, and runs ``exec_driver_sql`` (the driver's own
``executemany``), inside the caller's transaction.

What the rows must hold is what the columns take without conversion: ``int``,
``float``, ``str``, ``bool`` or ``None``; a JSON column any orjson-serialisable value
(written as JSON text, which both drivers accept: SQLAlchemy's asyncpg codecs take
JSON as text). Errors are SQLAlchemy's usual wrappers (``IntegrityError``,
``OperationalError``...), as from ``conn.execute``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # SQLAlchemy is imported only by a gateway that uses a database
    from sqlalchemy import Table
    from sqlalchemy.ext.asyncio import AsyncConnection


class BulkInsert:
    """``INSERT INTO table (columns) VALUES (...)``; ``ignore_conflicts`` adds ``ON
    CONFLICT DO NOTHING`` (a replayed row whose primary key is already there is
    skipped). The statement text is built once per dialect (the connection's: SQLite
    or PostgreSQL), on first use."""

    __slots__ = ("columns", "table", "ignore_conflicts", "_sql", "_get", "_json")

    def __init__(self, table: Table, *, ignore_conflicts: bool = False) -> None:
        from sqlalchemy import JSON

        self.table = table
        self.ignore_conflicts = ignore_conflicts
        self.columns: tuple[str, ...] = tuple(c.name for c in table.columns)
        first = self.columns[0]
        self._get: Any = itemgetter(*self.columns) if len(self.columns) > 1 else (lambda row: (row[first],))
        self._json = tuple(i for i, c in enumerate(table.columns) if isinstance(c.type, JSON))
        self._sql: dict[str, str] = {}

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
            names = ", ".join(f'"{name}"' for name in self.columns)
            text = f'INSERT INTO "{self.table.name}" ({names}) VALUES ({marks})'
            if self.ignore_conflicts:
                text += " ON CONFLICT DO NOTHING"
            self._sql[dialect] = text
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

    async def execute(self, conn: AsyncConnection, rows: Iterable[Mapping[str, Any]]) -> None:
        """Insert ``rows`` on ``conn`` (in its transaction): one driver ``executemany``."""
        await self.execute_values(conn, [self.values(row) for row in rows])

    async def execute_values(self, conn: AsyncConnection, values: list[tuple[Any, ...]]) -> None:
        """Insert rows already in the form :meth:`values` gives (every column, in order,
        JSON columns as text) on ``conn``: for a writer that builds its rows as tuples
        on the request path, so a batch costs no per-row conversion at all."""
        if values:
            await conn.exec_driver_sql(self.sql(conn.dialect.name), values)

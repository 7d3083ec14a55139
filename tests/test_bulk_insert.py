"""``BulkInsert`` (clasp_gateway/storage/bulk.py): a background writer's batch through
the driver's executemany, on SQLite and PostgreSQL, read back through SQLAlchemy."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from clasp_gateway import BulkInsert
from clasp_gateway.storage import bulk
from clasp_gateway.storage.settings import async_url


def table() -> sa.Table:
    """A fresh table per test (the module's database is shared by its tests)."""
    return sa.Table(
        f"bulk_{uuid.uuid4().hex[:8]}", sa.MetaData(),
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("tags", sa.JSON),
        sa.Column("note", sa.Text),
    )


def row(i: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"r{i}", "ts": 1.5 * i, "count": i, "ok": i % 2 == 0, "tags": {"team": f"t{i}", "é": "ü"},
            "note": None, **extra}


async def test_rows_go_in_as_sqlalchemy_reads_them(database_url: str) -> None:
    engine = create_async_engine(async_url(database_url) or "")
    t = table()
    insert = BulkInsert(t, ignore_conflicts=True)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(t.metadata.create_all)
        async with engine.begin() as conn:
            await insert.execute(conn, [row(1), row(2, note="second"), row(3, tags=None)])
            # A column a row lacks is NULL (the row dict needs only the ones it has).
            await insert.execute(conn, [{"id": "partial", "ts": 0.0, "count": 0, "ok": False}])
            await insert.execute(conn, [])  # nothing to do: no statement
            # Rows already in the form values() gives (column order, JSON as text).
            await insert.execute_values(conn, [("v5", 7.5, 5, True, '{"team":"t5"}', "tuple"), insert.values(row(6))])
            await insert.execute_values(conn, [])
        async with engine.begin() as conn:  # a replayed row is skipped, the new one goes in
            await insert.execute(conn, [row(1, note="again"), row(4)])
        async with engine.connect() as conn:
            got = {r.id: r for r in (await conn.execute(sa.select(t))).all()}
    finally:
        await engine.dispose()
    assert sorted(got) == ["partial", "r1", "r2", "r3", "r4", "r6", "v5"]
    assert (got["v5"].ts, got["v5"].ok, got["v5"].tags, got["v5"].note) == (7.5, True, {"team": "t5"}, "tuple")
    assert got["r6"].tags == {"team": "t6", "é": "ü"}
    one = got["r1"]
    assert (one.ts, one.count, one.ok, one.tags, one.note) == (1.5, 1, False, {"team": "t1", "é": "ü"}, None)
    assert got["r2"].ok is True and got["r2"].note == "second"
    assert got["r3"].tags is None
    assert got["partial"].tags is None and got["partial"].note is None


async def test_a_conflict_is_an_integrity_error_unless_ignored(database_url: str) -> None:
    engine = create_async_engine(async_url(database_url) or "")
    t = table()
    try:
        async with engine.begin() as conn:
            await conn.run_sync(t.metadata.create_all)
            await BulkInsert(t).execute(conn, [row(1)])
        with pytest.raises(sa.exc.IntegrityError):
            async with engine.begin() as conn:
                await BulkInsert(t).execute(conn, [row(2), row(1)])
        async with engine.connect() as conn:  # the failed batch left nothing behind
            assert (await conn.execute(sa.select(sa.func.count()).select_from(t))).scalar() == 1
    finally:
        await engine.dispose()


def test_statement_text_per_dialect() -> None:
    t = table()
    insert = BulkInsert(t, ignore_conflicts=True)
    assert insert.sql("sqlite").endswith('VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING')
    assert insert.sql("postgresql").endswith('VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING')
    assert BulkInsert(t).sql("sqlite").endswith("(?, ?, ?, ?, ?, ?)")
    assert insert.values(row(7))[4] == '{"team":"t7","é":"ü"}'  # JSON columns as text
    with pytest.raises(ValueError, match="mysql"):
        insert.sql("mysql")


async def test_a_large_batch_goes_in_whole_in_few_statements(database_url: str) -> None:
    """On SQLite, multi-row statements of power-of-two sizes (the module docstring:
    ``executemany`` costs a GIL round trip per row beside a busy event loop); on
    PostgreSQL one ``executemany``. Every row arrives as it was sent."""
    engine = create_async_engine(async_url(database_url) or "")
    t = table()
    insert = BulkInsert(t, ignore_conflicts=True)
    statements: list[tuple[int, bool]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.startswith("INSERT"):
            statements.append((statement.count("?") or statement.count("$"), executemany))

    try:
        async with engine.begin() as conn:
            await conn.run_sync(t.metadata.create_all)
        sa.event.listen(engine.sync_engine, "before_cursor_execute", seen)
        async with engine.begin() as conn:
            await insert.execute(conn, [row(i) for i in range(300)])
        async with engine.begin() as conn:  # a replay of some rows with new ones
            await insert.execute(conn, [row(i, note="again") for i in range(290, 310)])
        async with engine.connect() as conn:
            got = {r.id: r for r in (await conn.execute(sa.select(t))).all()}
    finally:
        await engine.dispose()
    assert len(got) == 310
    assert all(got[f"r{i}"].count == i and got[f"r{i}"].ok == (i % 2 == 0) and got[f"r{i}"].ts == 1.5 * i
               for i in range(310))
    assert got["r299"].note is None and got["r300"].note == "again"  # the replayed rows were skipped
    assert got["r7"].tags == {"team": "t7", "é": "ü"}
    if database_url.startswith("sqlite"):
        # 300 = 256 + 32 + 8 + 4 rows; 20 = 16 + 4; six columns each.
        assert statements == [(6 * n, False) for n in (256, 32, 8, 4, 16, 4)]
    else:
        assert [many for _, many in statements] == [True, True]


async def test_rows_wider_than_sqlite_allows_in_one_statement_are_split(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A statement stays within SQLite's limit on parameters (999 before SQLite 3.32,
    as a build may set it): 300 columns, so 2 rows a statement."""
    monkeypatch.setattr(bulk, "sqlite_parameters", lambda: 999)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'wide.db'}")
    t = sa.Table("wide", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                 *(sa.Column(f"c{i}", sa.Integer) for i in range(299)))
    sizes: list[int] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.startswith("INSERT"):
            sizes.append(len(parameters))

    try:
        async with engine.begin() as conn:
            await conn.run_sync(t.metadata.create_all)
        sa.event.listen(engine.sync_engine, "before_cursor_execute", seen)
        async with engine.begin() as conn:
            await BulkInsert(t).execute_values(conn, [(n, *range(299)) for n in range(5)])
            count = (await conn.execute(sa.select(sa.func.count()).select_from(t))).scalar()
            last = (await conn.execute(sa.select(t.c.c298).where(t.c.id == 4))).scalar()
    finally:
        await engine.dispose()
    assert (count, last) == (5, 298)
    assert sizes == [600, 600, 300]


def test_the_parameter_limit_is_the_linked_librarys() -> None:
    assert bulk.sqlite_parameters() >= 999

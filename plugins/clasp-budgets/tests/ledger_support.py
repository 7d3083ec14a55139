"""Helpers shared by the ledger, prices and reports tests (loaded with
``clasp_gateway.testing.load_module``): a fresh database per use on SQLite or
PostgreSQL, with the ledger's migration applied."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from clasp_budgets.ledger import MIGRATIONS
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

PG_ADMIN_URL = os.environ.get("CLASP_TEST_PG_ADMIN", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
"""The server's maintenance database, where each test database is created and dropped."""


def pg_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


async def create_pg_database() -> str:
    """A new, uniquely named PostgreSQL database; returns its name."""
    name = "clasp_ledger_" + uuid.uuid4().hex[:12]
    admin = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    return name


async def drop_pg_database(name: str) -> None:
    admin = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


def apply_ledger_migration(sync_conn: object) -> None:
    """Run the branch ``ledger``'s revisions (``upgrade()``) on a sync connection,
    through Alembic's operations, as the core's env does."""
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    ctx = MigrationContext.configure(sync_conn)  # type: ignore[arg-type]
    with Operations.context(ctx):
        for path in sorted(MIGRATIONS.glob("ledger_*.py")):
            spec = importlib.util.spec_from_file_location(f"_ledger_rev_{path.stem}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            module.upgrade()


@contextlib.asynccontextmanager
async def ledger_engine(dialect: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh database of ``dialect`` (``sqlite`` or ``postgresql``)
    holding the ledger's tables; dropped afterwards."""
    name = None
    if dialect == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / ('ledger-' + uuid.uuid4().hex[:8] + '.db')}"
    else:
        name = await create_pg_database()
        url = pg_url(name)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(apply_ledger_migration)
        yield engine
    finally:
        await engine.dispose()
        if name is not None:
            await drop_pg_database(name)

"""Helpers for clasp-analytics' tests (loaded with ``clasp_gateway.testing.load_module``):
a fresh database on SQLite or PostgreSQL with the ledger's and this plugin's tables, and
a small seeded ledger whose right answers are worked out by hand in the tests.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import clasp_analytics
from clasp_budgets.ledger import MIGRATIONS as LEDGER_MIGRATIONS
from clasp_budgets.ledger import REQUESTS
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from clasp_gateway import hookimpl

PG_ADMIN_URL = os.environ.get("CLASP_TEST_PG_ADMIN", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
ANALYTICS_MIGRATIONS = Path(clasp_analytics.__file__).parent / "migrations"

T0 = 1_764_547_200.0
"""A Monday, 00:00 UTC (2025-12-01): week and day buckets start here; a year before the
tests run, so the requests they make (which the ledger records) never fall in its range."""
H = 3600.0


def _apply(sync_conn: Any, directories: Iterable[Path]) -> None:
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    ctx = MigrationContext.configure(sync_conn)
    with Operations.context(ctx):
        for directory in directories:
            for path in sorted(p for p in directory.glob("*.py") if p.name != "__init__.py"):
                spec = importlib.util.spec_from_file_location(f"_rev_{directory.name}_{path.stem}", path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                module.upgrade()


async def create_database(dialect: str, directory: Path) -> tuple[str, str | None]:
    """A fresh database with the ledger's and analytics' tables: (async URL, the
    PostgreSQL database's name to drop after, or None for SQLite)."""
    name = None
    if dialect == "sqlite":
        url = f"sqlite+aiosqlite:///{directory / ('analytics-' + uuid.uuid4().hex[:8] + '.db')}"
    else:
        name = "clasp_analytics_" + uuid.uuid4().hex[:12]
        admin = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        await admin.dispose()
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_apply, [LEDGER_MIGRATIONS, ANALYTICS_MIGRATIONS])
    finally:
        await engine.dispose()
    return url, name


async def drop_database(name: str | None) -> None:
    if name is None:
        return
    admin = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


@contextlib.asynccontextmanager
async def engine_at(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on ``url``, disposed of after (one per test: engines belong to a loop)."""
    engine = create_async_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


# hours, public, provider, model, deployment, key, team, project, user, class, tags,
# in, out, cache_read, cost, cache_hit, saved, ttfb, duration, status, cut, retries, fallbacks
SEED: list[tuple[Any, ...]] = [
    (1, "gpt-4o", "openai", "gpt-4o", "openai/gpt-4o", "alice", "red", "api", "u1", "coding", {"feature": "review"},
     1000, 200, 100, 0.010, None, 0.0, 200.0, 1000.0, 200, False, 0, 0),
    (2, "gpt-4o", "openai", "gpt-4o", "openai/gpt-4o", "alice", "red", "api", "u1", "coding", {"feature": "review"},
     2000, 400, 0, 0.020, "exact", 0.050, 400.0, 2000.0, 200, False, 0, 0),
    (3, "haiku", "openai", "gpt-4o-mini", "openai/gpt-4o-mini", "bob", "blue", "web", "u2", "background", {},
     500, 50, 0, 0.001, None, 0.0, 100.0, 500.0, 200, False, 0, 0),
    (26, "gpt-4o", "azure", "gpt-4o", "azure/gpt4o", "bob", "blue", "web", "u2", "coding", {"feature": "chat"},
     3000, 0, 0, None, None, 0.0, None, 3000.0, 502, False, 1, 1),
    (27, "gpt-4o", "openai", "gpt-4o", "openai/gpt-4o", "carol", "red", "api", "u3", "question", {"feature": "chat"},
     1500, 300, 0, 0.015, "semantic", 0.015, 300.0, 1500.0, 200, True, 0, 0),
    (193, "haiku", "openai", "gpt-4o-mini", "openai/gpt-4o-mini", "alice", "red", "api", "u1", "background", {},
     400, 40, 0, 0.0008, None, 0.0, 80.0, 400.0, 200, False, 0, 0),
    (194, "gpt-4o", "openai", "gpt-4o", "openai/gpt-4o", "dave", "green", None, "u4", "coding", {"feature": "review"},
     5000, 1000, 500, 0.050, None, 0.0, 500.0, 5000.0, 200, False, 0, 0),
    (195, "gpt-4o", "openai", "gpt-4o", "openai/gpt-4o", "dave", "green", None, "u4", "coding", {},
     100, 0, 0, 0.0, None, 0.0, None, 100.0, 429, False, 2, 0),
]


def seed_rows() -> list[dict[str, Any]]:
    """The seeded ledger rows (request ids ``r1``..``r8``)."""
    rows = []
    for i, s in enumerate(SEED, start=1):
        (hours, public, provider, model, deployment, key, team, project, user, cls, tags,
         inp, out, cache_read, cost, hit, saved, ttfb, duration, status, cut, retries, fallbacks) = s
        rows.append({
            "request_id": f"r{i}", "ts": T0 + hours * H, "api": "anthropic", "public_model": public,
            "request_class": cls, "provider": provider, "model": model, "deployment": deployment, "region": None,
            "key_id": f"id_{key}", "key_name": key, "team": team, "user_id": user, "project": project, "tags": tags,
            "input_tokens": inp, "output_tokens": out, "cache_read_tokens": cache_read, "cache_write_tokens": 0,
            "reasoning_tokens": 0, "cost_usd": cost, "cache_hit": hit, "saved_usd": saved, "ttfb_ms": ttfb,
            "duration_ms": duration, "status": status, "error": "UpstreamError: 502" if status >= 400 else None,
            "cut": cut, "stream": True, "attempts": 1 + retries + fallbacks, "retries": retries,
            "fallbacks": fallbacks,
        })
    return rows


async def seed_ledger(engine: AsyncEngine, rows: list[dict[str, Any]] | None = None) -> None:
    async with engine.begin() as conn:
        await conn.execute(REQUESTS.insert(), rows if rows is not None else seed_rows())


# --- gateways --------------------------------------------------------------------------------

ADMIN_KEY = "sk-analytics-admin-0123456789abcdef0123"
MEMBER_KEY = "sk-analytics-member-0123456789abcdef012"
OTHER_KEY = "sk-analytics-other-0123456789abcdef0123"


class RoleKeys:
    """An ``authenticate`` plugin with an admin key and two member keys (the core's
    static keys gain roles with the admin foundation; this keeps the tests independent of it)."""

    PRINCIPALS = {
        ADMIN_KEY: ("id_admin", "admin-key", "ops", "admin"),
        MEMBER_KEY: ("id_member", "member-key", "red", "member"),
        OTHER_KEY: ("id_other", "other-key", "blue", "member"),
    }

    @staticmethod
    def _principal(api_key: str | None) -> Any:
        from clasp_gateway import AuthenticationError, Principal

        found = RoleKeys.PRINCIPALS.get(api_key or "")
        if found is None:
            raise AuthenticationError("invalid API key")
        key_id, name, team, role = found
        return Principal(key_id=key_id, name=name, team=team, role=role)

    @hookimpl(tryfirst=True)
    def authenticate(self, api_key: str | None, headers: dict[str, str], config: Any) -> Any:
        return self._principal(api_key)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus exposition: (name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def total(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in found.items() if n == name and want <= lab)


def async_url(url: str) -> str:
    """The test fixtures' database URL with the async driver the gateway uses."""
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:"):]
    if url.startswith("postgresql://"):
        return "postgresql+asyncpg://" + url[len("postgresql://"):]
    return url


PLUGINS = "analytics,budgets_ledger,fallback,claude"
"""What these tests load (whatever else is installed): the ledger's tables come from budgets_ledger."""


def seed_into(url: str, rows: list[dict[str, Any]] | None = None) -> None:
    """Seed the ledger of a (migrated) database, from a test's own thread."""
    import asyncio

    async def go() -> None:
        async with engine_at(async_url(url)) as engine:
            await seed_ledger(engine, rows)

    asyncio.run(go())


SECRETS = (ADMIN_KEY, MEMBER_KEY, OTHER_KEY)

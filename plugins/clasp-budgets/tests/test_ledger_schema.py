"""The branch ``ledger`` migration creates exactly the tables the plugin queries
(``clasp_budgets.ledger.tables``), on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from clasp_budgets.ledger import ATTEMPTS, METADATA, MIGRATIONS, REQUESTS

from clasp_gateway.testing import load_module

support = load_module(Path(__file__).with_name("ledger_support.py"), "clasp_budgets_ledger_support")


def _diff(sync_conn: object) -> list[object]:
    ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})  # type: ignore[arg-type]
    return list(compare_metadata(ctx, METADATA))


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_migration_matches_tables(dialect: str, tmp_path: Path) -> None:
    async with support.ledger_engine(dialect, tmp_path) as engine:
        async with engine.connect() as conn:
            diff = await conn.run_sync(_diff)
    assert diff == []


def test_contract_columns() -> None:
    """The columns other plugins rely on (contracts.md), plus ``prompt_hash``."""
    assert [c.name for c in REQUESTS.primary_key] == ["request_id"]
    assert [c.name for c in ATTEMPTS.primary_key] == ["request_id", "attempt"]
    for name in ("ts", "api", "public_model", "request_class", "provider", "model", "deployment", "region",
                 "key_id", "key_name", "team", "user_id", "project", "tags", "input_tokens", "output_tokens",
                 "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd", "cache_hit",
                 "saved_usd", "ttfb_ms", "duration_ms", "status", "error", "cut", "stream", "attempts",
                 "retries", "fallbacks", "prompt_hash"):
        assert name in REQUESTS.c, name
    indexed = {tuple(c.name for c in ix.columns) for ix in REQUESTS.indexes}
    assert {("ts",), ("key_id",), ("team",), ("project",)} <= indexed
    first = (MIGRATIONS / "ledger_0001_tables.py").read_text()
    assert 'branch_labels = ("ledger",)' in first and "down_revision = None" in first

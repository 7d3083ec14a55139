"""ledger: ledger_requests and ledger_attempts

The first revision of the branch ``ledger``: the tables of
:mod:`clasp_budgets.ledger.tables`, written out here (a migration must not change
when the query-side tables do).

Revision ID: ledger_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ledger_0001"
down_revision = None
branch_labels = ("ledger",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_requests",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("api", sa.Text),
        sa.Column("public_model", sa.Text),
        sa.Column("request_class", sa.Text),
        sa.Column("provider", sa.Text),
        sa.Column("model", sa.Text),
        sa.Column("deployment", sa.Text),
        sa.Column("region", sa.Text),
        sa.Column("key_id", sa.Text),
        sa.Column("key_name", sa.Text),
        sa.Column("team", sa.Text),
        sa.Column("user_id", sa.Text),
        sa.Column("project", sa.Text),
        sa.Column("tags", sa.JSON),
        sa.Column("input_tokens", sa.Integer, nullable=False),
        sa.Column("output_tokens", sa.Integer, nullable=False),
        sa.Column("cache_read_tokens", sa.Integer, nullable=False),
        sa.Column("cache_write_tokens", sa.Integer, nullable=False),
        sa.Column("reasoning_tokens", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Float),
        sa.Column("cache_hit", sa.Text),
        sa.Column("saved_usd", sa.Float, nullable=False),
        sa.Column("ttfb_ms", sa.Float),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("cut", sa.Boolean, nullable=False),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("retries", sa.Integer, nullable=False),
        sa.Column("fallbacks", sa.Integer, nullable=False),
        sa.Column("prompt_hash", sa.Text),
    )
    op.create_index("ix_ledger_requests_ts", "ledger_requests", ["ts"])
    op.create_index("ix_ledger_requests_key_id", "ledger_requests", ["key_id"])
    op.create_index("ix_ledger_requests_team", "ledger_requests", ["team"])
    op.create_index("ix_ledger_requests_project", "ledger_requests", ["project"])
    op.create_table(
        "ledger_attempts",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("deployment", sa.Text),
        sa.Column("provider", sa.Text),
        sa.Column("model", sa.Text),
        sa.Column("region", sa.Text),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("upstream_status", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("ms", sa.Float, nullable=False),
        sa.Column("ttfb_ms", sa.Float),
        sa.Column("input_tokens", sa.Integer, nullable=False),
        sa.Column("output_tokens", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Float),
    )
    op.create_index("ix_ledger_attempts_ts", "ledger_attempts", ["ts"])


def downgrade() -> None:
    op.drop_index("ix_ledger_attempts_ts", table_name="ledger_attempts")
    op.drop_table("ledger_attempts")
    for name in ("project", "team", "key_id", "ts"):
        op.drop_index(f"ix_ledger_requests_{name}", table_name="ledger_requests")
    op.drop_table("ledger_requests")

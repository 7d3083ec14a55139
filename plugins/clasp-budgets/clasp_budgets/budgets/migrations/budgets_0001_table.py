"""budgets: the budgets table

The first revision of the branch ``budgets``: budgets created and edited through
``/admin/budgets`` (those of clasp.yaml and of keys' policies are not stored).

Revision ID: budgets_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "budgets_0001"
down_revision = None
branch_labels = ("budgets",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("match", sa.Text),
        sa.Column("usd", sa.Float, nullable=False),
        sa.Column("period", sa.Text, nullable=False),
        sa.Column("mode", sa.Text, nullable=False),
        sa.Column("lower_max_tokens", sa.Boolean, nullable=False),
        sa.Column("min_tokens", sa.Integer, nullable=False),
        sa.Column("on_outage", sa.Text, nullable=False),
        sa.Column("local_cap_usd", sa.Float, nullable=False),
        sa.Column("thresholds", sa.JSON, nullable=False),
        sa.Column("max_wait", sa.Float),
        sa.Column("created_by", sa.Text),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("budgets")

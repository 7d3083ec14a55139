"""analytics: quality signals and feedback tables

Revision ID: analytics_0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "analytics_0001"
down_revision = None
branch_labels = ("analytics",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "analytics_quality",
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("api", sa.String(32)),
        sa.Column("public_model", sa.String(256)),
        sa.Column("request_class", sa.String(64)),
        sa.Column("provider", sa.String(64)),
        sa.Column("model", sa.String(256)),
        sa.Column("deployment", sa.String(256)),
        sa.Column("key_id", sa.String(128)),
        sa.Column("key_name", sa.String(256)),
        sa.Column("team", sa.String(256)),
        sa.Column("project", sa.String(256)),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("error", sa.Boolean, nullable=False),
        sa.Column("truncated", sa.Boolean, nullable=False),
        sa.Column("invalid_tool_json", sa.Boolean, nullable=False),
        sa.Column("fingerprint", sa.String(64)),
        sa.Column("retry_of", sa.String(128)),
    )
    op.create_index("ix_analytics_quality_ts", "analytics_quality", ["ts"])
    op.create_index("ix_analytics_quality_retry_of", "analytics_quality", ["retry_of"])
    op.create_table(
        "analytics_feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("key_id", sa.String(128)),
        sa.Column("by_admin", sa.Boolean, nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("comment", sa.Text),
        sa.Column("metrics", sa.JSON, nullable=False),
    )
    op.create_index("ix_analytics_feedback_request_id", "analytics_feedback", ["request_id"])
    op.create_index("ix_analytics_feedback_ts", "analytics_feedback", ["ts"])


def downgrade() -> None:
    op.drop_table("analytics_feedback")
    op.drop_table("analytics_quality")

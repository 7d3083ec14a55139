"""create toy_notes

Revision ID: n001notes
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "n001notes"
down_revision = None
branch_labels = ("notes",)
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # Widen the window two replicas starting together would race in (tests only).
        op.execute("SELECT pg_sleep(0.3)")
    op.create_table(
        "toy_notes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("toy_notes")

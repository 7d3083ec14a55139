"""create toy_tally

Revision ID: t001tally
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "t001tally"
down_revision = None
branch_labels = ("tally",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "toy_tally",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("toy_tally")

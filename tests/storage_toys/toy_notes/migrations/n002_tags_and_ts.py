"""toy_notes: tags, ts and an index

Revision ID: n002tags
Revises: n001notes
"""

import sqlalchemy as sa
from alembic import op

revision = "n002tags"
down_revision = "n001notes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("toy_notes") as batch:  # batch: SQLite alters by copying the table
        batch.add_column(sa.Column("tags", sa.JSON, nullable=False, server_default="{}"))
        batch.add_column(sa.Column("ts", sa.Float, nullable=False, server_default="0"))
    op.create_index("ix_toy_notes_ts", "toy_notes", ["ts"])


def downgrade() -> None:
    op.drop_index("ix_toy_notes_ts", "toy_notes")
    with op.batch_alter_table("toy_notes") as batch:
        batch.drop_column("ts")
        batch.drop_column("tags")

"""A toy plugin keeping notes: one Alembic branch ``notes`` with two revisions (a
table, then a column and an index), and its ``Table`` for queries."""

from pathlib import Path

import sqlalchemy as sa

from clasp_gateway import MigrationRegistration, RegisterMigrations, hookimpl

METADATA = sa.MetaData()
NOTES = sa.Table(
    "toy_notes", METADATA,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
)


@hookimpl
def register_migrations(register: RegisterMigrations) -> None:
    register(MigrationRegistration(name="notes", directory=Path(__file__).parent / "migrations"))

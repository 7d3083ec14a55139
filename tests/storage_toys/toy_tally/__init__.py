"""A second toy plugin with a branch of its own (``tally``), registered the
``register(name, directory)`` way."""

from pathlib import Path

import sqlalchemy as sa

from clasp_gateway import RegisterMigrations, hookimpl

METADATA = sa.MetaData()
TALLY = sa.Table(
    "toy_tally", METADATA,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)


@hookimpl
def register_migrations(register: RegisterMigrations) -> None:
    register("tally", Path(__file__).parent / "migrations")

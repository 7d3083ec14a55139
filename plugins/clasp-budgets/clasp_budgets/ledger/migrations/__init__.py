"""Alembic version directory of the branch ``ledger`` (Alembic skips this file)."""

"""The tables of virtual keys, teams and the audit log, as SQLAlchemy Core objects.

The migrations in ``migrations/`` create them (Alembic branch ``keys``); these objects
are what queries are written with. Portable types only, so one definition serves SQLite
and PostgreSQL. Times are unix seconds (FLOAT), as in the ledger, so rows compare and
sort the same on both databases and the ledger's ``ts`` joins without conversion.

Policy columns mirror :class:`clasp_gateway.KeyPolicy` on both teams and keys (a team's
are ceilings for each of its keys: the stricter of the two wins, see :mod:`.policy`).
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, Float, Index, Integer, MetaData, String, Table

METADATA = MetaData()


def policy_columns() -> list[Column[object]]:
    """The :class:`clasp_gateway.KeyPolicy` fields as columns (NULL: no limit)."""
    return [
        Column("models", JSON, nullable=True),  # list of globs; NULL or [] = every model
        Column("rpm", Integer, nullable=True),
        Column("tpm", Integer, nullable=True),
        Column("rpd", Integer, nullable=True),
        Column("tpd", Integer, nullable=True),
        Column("max_concurrency", Integer, nullable=True),
        Column("max_budget_usd", Float, nullable=True),
        Column("budget_period", String(16), nullable=True),
        Column("expires_at", Float, nullable=True),
        Column("regions", JSON, nullable=True),
    ]


POLICY_FIELDS = ("models", "rpm", "tpm", "rpd", "tpd", "max_concurrency", "max_budget_usd", "budget_period",
                 "expires_at", "regions")

TEAMS = Table(
    "teams", METADATA,
    Column("name", String(64), primary_key=True),
    *policy_columns(),
    Column("metadata", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
)

KEYS = Table(
    "virtual_keys", METADATA,
    Column("id", String(32), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("display_prefix", String(32), nullable=False),
    Column("name", String(128), nullable=False),
    Column("team", String(64), nullable=True, index=True),
    Column("user_id", String(128), nullable=True),
    Column("role", String(16), nullable=False),
    Column("project", String(128), nullable=True),
    Column("tags", JSON, nullable=False),
    *policy_columns(),
    Column("metadata", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(160), nullable=True),
    Column("revoked_at", Float, nullable=True),
    Column("last_used_at", Float, nullable=True),
)

AUDIT = Table(
    "audit_log", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False, index=True),
    Column("actor_id", String(64), nullable=True),
    Column("actor_name", String(160), nullable=True),
    Column("actor_team", String(64), nullable=True),
    Column("action", String(32), nullable=False),
    Column("target", String(160), nullable=True),
    Column("details", JSON, nullable=False),
)
Index("ix_audit_log_action", AUDIT.c.action)

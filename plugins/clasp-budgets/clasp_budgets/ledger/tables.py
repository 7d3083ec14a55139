"""The spend ledger's tables: one row per request, one per upstream attempt.

These :class:`~sqlalchemy.Table` objects are the query-side description of what the
Alembic branch ``ledger`` (``migrations/``) creates; other plugins (budgets, analytics)
import them from :mod:`clasp_budgets.ledger` to read the ledger, never to change its
shape. Types are portable (SQLite and PostgreSQL): times are unix seconds as floats,
``tags`` is JSON (a dict of str to str).

``prompt_hash`` is a fingerprint of the canonical request (model, system, messages,
tools: a SHA-256 of their canonical JSON), never its text: it lets a report count
repeated prompts that a cache would have served.
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Float, Index, Integer, MetaData, Table, Text

METADATA = MetaData()
"""The ledger's tables (``ledger_requests``, ``ledger_attempts``)."""

REQUESTS = Table(
    "ledger_requests",
    METADATA,
    Column("request_id", Text, primary_key=True),
    Column("ts", Float, nullable=False),  # unix seconds when the request started
    Column("api", Text),
    Column("public_model", Text),
    Column("request_class", Text),
    Column("provider", Text),
    Column("model", Text),
    Column("deployment", Text),
    Column("region", Text),
    Column("key_id", Text),
    Column("key_name", Text),
    Column("team", Text),
    Column("user_id", Text),
    Column("project", Text),
    Column("tags", JSON),
    Column("input_tokens", Integer, nullable=False, default=0),
    Column("output_tokens", Integer, nullable=False, default=0),
    Column("cache_read_tokens", Integer, nullable=False, default=0),
    Column("cache_write_tokens", Integer, nullable=False, default=0),
    Column("reasoning_tokens", Integer, nullable=False, default=0),
    Column("cost_usd", Float),  # NULL: could not be priced
    Column("cache_hit", Text),  # exact | semantic | stale
    Column("saved_usd", Float, nullable=False, default=0.0),
    Column("ttfb_ms", Float),
    Column("duration_ms", Float, nullable=False, default=0.0),
    Column("status", Integer, nullable=False),
    Column("error", Text),
    Column("cut", Boolean, nullable=False, default=False),
    Column("stream", Boolean, nullable=False, default=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("retries", Integer, nullable=False, default=0),
    Column("fallbacks", Integer, nullable=False, default=0),
    Column("prompt_hash", Text),  # a hash of the canonical request, never its text
    Index("ix_ledger_requests_ts", "ts"),
    Index("ix_ledger_requests_key_id", "key_id"),
    Index("ix_ledger_requests_team", "team"),
    Index("ix_ledger_requests_project", "project"),
)
"""``ledger_requests``: one row per request that reached the pipeline."""

ATTEMPTS = Table(
    "ledger_attempts",
    METADATA,
    Column("request_id", Text, primary_key=True),
    Column("attempt", Integer, primary_key=True),  # 1, 2, ... in the order they were made
    Column("ts", Float, nullable=False),
    Column("deployment", Text),
    Column("provider", Text),
    Column("model", Text),
    Column("region", Text),
    Column("ok", Boolean, nullable=False),
    Column("upstream_status", Integer),
    Column("error", Text),
    Column("ms", Float, nullable=False, default=0.0),
    Column("ttfb_ms", Float),
    Column("input_tokens", Integer, nullable=False, default=0),
    Column("output_tokens", Integer, nullable=False, default=0),
    Column("cost_usd", Float),
    Index("ix_ledger_attempts_ts", "ts"),
)
"""``ledger_attempts``: one row per upstream attempt (retries and fallbacks included)."""

REQUEST_COLUMNS: tuple[str, ...] = tuple(str(c.name) for c in REQUESTS.columns)  # plain str: JSON keys (orjson)
ATTEMPT_COLUMNS: tuple[str, ...] = tuple(str(c.name) for c in ATTEMPTS.columns)

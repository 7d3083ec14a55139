"""The analytics plugin's own tables (Alembic branch ``analytics``, ``migrations/``).

- ``analytics_quality``: one row per request the gateway served, with the signals read
  from it (:mod:`.quality`) and who and what served it, so feedback is checked against
  the key that made the request and joined to the model and route without needing the
  ledger plugin.
- ``analytics_feedback``: what ``POST /v1/feedback`` received: a score, a comment and
  named custom metrics (``tests_passed``, ``pr_merged``...), several per request allowed
  (a score now, whether the PR merged tomorrow).

Portable types only: the same tables on SQLite and PostgreSQL. The migration creates
them; these ``Table`` objects are for queries.
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text

METADATA = MetaData()

QUALITY = Table(
    "analytics_quality", METADATA,
    Column("request_id", String(128), primary_key=True),
    Column("ts", Float, nullable=False),
    Column("api", String(32)),
    Column("public_model", String(256)),
    Column("request_class", String(64)),
    Column("provider", String(64)),
    Column("model", String(256)),
    Column("deployment", String(256)),
    Column("key_id", String(128)),
    Column("key_name", String(256)),
    Column("team", String(256)),
    Column("project", String(256)),
    Column("status", Integer, nullable=False),
    Column("error", Boolean, nullable=False),
    Column("truncated", Boolean, nullable=False),
    Column("invalid_tool_json", Boolean, nullable=False),
    Column("fingerprint", String(64)),
    Column("retry_of", String(128)),
    Index("ix_analytics_quality_ts", "ts"),
    Index("ix_analytics_quality_retry_of", "retry_of"),
)

FEEDBACK = Table(
    "analytics_feedback", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False),
    Column("ts", Float, nullable=False),
    Column("key_id", String(128)),
    Column("by_admin", Boolean, nullable=False),
    Column("score", Float),
    Column("comment", Text),
    Column("metrics", JSON, nullable=False),
    Index("ix_analytics_feedback_request_id", "request_id"),
    Index("ix_analytics_feedback_ts", "ts"),
)

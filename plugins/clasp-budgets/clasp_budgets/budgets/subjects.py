"""Whom each per-subject budget applies to, from the records: for listing every team's,
key's, project's or user's budget with its spend, not only those one process happened
to serve.

A budget with ``scope: team`` (or ``key``, ``project``, ``user``) and no ``match`` has
one instance per subject. ``GET /admin/budgets`` lists, besides the subjects named in its
query and those this process served, every subject with spend in the ledger this period
(any replica's) and, for teams and keys, every one in the key store (a team that spent
nothing yet still has its whole budget). Bounded: at most :data:`MAX_SUBJECTS` per
budget, newest spenders first; the answer says when a list was cut.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from ..keys.tables import KEYS, TEAMS
from ..ledger import REQUESTS
from .settings import BudgetSpec

log = logging.getLogger("clasp.budgets")

MAX_SUBJECTS = 1000
LEDGER_COLUMN = {"key": REQUESTS.c.key_id, "team": REQUESTS.c.team, "project": REQUESTS.c.project,
                 "user": REQUESTS.c.user_id}
STORE_COLUMN = {"team": TEAMS.c.name, "key": KEYS.c.id}


async def recorded_subjects(database: Any, wanted: Iterable[tuple[BudgetSpec, float]]) -> tuple[
        dict[str, list[str]], bool]:
    """``{budget name: subjects}`` for each ``(spec, period start)`` of a per-subject
    budget, and whether any list was cut at :data:`MAX_SUBJECTS`. A table that does not
    exist (no ledger, no key store) contributes nothing."""
    found: dict[str, list[str]] = {}
    truncated = False
    async with database.connect() as conn:
        for spec, since in wanted:
            subjects: list[str] = []
            column = LEDGER_COLUMN.get(spec.scope)
            if column is not None:
                query = (sa.select(column).where(REQUESTS.c.ts >= since, column.is_not(None)).group_by(column)
                         .order_by(sa.func.max(REQUESTS.c.ts).desc()).limit(MAX_SUBJECTS + 1))
                subjects += await _values(conn, query)
            stored = STORE_COLUMN.get(spec.scope)
            if stored is not None:
                query = sa.select(stored).order_by(stored).limit(MAX_SUBJECTS + 1)
                if spec.scope == "key":
                    query = query.where(KEYS.c.revoked_at.is_(None))
                subjects += [s for s in await _values(conn, query) if s not in subjects]
            if len(subjects) > MAX_SUBJECTS:
                truncated = True
                subjects = subjects[:MAX_SUBJECTS]
            found[spec.name] = subjects
    return found, truncated


async def _values(conn: Any, query: Any) -> list[str]:
    try:
        return [str(v) for v in (await conn.execute(query)).scalars().all()]
    except SQLAlchemyError as exc:  # a table this gateway does not have (no ledger, no keys plugin)
        log.debug("budgets: subjects not listed from a missing table (%s)", type(exc).__name__)
        await conn.rollback()
        return []

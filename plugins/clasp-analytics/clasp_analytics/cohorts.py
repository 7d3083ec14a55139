"""Cohort views over the ledger: by key, team, project or user, and by first-seen week.

- ``by=key|team|project|user``: one row per key (by name), team, project or user: when it
  was first and last seen, its active days, requests, errors, tokens and spend in the range.
- ``by=first_seen_week``: keys grouped by the week (Monday, UTC) of their first request
  ever, and for each later week how many of them were active and what they spent: the
  retention and spend triangle a team lead reads adoption from. ``entity=team|project|user``
  groups those instead of keys.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select

from clasp_gateway import InvalidRequestError

from .filters import Filters
from .reports import WEEK_OFFSET, bucket_of, ledger

WEEK = 7 * 86400
ENTITIES = {"key": "key_name", "team": "team", "project": "project", "user": "user_id"}
VIEWS = (*ENTITIES, "first_seen_week")
MAX_ROWS = 5000


def _week(column: Any) -> Any:
    return bucket_of(column, WEEK, WEEK_OFFSET)


async def cohorts(database: Any, filters: Filters, by: str, entity: str = "key") -> dict[str, Any]:
    """The cohort view ``by`` (see the module docstring)."""
    if by not in VIEWS:
        raise InvalidRequestError(f"by: expected one of {', '.join(VIEWS)}")
    if entity not in ENTITIES:
        raise InvalidRequestError(f"entity: expected one of {', '.join(ENTITIES)}")
    if by == "first_seen_week":
        return await _first_seen_weeks(database, filters, entity)
    t = ledger()
    c = t.c
    column = c[ENTITIES[by]]
    day = bucket_of(c.ts, 86400)
    query = filters.apply(select(
        column.label("value"),
        func.min(c.ts).label("first_seen"),
        func.max(c.ts).label("last_seen"),
        func.count(func.distinct(day)).label("active_days"),
        func.count().label("requests"),
        func.coalesce(func.sum(case((c.status >= 400, 1), else_=0)), 0).label("errors"),
        func.coalesce(func.sum(c.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(c.output_tokens), 0).label("output_tokens"),
        func.coalesce(func.sum(c.cost_usd), 0.0).label("cost_usd"),
    ), t).where(column.is_not(None)).group_by(column)
    async with database.connect() as conn:
        rows = [dict(r) for r in (await conn.execute(query)).mappings()]
    for row in rows:
        row["cost_usd"] = round(float(row["cost_usd"]), 6)
        for name in ("active_days", "requests", "errors", "input_tokens", "output_tokens"):
            row[name] = int(row[name])
    rows.sort(key=lambda r: (-r["cost_usd"], -r["requests"], str(r["value"])))
    return {"filters": filters.describe(), "by": by, "rows": rows[:MAX_ROWS], "truncated": len(rows) > MAX_ROWS}


async def _first_seen_weeks(database: Any, filters: Filters, entity: str) -> dict[str, Any]:
    t = ledger()
    c = t.c
    column = c[ENTITIES[entity]]
    first_seen = select(column.label("entity"), func.min(c.ts).label("first_ts")).where(
        column.is_not(None)).group_by(column).subquery()
    week = _week(c.ts).label("week")
    active = filters.apply(select(
        column.label("entity"),
        week,
        func.count().label("requests"),
        func.coalesce(func.sum(c.cost_usd), 0.0).label("cost_usd"),
    ), t).where(column.is_not(None)).group_by(column, week).subquery()
    firsts = select(first_seen.c.entity, _week(first_seen.c.first_ts).label("cohort")).subquery()
    query = select(
        firsts.c.cohort, active.c.week, func.count().label("active"),
        func.sum(active.c.requests).label("requests"), func.sum(active.c.cost_usd).label("cost_usd"),
    ).select_from(active.join(firsts, active.c.entity == firsts.c.entity)).group_by(
        firsts.c.cohort, active.c.week).order_by(firsts.c.cohort, active.c.week)
    sizes_query = select(firsts.c.cohort, func.count().label("size")).group_by(firsts.c.cohort)
    async with database.connect() as conn:
        sizes = {int(r.cohort): int(r.size) for r in await conn.execute(sizes_query)}
        rows = []
        for r in await conn.execute(query):
            cohort, week = int(r.cohort), int(r.week)
            rows.append({"cohort_week": cohort, "week": week, "weeks_since": (week - cohort) // WEEK,
                         "cohort_size": sizes.get(cohort, 0), "active": int(r.active), "requests": int(r.requests),
                         "cost_usd": round(float(r.cost_usd), 6)})
    return {"filters": filters.describe(), "by": "first_seen_week", "entity": entity, "rows": rows[:MAX_ROWS],
            "truncated": len(rows) > MAX_ROWS}

"""Projection of spend to the end of each budget period.

Method (linear on the period's run rate): for a UTC calendar period (``daily`` from
00:00, ``weekly`` from Monday 00:00, ``monthly`` from the 1st), the spend so far
divided by the time elapsed since the period started, times the period's length:
``projected = spent / elapsed * length``. Early in a period the figure moves a lot
(one expensive request in the first minutes of a month projects a large month): the
answer carries ``elapsed_fraction`` so a reader can weigh it. Where a budget is
known (a static key's ``max_budget_usd`` with its ``budget_period``), the row says
the limit and whether the projection exceeds it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from clasp_budgets.ledger import REQUESTS

from .filters import ReportError, Scope, column, where

PERIODS = ("daily", "weekly", "monthly")
METHOD = ("linear: spend since the period started / time elapsed * the period's length "
          "(UTC calendar periods: daily from 00:00, weekly from Monday, monthly from the 1st)")


def period_bounds(period: str, now: float) -> tuple[float, float]:
    """``(start, end)`` in unix seconds of the UTC ``period`` holding ``now``."""
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        start, end = day, day + dt.timedelta(days=1)
    elif period == "weekly":
        start = day - dt.timedelta(days=day.weekday())
        end = start + dt.timedelta(days=7)
    elif period == "monthly":
        start = day.replace(day=1)
        end = (start + dt.timedelta(days=32)).replace(day=1)
    else:
        raise ReportError(f"period: expected one of {', '.join(PERIODS)}, got {period!r}")
    return start.timestamp(), end.timestamp()


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def projection(
    conn: AsyncConnection,
    scope: Scope,
    now: float,
    periods: tuple[str, ...] = PERIODS,
    budgets: dict[tuple[str, str, str], float] | None = None,
) -> dict[str, Any]:
    """Per period: the total and, by ``scope.by`` (e.g. ``key``, ``team``), each
    group's spend so far and projection. ``budgets``: ``(dimension, value, period)``
    -> limit in USD, for the rows that have one. ``scope.since``/``until`` are
    ignored: each period sets its own range."""
    dialect = conn.dialect.name
    budgets = budgets or {}
    out: dict[str, Any] = {"method": METHOD, "now": _iso(now), "periods": []}
    for period in periods:
        start, end = period_bounds(period, now)
        elapsed = max(now - start, 1.0)
        factor = (end - start) / elapsed
        ranged = Scope(dict(scope.filters), start, now + 1e-6, list(scope.by), None, dict(scope.forced))
        condition = where(ranged, dialect)
        spent = func.sum(func.coalesce(REQUESTS.c.cost_usd, 0.0))
        total = float((await conn.execute(select(spent).where(condition))).scalar() or 0.0)
        entry: dict[str, Any] = {
            "period": period, "start": _iso(start), "end": _iso(end),
            "elapsed_fraction": round(elapsed / (end - start), 6),
            "spent_usd": round(total, 10), "projected_usd": round(total * factor, 10), "groups": [],
        }
        if scope.by:
            keys = [column(name, dialect).label(name) for name in scope.by]
            query = (select(*keys, spent.label("spent")).where(condition).group_by(*[k.element for k in keys])
                     .order_by(spent.desc()).limit(10_000))
            for row in (await conn.execute(query)).mappings():
                spent_usd = float(row["spent"] or 0.0)
                group: dict[str, Any] = {name: row[name] for name in scope.by}
                group.update(spent_usd=round(spent_usd, 10), projected_usd=round(spent_usd * factor, 10))
                for name in scope.by:
                    limit = budgets.get((name, str(row[name]), period))
                    if limit is not None:
                        group.update(budget_usd=limit, projected_over_budget=spent_usd * factor > limit)
                entry["groups"].append(group)
        out["periods"].append(entry)
    return out

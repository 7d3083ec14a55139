"""Reports over the spend ledger (``clasp_budgets.ledger``: one row per request).

Every function takes the gateway's ``Database`` and :class:`~.filters.Filters` and
returns plain data for the admin API and the dashboard: totals, a time series,
a breakdown by one dimension, and the distinct values of each dimension (the filter
menus). Sums and counts run in SQL; latency percentiles are exact nearest-rank values
(``ORDER BY ... LIMIT 1 OFFSET k``, portable to SQLite, which has no
``percentile_cont``), and per time bucket they are computed from the streamed
``duration_ms`` column. Tokens per second is output tokens over the time after the
first token (streams) or over the whole duration (answers without a first-token time).
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import Integer, case, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from .filters import COLUMN_OF, Filters

PERCENTILES = (50, 90, 99)
BUCKETS = {"hour": 3600, "day": 86400, "week": 7 * 86400}
WEEK_OFFSET = 4 * 86400
"""1970-01-05 was a Monday: weeks start on Mondays, UTC."""
MAX_SERIES_POINTS = 2000
MAX_PERCENTILE_ROWS = 500_000
"""Past this many requests in a range, per-bucket percentiles are left out (they are
computed in memory); the totals' percentiles are computed in SQL at any size."""
MAX_BREAKDOWN_ROWS = 500


def ledger() -> Any:
    """The ledger's requests table (imported when first needed)."""
    from clasp_budgets.ledger import REQUESTS

    return REQUESTS


def _totals_columns(t: Any) -> list[Any]:
    c = t.c
    return [
        func.count().label("requests"),
        func.coalesce(func.sum(case((c.status >= 400, 1), else_=0)), 0).label("errors"),
        func.coalesce(func.sum(case((c.cut.is_(True), 1), else_=0)), 0).label("cut"),
        func.coalesce(func.sum(c.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(c.output_tokens), 0).label("output_tokens"),
        func.coalesce(func.sum(c.cache_read_tokens), 0).label("cache_read_tokens"),
        func.coalesce(func.sum(c.cache_write_tokens), 0).label("cache_write_tokens"),
        func.coalesce(func.sum(c.reasoning_tokens), 0).label("reasoning_tokens"),
        func.coalesce(func.sum(c.cost_usd), 0.0).label("cost_usd"),
        func.coalesce(func.sum(case((c.cost_usd.is_(None), 1), else_=0)), 0).label("unpriced"),
        func.coalesce(func.sum(case((c.cache_hit.is_not(None), 1), else_=0)), 0).label("cache_hits"),
        func.coalesce(func.sum(c.saved_usd), 0.0).label("saved_usd"),
        func.coalesce(func.sum(c.retries), 0).label("retries"),
        func.coalesce(func.sum(case((c.fallbacks > 0, 1), else_=0)), 0).label("fallback_requests"),
        func.avg(c.duration_ms).label("avg_duration_ms"),
        func.avg(c.ttfb_ms).label("avg_ttfb_ms"),
    ]


def _derived(row: dict[str, Any]) -> dict[str, Any]:
    """Rates and rounding that every totals row gets."""
    out = {k: (int(v) if isinstance(v, int | bool) or (isinstance(v, float) and k not in _FLOATS and v.is_integer())
               else v) for k, v in row.items()}
    n = out.get("requests") or 0
    out["cost_usd"] = round(float(out.get("cost_usd") or 0.0), 6)
    out["saved_usd"] = round(float(out.get("saved_usd") or 0.0), 6)
    out["error_rate"] = (out["errors"] / n) if n else None
    out["cache_hit_rate"] = (out["cache_hits"] / n) if n else None
    for name in ("avg_duration_ms", "avg_ttfb_ms"):
        if out.get(name) is not None:
            out[name] = round(float(out[name]), 3)
    return out


_FLOATS = {"cost_usd", "saved_usd", "avg_duration_ms", "avg_ttfb_ms"}


async def _percentiles(conn: Any, t: Any, filters: Filters, column_name: str, count: int) -> dict[str, float | None]:
    column = t.c[column_name]
    out: dict[str, float | None] = {}
    for p in PERCENTILES:
        if count == 0:
            out[f"p{p}"] = None
            continue
        offset = max(0, math.ceil(p / 100 * count) - 1)  # nearest rank
        query = filters.apply(select(column), t).where(column.is_not(None)).order_by(column).limit(1).offset(offset)
        value = (await conn.execute(query)).scalar()
        out[f"p{p}"] = round(float(value), 3) if value is not None else None
    return out


async def summary(database: Any, filters: Filters) -> dict[str, Any]:
    """Totals over the filtered range, with latency percentiles and tokens per second."""
    t = ledger()
    async with database.connect() as conn:
        row = (await conn.execute(filters.apply(select(*_totals_columns(t)), t))).mappings().one()
        totals = _derived(dict(row))
        n_duration = (await conn.execute(filters.apply(select(func.count(t.c.duration_ms)), t)
                                         .where(t.c.duration_ms.is_not(None)))).scalar() or 0
        n_ttfb = (await conn.execute(filters.apply(select(func.count(t.c.ttfb_ms)), t)
                                     .where(t.c.ttfb_ms.is_not(None)))).scalar() or 0
        totals["duration_ms"] = await _percentiles(conn, t, filters, "duration_ms", n_duration)
        totals["ttfb_ms"] = await _percentiles(conn, t, filters, "ttfb_ms", n_ttfb)
        totals["output_tokens_per_second"] = await _speed(conn, t, filters)
    return {"filters": filters.describe(), "totals": totals}


async def _speed(conn: Any, t: Any, filters: Filters) -> float | None:
    """Output tokens per second over the requests that produced output (total output
    over total generation time, so long answers weigh more than short ones)."""
    c = t.c
    generating = c.duration_ms - func.coalesce(c.ttfb_ms, 0.0)
    query = filters.apply(select(func.sum(c.output_tokens), func.sum(generating)), t).where(
        c.output_tokens > 0, generating > 0)
    tokens, ms = (await conn.execute(query)).one()
    if not tokens or not ms:
        return None
    return round(float(tokens) / (float(ms) / 1000), 3)


def bucket_width(filters: Filters, bucket: str | None) -> int:
    """The bucket width asked for, or one that gives at most ~200 points."""
    if bucket in BUCKETS:
        width = BUCKETS[bucket]
    else:
        span = filters.until - filters.since
        width = next((w for w in (300, 900, 3600, 6 * 3600, 86400, 7 * 86400) if span / w <= 200), 7 * 86400)
    while (filters.until - filters.since) / width > MAX_SERIES_POINTS:
        width *= 2
    return width


class floor_of(FunctionElement[int]):
    """``floor(x)`` as an integer, portable: SQLite may be built without its math
    functions, and ``CAST(x AS INTEGER)`` truncates there (the floor for the positive
    values used here) but rounds on PostgreSQL."""

    type = Integer()
    inherit_cache = True


@compiles(floor_of)
def _floor_default(element: Any, compiler: Any, **kw: Any) -> str:
    return f"CAST(FLOOR({compiler.process(element.clauses, **kw)}) AS BIGINT)"


@compiles(floor_of, "sqlite")
def _floor_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS INTEGER)"


def bucket_of(column: Any, width: int, offset: int = 0) -> Any:
    """The start of the ``width``-second bucket ``column`` (unix seconds) falls in."""
    return floor_of((column - offset) / width) * width + offset


def _bucket_expr(t: Any, width: int) -> Any:
    offset = WEEK_OFFSET if width % (7 * 86400) == 0 else 0
    return bucket_of(t.c.ts, width, offset).label("bucket")


async def timeseries(database: Any, filters: Filters, bucket: str | None = None) -> dict[str, Any]:
    """Per time bucket: volume, errors, tokens, cost, cache hits and savings, and the
    p50/p95 latency of the requests that started in it. Empty buckets are included (as zeros)."""
    t = ledger()
    width = bucket_width(filters, bucket)
    b = _bucket_expr(t, width)
    query = filters.apply(select(b, *_totals_columns(t)), t).group_by(b).order_by(b)
    durations: dict[int, list[float]] = {}
    async with database.connect() as conn:
        rows = {int(r["bucket"]): _derived({k: v for k, v in r.items() if k != "bucket"})
                for r in (await conn.execute(query)).mappings()}
        with_percentiles = sum(r["requests"] for r in rows.values()) <= MAX_PERCENTILE_ROWS
        if with_percentiles:
            stream = await conn.stream(filters.apply(select(b, t.c.duration_ms), t)
                                       .where(t.c.duration_ms.is_not(None)).execution_options(yield_per=5000))
            async for bucket_start, duration in stream:
                durations.setdefault(int(bucket_start), []).append(float(duration))
    offset = WEEK_OFFSET if width % (7 * 86400) == 0 else 0
    first = int((filters.since - offset) // width) * width + offset
    points = []
    start = first
    while start < filters.until:
        point = rows.get(start) or _derived(_empty())
        values = sorted(durations.get(start, ()))
        point["p50_duration_ms"] = _rank(values, 50)
        point["p95_duration_ms"] = _rank(values, 95)
        points.append({"t": start, **point})
        start += width
    return {"filters": filters.describe(), "bucket_seconds": width, "points": points,
            "percentiles": "per bucket" if with_percentiles else
            f"left out: more than {MAX_PERCENTILE_ROWS} requests in the range (narrow it)"}


def _rank(values: list[float], p: int) -> float | None:
    if not values:
        return None
    return round(values[max(0, math.ceil(p / 100 * len(values)) - 1)], 3)


def _empty() -> dict[str, Any]:
    return {"requests": 0, "errors": 0, "cut": 0, "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0,
            "cache_write_tokens": 0, "reasoning_tokens": 0, "cost_usd": 0.0, "unpriced": 0, "cache_hits": 0,
            "saved_usd": 0.0, "retries": 0, "fallback_requests": 0, "avg_duration_ms": None, "avg_ttfb_ms": None}


async def breakdown(database: Any, filters: Filters, by: str) -> dict[str, Any]:
    """Totals per value of one dimension (``model``, ``provider``, ``team``...), most
    expensive first."""
    t = ledger()
    column = t.c[COLUMN_OF[by]]
    query = filters.apply(select(column.label("value"), *_totals_columns(t)), t).group_by(column)
    async with database.connect() as conn:
        rows = [_derived(dict(r)) for r in (await conn.execute(query)).mappings()]
    rows.sort(key=lambda r: (-r["cost_usd"], -r["requests"], str(r["value"])))
    return {"filters": filters.describe(), "by": by, "rows": rows[:MAX_BREAKDOWN_ROWS],
            "truncated": len(rows) > MAX_BREAKDOWN_ROWS}


async def dimension_values(database: Any, filters: Filters, limit: int = 200) -> dict[str, list[str]]:
    """The values each dimension takes in the range (for the dashboard's menus), and the tags."""
    t = ledger()
    out: dict[str, list[str]] = {}
    async with database.connect() as conn:
        for name, column_name in COLUMN_OF.items():
            column = t.c[column_name]
            query = filters.apply(select(column).distinct(), t).where(column.is_not(None)).order_by(column).limit(limit)
            out[name] = [str(v) for v in (await conn.execute(query)).scalars()]
        tags: set[str] = set()
        query = filters.apply(select(t.c.tags), t).where(t.c.tags.is_not(None)).limit(5000)
        for value in (await conn.execute(query)).scalars():
            if isinstance(value, dict):
                tags.update(f"{k}={v}" for k, v in value.items() if isinstance(v, str))
            if len(tags) > limit:
                break
        out["tag"] = sorted(tags)[:limit]
    return out


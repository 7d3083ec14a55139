"""Spend by any dimensions and time bucket, from ``ledger_requests``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Integer, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from clasp_budgets.ledger import REQUESTS

from .filters import Scope, bucket_expression, column, where

MAX_ROWS = 10_000
"""Groups a report returns at most (the largest first)."""

METRICS = ("requests", "errors", "cut", "cache_hits", "input_tokens", "output_tokens", "cache_read_tokens",
           "cache_write_tokens", "cost_usd", "unpriced", "saved_usd")


def _metrics() -> list[Any]:
    r = REQUESTS.c
    return [
        func.count().label("requests"),
        func.sum(case((r.status >= 400, 1), else_=0)).label("errors"),
        func.sum(case((r.cut, 1), else_=0)).label("cut"),
        func.sum(case((r.cache_hit.is_not(None), 1), else_=0)).label("cache_hits"),
        func.sum(r.input_tokens).label("input_tokens"),
        func.sum(r.output_tokens).label("output_tokens"),
        func.sum(r.cache_read_tokens).label("cache_read_tokens"),
        func.sum(r.cache_write_tokens).label("cache_write_tokens"),
        func.sum(func.coalesce(r.cost_usd, 0.0)).label("cost_usd"),
        func.sum(case((r.cost_usd.is_(None), 1), else_=0)).label("unpriced"),
        func.sum(r.saved_usd).label("saved_usd"),
    ]


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for name in METRICS:
        value = out.get(name)
        if name in ("cost_usd", "saved_usd"):
            out[name] = round(float(value or 0.0), 10)
        else:
            out[name] = int(value or 0)
    return out


async def spend(conn: AsyncConnection, scope: Scope) -> dict[str, Any]:
    """``{"total": {...}, "groups": [...]}``: the scope's totals, and one row per
    combination of ``scope.by`` (and ``scope.bucket``) with the same metrics, the
    dearest first (by bucket, then dearest, with a bucket)."""
    dialect = conn.dialect.name
    condition = where(scope, dialect)
    total = (await conn.execute(select(*_metrics()).where(condition))).mappings().one()
    result: dict[str, Any] = {"total": _clean(dict(total)), "groups": []}
    keys: list[Any] = []
    if scope.bucket:
        keys.append(bucket_expression(scope.bucket, dialect).label("bucket"))
    for name in scope.by:
        keys.append(column(name, dialect).label(name))
        if name == "key":
            keys.append(func.max(REQUESTS.c.key_name).label("key_name"))
    if not keys:
        return result
    grouped = [k for k in keys if k.name != "key_name"]
    query = select(*keys, *_metrics()).where(condition).group_by(*[k.element for k in grouped])
    order: list[Any] = [grouped[0].element] if scope.bucket else []
    order.append(func.sum(func.coalesce(REQUESTS.c.cost_usd, 0.0)).desc())
    order.append(cast(func.count(), Integer).desc())
    query = query.order_by(*order).limit(MAX_ROWS)
    rows = (await conn.execute(query)).mappings().all()
    result["groups"] = [_clean(dict(r)) for r in rows]
    return result

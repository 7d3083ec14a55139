"""Savings suggestions, from the ledger alone.

1. **A cheaper model at the same success rate.** For each request class, the
   deployments that served it, with their success rate (status < 400 and not cut)
   and average cost per request. Traffic of a (public model, class) served by a
   deployment for which a cheaper deployment served the same class at the same or a
   better success rate is a suggestion, worth ``requests * (its average cost - the
   cheaper one's)``. Only deployments with at least ``min_requests`` requests in the
   class count (on either side): a rate from three requests says nothing.
2. **Repeated prompts a cache would have served.** Requests whose fingerprint
   (``prompt_hash``: a hash of the canonical request, never its text) was seen
   before, for the same public model and tenant (team, else key: a cache never
   crosses tenants), that succeeded and were not cache hits: every repeat after the
   first could have been served from a cache; the saving is the cost of the
   repeats (``total * (n - 1) / n`` of each fingerprint).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from clasp_budgets.ledger import REQUESTS

from .filters import Scope, where

MAX_SUGGESTIONS = 100


async def cheaper_models(conn: AsyncConnection, scope: Scope, *, min_requests: int = 20) -> list[dict[str, Any]]:
    """Suggestion 1 (see the module docstring), the largest saving first."""
    r = REQUESTS.c
    ok = case((and_(r.status < 400, r.cut.is_(False)), 1), else_=0)
    query = (
        select(r.request_class, r.public_model, r.deployment, func.count().label("n"), func.sum(ok).label("ok"),
               func.sum(func.coalesce(r.cost_usd, 0.0)).label("cost"))
        .where(where(scope, conn.dialect.name), r.deployment.is_not(None), r.cache_hit.is_(None))
        .group_by(r.request_class, r.public_model, r.deployment)
    )
    rows = [dict(x) for x in (await conn.execute(query)).mappings()]
    # Per (class, deployment), over every public model: the candidates to move to.
    by_class: dict[str, dict[str, dict[str, float]]] = {}
    for row in rows:
        stats = by_class.setdefault(row["request_class"] or "", {}).setdefault(
            row["deployment"], {"n": 0, "ok": 0, "cost": 0.0})
        stats["n"] += row["n"]
        stats["ok"] += row["ok"] or 0
        stats["cost"] += float(row["cost"] or 0.0)
    suggestions: list[dict[str, Any]] = []
    for row in rows:
        n = int(row["n"])
        if n < min_requests:
            continue
        rate = (row["ok"] or 0) / n
        average = float(row["cost"] or 0.0) / n
        best: tuple[float, str, float] | None = None
        for deployment, stats in by_class.get(row["request_class"] or "", {}).items():
            if deployment == row["deployment"] or stats["n"] < min_requests:
                continue
            other_rate = stats["ok"] / stats["n"]
            other_average = stats["cost"] / stats["n"]
            if other_rate >= rate and other_average < average and (best is None or other_average < best[0]):
                best = (other_average, deployment, other_rate)
        if best is None:
            continue
        saving = n * (average - best[0])
        suggestions.append({
            "kind": "cheaper_model",
            "request_class": row["request_class"], "public_model": row["public_model"],
            "deployment": row["deployment"], "requests": n, "success_rate": round(rate, 6),
            "average_cost_usd": round(average, 10),
            "cheaper_deployment": best[1], "cheaper_success_rate": round(best[2], 6),
            "cheaper_average_cost_usd": round(best[0], 10),
            "saving_usd": round(saving, 10),
            "text": (f"{n} {row['request_class'] or 'unclassified'} request(s) of {row['public_model']} went to "
                     f"{row['deployment']} (${average:.6f} each, {rate:.0%} ok); {best[1]} served that class at "
                     f"${best[0]:.6f} each, {best[2]:.0%} ok: about ${saving:.2f} less"),
        })
    suggestions.sort(key=lambda s: -s["saving_usd"])
    return suggestions[:MAX_SUGGESTIONS]


async def repeated_prompts(conn: AsyncConnection, scope: Scope) -> dict[str, Any]:
    """Suggestion 2 (see the module docstring): totals and the largest repeats."""
    r = REQUESTS.c
    tenant = func.coalesce(r.team, r.key_id)
    n = func.count()
    cost = func.sum(func.coalesce(r.cost_usd, 0.0))
    query = (
        select(r.prompt_hash, r.public_model, tenant.label("tenant"), n.label("n"), cost.label("cost"))
        .where(where(scope, conn.dialect.name), r.prompt_hash.is_not(None), r.cache_hit.is_(None),
               r.status < 400, r.cut.is_(False))
        .group_by(r.prompt_hash, r.public_model, tenant)
        .having(n > 1)
    )
    groups = []
    for row in (await conn.execute(query)).mappings():
        count, total = int(row["n"]), float(row["cost"] or 0.0)
        groups.append({"prompt_hash": row["prompt_hash"][:16], "public_model": row["public_model"],
                       "tenant": row["tenant"], "requests": count, "repeats": count - 1,
                       "saving_usd": round(total * (count - 1) / count, 10)})
    groups.sort(key=lambda g: (-g["saving_usd"], -g["repeats"]))
    saving = sum(g["saving_usd"] for g in groups)
    repeats = sum(g["repeats"] for g in groups)
    return {
        "kind": "cache",
        "repeated_prompts": len(groups), "repeats": repeats, "saving_usd": round(saving, 10),
        "text": (f"{repeats} request(s) repeated an earlier prompt of the same model and tenant "
                 f"({len(groups)} distinct prompt(s)): an exact cache would have saved about ${saving:.2f}"),
        "top": groups[:MAX_SUGGESTIONS],
    }


async def savings(conn: AsyncConnection, scope: Scope, *, min_requests: int = 20) -> dict[str, Any]:
    """Both suggestions, with the total they add up to."""
    models = await cheaper_models(conn, scope, min_requests=min_requests)
    cache = await repeated_prompts(conn, scope)
    return {
        "cheaper_models": models,
        "cache": cache,
        "saving_usd": round(sum(s["saving_usd"] for s in models) + cache["saving_usd"], 10),
        "min_requests": min_requests,
    }

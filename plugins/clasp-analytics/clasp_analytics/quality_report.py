"""``/admin/analytics/quality``: success and quality per model, route and request
class, with the feedback users and pipelines gave, so model choice can be set against
outcomes.

From this plugin's own tables: ``analytics_quality`` (one row per served request, with
its signals) and ``analytics_feedback``. A request counts as ``retried`` when a later
request carries its id in ``retry_of`` (the same conversation sent again within the
window). Feedback metrics are averaged per group (a boolean as the share of ``true``:
``tests_passed: 0.8`` means 80% of the requests that reported it passed).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select

from .filters import Filters
from .tables import FEEDBACK, QUALITY

GROUPS = ("public_model", "model", "deployment", "request_class")
MAX_GROUPS = 500


def _apply(filters: Filters, query: Any) -> Any:
    """The filters that apply to quality rows (they have no tags or cache columns)."""
    c = QUALITY.c
    query = query.where(c.ts >= filters.since, c.ts < filters.until)
    columns = {"model": c.public_model, "provider": c.provider, "deployment": c.deployment, "key": c.key_name,
               "team": c.team, "project": c.project, "class": c.request_class}
    for name, value in filters.equals.items():
        query = query.where(columns[name] == value)
    return query


async def quality(database: Any, filters: Filters) -> dict[str, Any]:
    """Per (public model, model, deployment, class): requests, success rate, truncation,
    invalid tool JSON, retries, and the feedback joined to them."""
    c = QUALITY.c
    retried_ids = select(QUALITY.c.retry_of).where(QUALITY.c.retry_of.is_not(None)).scalar_subquery()
    group = [c.public_model, c.model, c.deployment, c.request_class]
    query = _apply(filters, select(
        *group,
        func.count().label("requests"),
        func.sum(case((c.error.is_(False), 1), else_=0)).label("ok"),
        func.sum(case((c.truncated.is_(True), 1), else_=0)).label("truncated"),
        func.sum(case((c.invalid_tool_json.is_(True), 1), else_=0)).label("invalid_tool_json"),
        func.sum(case((c.request_id.in_(retried_ids), 1), else_=0)).label("retried"),
    )).group_by(*group)
    feedback_query = _apply(filters, select(
        *group, FEEDBACK.c.score, FEEDBACK.c.metrics,
    ).select_from(FEEDBACK.join(QUALITY, FEEDBACK.c.request_id == QUALITY.c.request_id)))
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    async with database.connect() as conn:
        for row in (await conn.execute(query)).mappings():
            key = tuple(row[g] for g in GROUPS)
            n = int(row["requests"])
            groups[key] = {
                **{g: row[g] for g in GROUPS},
                "requests": n,
                "success_rate": _rate(row["ok"], n),
                "truncated_rate": _rate(row["truncated"], n),
                "invalid_tool_json_rate": _rate(row["invalid_tool_json"], n),
                "retried_rate": _rate(row["retried"], n),
                "feedback": {"count": 0, "avg_score": None, "metrics": {}},
            }
        sums: dict[tuple[Any, ...], dict[str, Any]] = {}
        stream = await conn.stream(feedback_query.execution_options(yield_per=2000))
        async for row in stream:
            key = tuple(row[:4])
            acc = sums.setdefault(key, {"count": 0, "score_sum": 0.0, "scored": 0, "metrics": {}})
            acc["count"] += 1
            if row[4] is not None:
                acc["score_sum"] += float(row[4])
                acc["scored"] += 1
            for name, value in (row[5] or {}).items():
                total, count = acc["metrics"].get(name, (0.0, 0))
                acc["metrics"][name] = (total + float(value), count + 1)
    for key, acc in sums.items():
        if key not in groups:
            continue
        groups[key]["feedback"] = {
            "count": acc["count"],
            "avg_score": round(acc["score_sum"] / acc["scored"], 6) if acc["scored"] else None,
            "metrics": {name: {"mean": round(total / count, 6), "count": count}
                        for name, (total, count) in sorted(acc["metrics"].items())},
        }
    rows = sorted(groups.values(), key=lambda r: (-r["requests"], str(r["public_model"]), str(r["model"])))
    return {"filters": filters.describe(), "rows": rows[:MAX_GROUPS], "truncated": len(rows) > MAX_GROUPS}


def _rate(part: Any, whole: int) -> float | None:
    return round(int(part or 0) / whole, 6) if whole else None

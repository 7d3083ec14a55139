"""The comparison report of an experiment: per arm, from the ledger and the feedback.

Per arm (``control``, ``candidate``, ``shadow``): requests, success (status 200, no
error, not cut), latency (mean, p50, p95 of the whole request; p50 time to first
byte), cost (per request and total, from the ledger's priced rows) and feedback
(``POST /v1/feedback`` of clasp-analytics: mean score, share of scores >= 0.5, and
the mean of each numeric custom metric).

The verdict compares the candidate's arm (``candidate``; ``shadow`` in shadow mode)
with ``control``: a two-sided two-proportion z-test on success and, when both arms
have enough scored requests, a Welch z-test on the mean feedback score, each at
``alpha`` (0.05). Below ``min_requests`` per arm (30): "not enough data". A
significantly worse metric: "candidate worse"; else a significantly better one:
"candidate better"; else "not enough data" (no significant difference yet), with the
p-values, so a reader sees how close it is.

It reads the tables by name (``ledger_requests`` of clasp-budgets,
``analytics_feedback`` of clasp-analytics) over the gateway's database, the same on
SQLite and PostgreSQL; without the ledger the report says so.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from .experiments import TAG_ARM, TAG_EXPERIMENT, Experiment

ALPHA = 0.05
MIN_REQUESTS = 30
MIN_SCORED = 10
MAX_ROWS = 500_000
"""Ledger rows read at most (the newest since ``since``)."""
ARMS = ("control", "candidate", "shadow")


class ReportUnavailable(RuntimeError):
    """The database has no ledger (clasp-budgets is not installed or never migrated)."""


@dataclass(slots=True)
class Arm:
    """What one arm's requests showed."""

    name: str
    ids: list[str] = field(default_factory=list)
    ok: int = 0
    latency: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        n = len(self.ids)
        return {
            "requests": n,
            "success": self.ok,
            "success_rate": _round(self.ok / n) if n else None,
            "latency_ms": {"mean": _round(statistics.fmean(self.latency)) if self.latency else None,
                           "p50": _pct(self.latency, 50), "p95": _pct(self.latency, 95)},
            "ttfb_ms_p50": _pct(self.ttfb, 50),
            "cost_usd": {"total": _round(sum(self.costs), 8),
                         "per_request": _round(sum(self.costs) / len(self.costs), 8) if self.costs else None},
            "feedback": {"scored": len(self.scores),
                         "mean_score": _round(statistics.fmean(self.scores)) if self.scores else None,
                         "good_rate": _round(sum(s >= 0.5 for s in self.scores) / len(self.scores)) if self.scores else None,
                         "metrics": {k: _round(statistics.fmean(v)) for k, v in sorted(self.metrics.items())}},
        }


def _round(value: float, digits: int = 4) -> float:
    return round(value, digits)


def _pct(values: list[float], p: int) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return _round(ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))], 1)


def normal_p(z: float) -> float:
    """Two-sided p-value of a standard normal statistic."""
    return math.erfc(abs(z) / math.sqrt(2))


def two_proportion(ok_a: int, n_a: int, ok_b: int, n_b: int) -> tuple[float, float]:
    """``(z, p)`` of B's rate against A's (pooled two-proportion z-test); ``(0, 1)`` when undefined."""
    if not n_a or not n_b:
        return 0.0, 1.0
    pooled = (ok_a + ok_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 0.0, 1.0
    z = (ok_b / n_b - ok_a / n_a) / se
    return z, normal_p(z)


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """``(z, p)`` of B's mean against A's (Welch statistic, normal approximation)."""
    if len(a) < 2 or len(b) < 2:
        return 0.0, 1.0
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    if se == 0:
        diff = statistics.fmean(b) - statistics.fmean(a)
        return (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    z = (statistics.fmean(b) - statistics.fmean(a)) / se
    return z, normal_p(z)


def verdict(control: Arm, candidate: Arm, *, min_requests: int = MIN_REQUESTS, alpha: float = ALPHA) -> dict[str, Any]:
    """``{"verdict": "candidate better" | "candidate worse" | "not enough data", "tests": ..., "reason": ...}``."""
    tests: dict[str, Any] = {}
    if len(control.ids) < min_requests or len(candidate.ids) < min_requests:
        return {"verdict": "not enough data", "tests": tests,
                "reason": f"{len(control.ids)} control and {len(candidate.ids)} candidate requests; "
                          f"at least {min_requests} each are needed"}
    z, p = two_proportion(control.ok, len(control.ids), candidate.ok, len(candidate.ids))
    tests["success"] = {"test": "two-proportion z", "z": _round(z), "p": _round(p, 6)}
    if len(control.scores) >= MIN_SCORED and len(candidate.scores) >= MIN_SCORED:
        z, p = welch(control.scores, candidate.scores)
        tests["feedback_score"] = {"test": "Welch z", "z": _round(z) if math.isfinite(z) else z, "p": _round(p, 6)}
    worse = [name for name, t in tests.items() if t["p"] < alpha and t["z"] < 0]
    better = [name for name, t in tests.items() if t["p"] < alpha and t["z"] > 0]
    if worse:
        return {"verdict": "candidate worse", "tests": tests, "reason": f"significantly lower {', '.join(worse)}"}
    if better:
        return {"verdict": "candidate better", "tests": tests, "reason": f"significantly higher {', '.join(better)}"}
    return {"verdict": "not enough data", "tests": tests,
            "reason": f"no significant difference at alpha={alpha} yet: keep the experiment running"}


def _tags(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, (str, bytes)) and value:
        try:
            found = orjson.loads(value)
        except orjson.JSONDecodeError:
            return {}
        return found if isinstance(found, dict) else {}
    return {}


async def report(conn: AsyncConnection, exp: Experiment, *, since: float = 0.0,
                 min_requests: int = MIN_REQUESTS) -> dict[str, Any]:
    """The experiment's report (a JSON-able dict)."""
    arms = {name: Arm(name) for name in ARMS}
    try:
        rows = await conn.execute(text(
            "SELECT request_id, status, error, cut, duration_ms, ttfb_ms, cost_usd, tags FROM ledger_requests "
            "WHERE ts >= :since AND public_model IS NOT NULL ORDER BY ts DESC LIMIT :limit"),
            {"since": since, "limit": MAX_ROWS})
        found = rows.fetchall()
    except SQLAlchemyError as exc:
        raise ReportUnavailable("no ledger in this database: install and migrate clasp-budgets "
                                "(`clasp db upgrade`)") from exc
    by_id: dict[str, Arm] = {}
    for request_id, status, error, cut, duration, ttfb, cost, tags in found:
        t = _tags(tags)
        if t.get(TAG_EXPERIMENT) != exp.name or t.get(TAG_ARM) not in arms:
            continue
        arm = arms[t[TAG_ARM]]
        arm.ids.append(request_id)
        by_id[request_id] = arm
        if status == 200 and not error and not cut:
            arm.ok += 1
        if duration is not None:
            arm.latency.append(float(duration))
        if ttfb is not None:
            arm.ttfb.append(float(ttfb))
        if cost is not None:
            arm.costs.append(float(cost))
    await _feedback(conn, by_id, since)
    candidate = arms["shadow" if exp.mode == "shadow" else "candidate"]
    return {
        "experiment": exp.name, "route": exp.route, "candidate": exp.candidate, "mode": exp.mode,
        "since": since, "arms": {name: arm.summary() for name, arm in arms.items() if arm.ids or name != "shadow"},
        **verdict(arms["control"], candidate, min_requests=min_requests),
    }


async def _feedback(conn: AsyncConnection, by_id: dict[str, Arm], since: float) -> None:
    """Fold in clasp-analytics' feedback (absent table: no feedback)."""
    if not by_id:
        return
    try:
        rows = (await conn.execute(text(
            "SELECT request_id, score, metrics FROM analytics_feedback WHERE ts >= :since"), {"since": since})).fetchall()
    except SQLAlchemyError:
        return
    for request_id, score, metrics in rows:
        arm = by_id.get(request_id)
        if arm is None:
            continue
        if isinstance(score, (int, float)) and math.isfinite(score):
            arm.scores.append(float(score))
        for name, value in _tags(metrics).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                arm.metrics.setdefault(str(name), []).append(float(value))


def render(result: dict[str, Any]) -> str:
    """The report for a person."""
    lines = [f"experiment {result['experiment']}: route {result['route']}, candidate {result['candidate']} "
             f"({result['mode']})", ""]
    header = f"{'arm':<10} {'requests':>8} {'success':>8} {'p50 ms':>9} {'p95 ms':>9} {'$/request':>11} {'score':>6} {'scored':>6}"
    lines.append(header)
    for name, arm in result["arms"].items():
        fb = arm["feedback"]
        rate = arm["success_rate"]
        per = arm["cost_usd"]["per_request"]
        lines.append(f"{name:<10} {arm['requests']:>8} {'-' if rate is None else f'{rate:.1%}':>8} "
                     f"{_show(arm['latency_ms']['p50']):>9} {_show(arm['latency_ms']['p95']):>9} "
                     f"{'-' if per is None else f'{per:.6f}':>11} {_show(fb['mean_score']):>6} {fb['scored']:>6}")
    lines += ["", f"verdict: {result['verdict']} ({result['reason']})"]
    for name, t in result["tests"].items():
        lines.append(f"  {name}: {t['test']} z={t['z']} p={t['p']}")
    return "\n".join(lines)


def _show(value: Any) -> str:
    return "-" if value is None else str(value)

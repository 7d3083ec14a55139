"""Budget periods on UTC calendar boundaries: daily, weekly (ISO weeks, from Monday),
monthly, or total (never resets).

A period is named by its start (``2026-12-01``), so each period's spend lives under its
own state key: a new period starts from zero without anyone resetting anything, and
the old key expires a day after its period ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

PERIODS = ("daily", "weekly", "monthly", "total")
GRACE = 86400.0
"""Seconds a period's state outlives its end (late settlements of long streams)."""


@dataclass(frozen=True, slots=True)
class Period:
    """One concrete period: when it started and ends (unix seconds; ``end`` None: never)."""

    kind: str
    start: float
    end: float | None
    label: str

    def key_ttl(self, now: float) -> float | None:
        """Seconds the state of this period must live from ``now`` (None: forever)."""
        if self.end is None:
            return None
        return max(1.0, self.end - now + GRACE)

    def resets_at(self) -> str | None:
        """The reset time as ISO 8601 UTC (``2027-01-01T00:00:00Z``), None for total."""
        if self.end is None:
            return None
        return datetime.fromtimestamp(self.end, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def current_period(kind: str, now: float) -> Period:
    """The period of ``kind`` that contains ``now`` (unix seconds)."""
    if kind == "total":
        return Period("total", 0.0, None, "total")
    moment = datetime.fromtimestamp(now, UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "daily":
        start, end = day, day + timedelta(days=1)
    elif kind == "weekly":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    elif kind == "monthly":
        start = day.replace(day=1)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    else:
        raise ValueError(f"unknown budget period {kind!r} (expected one of {', '.join(PERIODS)})")
    return Period(kind, start.timestamp(), end.timestamp(), start.strftime("%Y-%m-%d"))

"""The dimensions every report, export and dashboard query is filtered by.

Given as query parameters (the dashboard's filter bar, the admin API, ``clasp export``):
``since`` and ``until`` (unix seconds or ISO 8601, UTC when no zone is given; default the
last 7 days), ``provider``, ``model`` (the public model a client asked for), ``deployment``,
``key`` (a key's name), ``team``, ``project``, ``class`` (request class), ``status``
(``ok``/``error``), and ``tag`` (``name=value``, repeatable, all must match). A bad value
is a 400 naming the parameter; a range is at most ``analytics.dashboard.max_range_days``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table

from clasp_gateway import InvalidRequestError

DEFAULT_RANGE = 7 * 86400.0
DIMENSIONS = ("provider", "model", "deployment", "key", "team", "project", "class")
"""Filter name -> ledger column: see :data:`COLUMN_OF`."""
COLUMN_OF = {"provider": "provider", "model": "public_model", "deployment": "deployment", "key": "key_name",
             "team": "team", "project": "project", "class": "request_class"}
MAX_VALUE = 256
TAG = re.compile(r"^([A-Za-z0-9_.:-]{1,64})=(.{0,256})$")


@dataclass(slots=True, frozen=True)
class Filters:
    """A time range and equality filters on the ledger's dimensions."""

    since: float
    until: float
    equals: dict[str, str] = field(default_factory=dict)
    """Filter name (``model``, ``team``...) -> the value it must have."""
    tags: tuple[tuple[str, str], ...] = ()
    status: str | None = None
    """``ok`` (below 400) or ``error`` (400 and up), or any."""

    def apply(self, query: Any, table: Table) -> Any:
        """``query`` with this filter's WHERE clauses on ``table`` (the ledger's
        requests, or a table with the same column names)."""
        c = table.c
        query = query.where(c.ts >= self.since, c.ts < self.until)
        for name, value in self.equals.items():
            query = query.where(c[COLUMN_OF[name]] == value)
        for name, value in self.tags:
            query = query.where(c.tags[name].as_string() == value)
        if self.status == "ok":
            query = query.where(c.status < 400)
        elif self.status == "error":
            query = query.where(c.status >= 400)
        return query

    def describe(self) -> dict[str, Any]:
        """The filter as the API answers it back (what was applied)."""
        return {"since": self.since, "until": self.until, **self.equals,
                "tags": [f"{k}={v}" for k, v in self.tags], "status": self.status}


def parse_time(value: str, name: str) -> float:
    """Unix seconds, or ISO 8601 (UTC when no zone is given)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequestError(f"{name}: expected unix seconds or an ISO 8601 time, got {value[:40]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def parse_filters(params: Any, *, max_range_days: int, now: float | None = None) -> Filters:
    """Filters from query parameters (a Starlette ``QueryParams`` or a mapping of lists)."""
    now = time.time() if now is None else now
    def get(name: str) -> str | None:
        value = params.get(name)
        return value if value not in (None, "") else None

    def get_all(name: str) -> list[str]:
        if hasattr(params, "getlist"):
            return [v for v in params.getlist(name) if v]
        value = params.get(name)
        return [v for v in (value if isinstance(value, list) else [value]) if v]

    until = parse_time(get("until") or "", "until") if get("until") else now
    since = parse_time(get("since") or "", "since") if get("since") else until - DEFAULT_RANGE
    if since >= until:
        raise InvalidRequestError("since: must be before until")
    if until - since > max_range_days * 86400:
        raise InvalidRequestError(f"since: the range is at most {max_range_days} days (analytics.dashboard.max_range_days)")
    equals: dict[str, str] = {}
    for name in DIMENSIONS:
        value = get(name)
        if value is not None:
            if len(value) > MAX_VALUE:
                raise InvalidRequestError(f"{name}: at most {MAX_VALUE} characters")
            equals[name] = value
    tags: list[tuple[str, str]] = []
    for raw in get_all("tag")[:16]:
        match = TAG.match(raw)
        if match is None:
            raise InvalidRequestError(f"tag: expected name=value, got {raw[:40]!r}")
        tags.append((match.group(1), match.group(2)))
    status = get("status")
    if status not in (None, "ok", "error"):
        raise InvalidRequestError("status: expected ok or error")
    return Filters(since=since, until=until, equals=equals, tags=tuple(tags), status=status)

"""What a report is about: its filters, its grouping and its time buckets, read from
query parameters or command-line options, with the SQL expressions that apply them
on SQLite and PostgreSQL alike.

Dimensions (``by`` and filters): ``provider``, ``model``, ``deployment``,
``public_model``, ``key`` (key id; the key's name comes along), ``team``,
``project``, ``user``, ``request_class``, ``region``, and ``tag:NAME`` (a request
tag). Time buckets: ``hour``, ``day``, ``week`` (from Monday) and ``month``, in UTC.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, func, literal_column, true

from clasp_budgets.ledger import REQUESTS

DIMENSIONS: dict[str, str] = {
    "provider": "provider", "model": "model", "deployment": "deployment", "public_model": "public_model",
    "key": "key_id", "team": "team", "project": "project", "user": "user_id", "request_class": "request_class",
    "region": "region",
}
"""Dimension name -> ``ledger_requests`` column."""
BUCKETS = ("hour", "day", "week", "month")
MAX_TAG = 64


class ReportError(ValueError):
    """A report asked for something that does not exist (a 400 on the API)."""


def parse_time(value: str, name: str) -> float:
    """Unix seconds from ``1733500000``, ``2026-12-01`` or ``2026-12-01T10:00[:00][Z]`` (UTC)."""
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"{name}: expected unix seconds or an ISO date (2026-12-01 or 2026-12-01T10:00Z), "
                          f"got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def _dimension(name: str) -> str:
    if name in DIMENSIONS:
        return name
    if name.startswith("tag:") and 0 < len(name) - 4 <= MAX_TAG and name[4:].replace("_", "").replace("-", "").isalnum():
        return name
    known = ", ".join([*DIMENSIONS, "tag:NAME"])
    raise ReportError(f"unknown dimension {name!r}: expected one of {known}")


@dataclass(slots=True)
class Scope:
    """Filters (dimension -> value), a time range and the grouping of a report."""

    filters: dict[str, str] = field(default_factory=dict)
    since: float | None = None
    until: float | None = None
    by: list[str] = field(default_factory=list)
    bucket: str | None = None
    forced: dict[str, str] = field(default_factory=dict)
    """Filters from the caller's key (a member's own key, a team admin's team), applied
    on top of :attr:`filters`: a request can narrow them, never widen them."""

    @classmethod
    def parse(cls, params: dict[str, str]) -> Scope:
        """From query parameters / options: ``by=provider,model``, ``bucket=day``,
        ``since``, ``until``, and a filter per dimension (``team=core``,
        ``tag:feature=review``)."""
        scope = cls()
        for name, value in params.items():
            if name in ("by", "group_by"):
                scope.by = [_dimension(n.strip()) for n in value.split(",") if n.strip()]
            elif name == "bucket":
                if value not in BUCKETS:
                    raise ReportError(f"bucket: expected one of {', '.join(BUCKETS)}, got {value!r}")
                scope.bucket = value
            elif name == "since":
                scope.since = parse_time(value, "since")
            elif name == "until":
                scope.until = parse_time(value, "until")
            else:
                scope.filters[_dimension(name)] = value
        if len(scope.by) > 4:
            raise ReportError("by: at most 4 dimensions")
        return scope

    def restricted(self, **forced: str) -> Scope:
        """This scope with ``forced`` filters that a caller cannot widen (a member's own
        key, a team admin's team)."""
        return Scope(dict(self.filters), self.since, self.until, list(self.by), self.bucket, {**self.forced, **forced})


def column(name: str, dialect: str) -> ColumnElement[Any]:
    """The SQL expression of dimension ``name``."""
    if name.startswith("tag:"):
        tag = name[4:]
        if dialect == "sqlite":
            return func.json_extract(REQUESTS.c.tags, f'$."{tag}"')
        return REQUESTS.c.tags.op("->>")(tag)
    return REQUESTS.c[DIMENSIONS[name]]


def bucket_expression(bucket: str, dialect: str) -> ColumnElement[Any]:
    """The UTC time bucket of ``ts`` as text (``2026-12-07T13:00``, ``2026-12-07``,
    the week's Monday ``2026-12-07``, ``2026-12``)."""
    if dialect == "sqlite":
        formats = {"hour": "%Y-%m-%dT%H:00", "day": "%Y-%m-%d", "month": "%Y-%m"}
        if bucket == "week":
            return func.date(REQUESTS.c.ts, "unixepoch", "weekday 0", "-6 days")
        return func.strftime(formats[bucket], REQUESTS.c.ts, "unixepoch")
    utc: ColumnElement[Any] = literal_column("(to_timestamp(ledger_requests.ts) AT TIME ZONE 'UTC')")
    if bucket == "week":
        return func.to_char(func.date_trunc("week", utc), "YYYY-MM-DD")
    formats = {"hour": 'YYYY-MM-DD"T"HH24:00', "day": "YYYY-MM-DD", "month": "YYYY-MM"}
    return func.to_char(utc, formats[bucket])


def where(scope: Scope, dialect: str) -> ColumnElement[bool]:
    """The scope's filters and time range as one condition."""
    conditions: list[ColumnElement[bool]] = [
        column(name, dialect) == value for name, value in [*scope.filters.items(), *scope.forced.items()]]
    if scope.since is not None:
        conditions.append(REQUESTS.c.ts >= scope.since)
    if scope.until is not None:
        conditions.append(REQUESTS.c.ts < scope.until)
    return and_(true(), *conditions)

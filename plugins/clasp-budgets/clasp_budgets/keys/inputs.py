"""What the admin API and the CLI accept for keys and teams, checked in one place.

The core's schema helpers (``clasp_gateway.Section``...) check a body the way clasp.yaml
is checked, so a mistake reads the same everywhere (``rpm: expected an integer between 1
and 1000000000, got -1``, unknown fields with a "did you mean"), and the API turns the
problems into one Anthropic-shaped 400 naming every field. Every size is bounded: names,
tags, model lists and metadata cannot grow a row (or an answer) without limit.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

import orjson

from clasp_gateway import (
    Choice,
    Custom,
    Field,
    Integer,
    Invalid,
    InvalidRequestError,
    ListOf,
    Number,
    Section,
    String,
)

ROLES = ("member", "team_admin", "admin")
PERIODS = ("daily", "weekly", "monthly", "total")
MAX_METADATA_BYTES = 4096
MAX_TAGS = 16
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_TAG_VALUE = re.compile(r"[A-Za-z0-9_.:/@+-]{1,128}")
MAX_MODELS = 64
MAX_LIMIT = 1_000_000_000
PAGE_DEFAULT = 50
PAGE_MAX = 500

_NAME = String(pattern=r"[ -~]{1,128}", expected="printable ASCII text of 1 to 128 characters")
_TEAM = String(pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
               expected="a team name: letters, digits, '_', '.', '-' (1 to 64, starting with a letter or digit)")
_SHORT = String(pattern=r"[ -~]{1,128}", expected="printable ASCII text of 1 to 128 characters")
_GLOB = String(pattern=r"[ -~]{1,128}", expected="a model name or glob (printable ASCII, up to 128 characters)")
_REGION = String(pattern=r"[A-Za-z0-9_.-]{1,64}", expected="a region name")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: Any, now: float) -> float:
    """An expiry: unix seconds, an ISO 8601 date or time (UTC unless it says), or a
    duration from now (``30d``, ``12h``, ``2w``)."""
    if isinstance(value, bool):
        raise Invalid()
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise Invalid()
        return float(value)
    if isinstance(value, (dt.datetime, dt.date)):
        value = value.isoformat()
    if not isinstance(value, str) or len(value) > 64:
        raise Invalid()
    match = _DURATION.match(value)
    if match:
        return now + float(match.group(1)) * _UNIT[match.group(2)]
    try:
        when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Invalid() from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _future(when: float, now: float) -> float:
    if when <= now:
        raise Invalid(f"must be in the future, got {iso(when)}")
    return when


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC (``2026-12-07T10:00:00Z``), for answers and the CLI."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _tags(value: Any) -> Any:
    """The rule static keys' ``tags:`` and the ``x-clasp-tags`` header follow (the core's),
    so a virtual key's tags land in the same analytics dimensions."""
    if not isinstance(value, dict):
        raise Invalid()
    if len(value) > MAX_TAGS:
        raise Invalid(f"at most {MAX_TAGS} tags")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not (isinstance(k, str) and _TAG_NAME.fullmatch(k)):
            raise Invalid(f"tag name {str(k)[:64]!r}: expected a letter then letters, digits, '_', '.', '-' (64 at most)")
        if not (isinstance(v, str) and _TAG_VALUE.fullmatch(v)):
            raise Invalid(f"tag {k!r}: expected letters, digits, _ . : / @ + - (1 to 128)")
        out[k] = v
    return out


def _metadata(value: Any) -> Any:
    if not isinstance(value, dict):
        raise Invalid()
    try:
        size = len(orjson.dumps(value))
    except TypeError:
        raise Invalid() from None
    if size > MAX_METADATA_BYTES:
        raise Invalid(f"at most {MAX_METADATA_BYTES} bytes of JSON, got {size}")
    return value


def _bounded_list(kind: Any, limit: int, what: str) -> Custom:
    checker = ListOf(kind)

    def check(value: Any) -> Any:
        if isinstance(value, list) and len(value) > limit:
            raise Invalid(f"at most {limit} {what}")
        problems: list[str] = []
        out = checker.parse(value, "", problems)
        if problems:
            raise Invalid("; ".join(p.lstrip(": ").removeprefix(": ") for p in problems))
        return out

    return Custom(check, checker.expected)


def policy_fields(now: float) -> dict[str, Field]:
    """The policy fields (``null`` clears one: no limit)."""
    count = Integer(1, MAX_LIMIT)
    return {
        "models": Field(_bounded_list(_GLOB, MAX_MODELS, "models"), nullable=True),
        "rpm": Field(count, nullable=True),
        "tpm": Field(count, nullable=True),
        "rpd": Field(count, nullable=True),
        "tpd": Field(count, nullable=True),
        "max_concurrency": Field(count, nullable=True),
        "max_budget_usd": Field(Number(0, 1e9), nullable=True),
        "budget_period": Field(Choice(*PERIODS), nullable=True),
        "expires_at": Field(Custom(lambda v: _future(parse_time(v, now), now), "unix seconds, an ISO 8601 time or "
                                   "a duration such as '30d'"), nullable=True),
        "regions": Field(_bounded_list(_REGION, MAX_MODELS, "regions"), nullable=True),
    }


def key_create(now: float) -> Section:
    return Section({
        "name": Field(_NAME, required="a name people recognise the key by"),
        "team": Field(_TEAM, nullable=True),
        "role": Field(Choice(*ROLES), "member"),
        "user_id": Field(_SHORT, nullable=True),
        "project": Field(_SHORT, nullable=True),
        "tags": Field(Custom(_tags, "a mapping of tag name to text")),
        "metadata": Field(Custom(_metadata, "a JSON object")),
        **policy_fields(now),
    })


def key_update(now: float) -> Section:
    """What ``PATCH /admin/keys/{id}`` and ``clasp keys update`` change: every field of a
    new key (``team``: an existing team or null for none; ``role``)."""
    return Section({
        "name": Field(_NAME),
        "team": Field(_TEAM, nullable=True),
        "role": Field(Choice(*ROLES)),
        "user_id": Field(_SHORT, nullable=True),
        "project": Field(_SHORT, nullable=True),
        "tags": Field(Custom(_tags, "a mapping of tag name to text")),
        "metadata": Field(Custom(_metadata, "a JSON object")),
        **policy_fields(now),
    })


def team_create(now: float) -> Section:
    return Section({
        "name": Field(_TEAM, required="the team's name"),
        "metadata": Field(Custom(_metadata, "a JSON object")),
        **policy_fields(now),
    })


def team_update(now: float) -> Section:
    return Section({"metadata": Field(Custom(_metadata, "a JSON object")), **policy_fields(now)})


def assignment(body: Any) -> dict[str, Any]:
    """A key's new ``team`` (a name, or null for none) and/or ``role``; a 400 when
    neither is given or a value is wrong."""
    section = Section({"team": Field(_TEAM, nullable=True), "role": Field(Choice(*ROLES))})
    values = parse_body(section, body, partial=True)
    if not values:
        raise InvalidRequestError("body: give team and/or role to change")
    return values


def parse_body(section: Section, body: Any, *, partial: bool) -> dict[str, Any]:
    """The checked values (``partial``: only the fields given, for updates), or an
    :class:`InvalidRequestError` listing every problem with its field path."""
    if not isinstance(body, dict):
        raise InvalidRequestError("body: expected a JSON object")
    problems: list[str] = []
    values = section.parse(body, "", problems, defaults=not partial)
    if problems:
        raise InvalidRequestError("; ".join(problems[:20]))
    if not partial:
        values = {k: v for k, v in values.items() if k in body or k in ("role",)}
    if values.get("budget_period") and values.get("max_budget_usd") is None and partial is False:
        raise InvalidRequestError("budget_period: only meaningful with max_budget_usd")
    return dict(values)


def check_team_name(value: Any) -> str:
    """A team name from a path or an option, or a 400 naming what is expected."""
    problems: list[str] = []
    out = _TEAM.parse(value, "team", problems)
    if problems:
        raise InvalidRequestError(problems[0])
    return str(out)


__all__ = ["PAGE_DEFAULT", "PAGE_MAX", "PERIODS", "ROLES", "assignment", "check_team_name", "iso", "key_create", "key_update",
           "parse_body", "parse_time", "team_create", "team_update"]

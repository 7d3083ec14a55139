"""A key's effective policy: its own limits combined with its team's.

A team's limits are ceilings for each of its keys (a team_admin can hand out keys, never
more than the team allows): for every number the stricter (smaller) one wins, the earlier
expiry wins, and when both name models or regions the key may use only what both allow.
Team-wide totals shared by all of a team's keys (one monthly budget for the team) are the
budgets plugin's business, not this one's.

Model globs are intersected conservatively: a pair where one pattern is plainly inside the
other (equal, ``*``, a literal name the other matches, a prefix glob ``claude-*`` under a
shorter one) keeps the narrower; a pair where neither contains the other allows nothing.
When nothing is left the key may use no model at all, expressed by :data:`NO_MODEL`, a
glob that matches no name (an empty tuple would mean "every model").
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

from clasp_gateway import KeyPolicy

from .tables import POLICY_FIELDS

NO_MODEL = "[!\x00-\U0010ffff]"
"""A glob no model name matches (a character class that excludes every character)."""
NO_REGION = "(none)"
"""The region list of a key whose own regions and its team's have none in common."""

_WILD = set("*?[")
_NUMBERS = ("rpm", "tpm", "rpd", "tpd", "max_concurrency", "max_budget_usd")


def policy_from_row(row: Mapping[Any, Any]) -> KeyPolicy:
    """The :class:`KeyPolicy` stored in a team or key row (NULL columns: no limit)."""
    return KeyPolicy(
        models=tuple(row.get("models") or ()),
        rpm=row.get("rpm"), tpm=row.get("tpm"), rpd=row.get("rpd"), tpd=row.get("tpd"),
        max_concurrency=row.get("max_concurrency"), max_budget_usd=row.get("max_budget_usd"),
        budget_period=row.get("budget_period"), expires_at=row.get("expires_at"),
        regions=tuple(row.get("regions") or ()),
    )


def policy_dict(policy: KeyPolicy) -> dict[str, Any]:
    """A policy as JSON-ready values, in column order (for answers and the audit log)."""
    out: dict[str, Any] = {}
    for name in POLICY_FIELDS:
        value = getattr(policy, name)
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _min(a: float | None, b: float | None) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def glob_within(inner: str, outer: str) -> bool:
    """Whether every name ``inner`` matches is matched by ``outer`` (conservative:
    False when unsure)."""
    if inner == outer or outer == "*":
        return True
    if not _WILD & set(inner):
        return fnmatch.fnmatchcase(inner, outer)
    if outer.endswith("*") and not _WILD & set(outer[:-1]):
        # outer is a plain prefix glob: inner is within when it starts with that prefix
        # before its own first wildcard.
        first = min(i for i, ch in enumerate(inner) if ch in _WILD)
        return inner[:first].startswith(outer[:-1])
    return False


def intersect_globs(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    """Names both lists allow (empty lists allow everything); :data:`NO_MODEL` when none."""
    if not a:
        return b
    if not b:
        return a
    kept: list[str] = []
    for x in a:
        for y in b:
            narrower = x if glob_within(x, y) else y if glob_within(y, x) else None
            if narrower is not None and narrower not in kept:
                kept.append(narrower)
    return tuple(kept) or (NO_MODEL,)


def _intersect_plain(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    if not a:
        return b
    if not b:
        return a
    both = tuple(x for x in a if x in b)
    return both or (NO_REGION,)


def combine(key: KeyPolicy, team: KeyPolicy | None) -> KeyPolicy:
    """The stricter of a key's and its team's policy, field by field."""
    if team is None:
        return key
    numbers = {name: _min(getattr(key, name), getattr(team, name)) for name in _NUMBERS}
    # A budget and its period go together: take the period of the budget that won.
    period = key.budget_period
    if numbers["max_budget_usd"] is not None and numbers["max_budget_usd"] != key.max_budget_usd:
        period = team.budget_period
    elif period is None:
        period = team.budget_period
    return KeyPolicy(
        models=intersect_globs(key.models, team.models),
        budget_period=period,
        expires_at=_min(key.expires_at, team.expires_at),
        regions=_intersect_plain(key.regions, team.regions),
        **numbers,
    )

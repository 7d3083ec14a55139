"""``router.learn:``: how the ``cheapest-capable`` strategy learns and how bold it is.

.. code-block:: yaml

    router:
      learn:
        success_target: 0.8     # the cheapest deployment estimated to succeed this often wins
        explore: 0.05           # at most this share of requests explore (Thompson sampling)
        min_tier: {coding: 1}   # never below this tier for a class (tiers: cheapest 0, ...)
        tiers: {gpt-4o: 2}      # a deployment's tier (default: its rank by price in the catalogue)
        prior: 0.9              # the optimistic prior of an unseen model: start cheap
        half_life: 6h           # how fast old outcomes fade (a degrading model is re-learned)
        retry_window: 10m       # the same turn sent again within this: the answer failed silently
        feedback_window: 24h    # how long a request's routing is kept for POST /v1/feedback
        feedback_fail_below: 0  # a feedback score under this marks the answer failed
        feedback_fail_metrics: [tests_passed, accepted]   # a metric false marks it failed
        budget_low: 0.2         # under this share of a budget left, move to cheaper models
        budget_target: 0.6      # the success target while a budget runs low
        scope: global           # global: every team's outcomes teach everyone; team: each team learns its own
        teams:
          research: {success_target: 0.95, explore: 0, min_tier: {coding: 2}}

A team's entry overrides the policy keys it names (``success_target``, ``explore``,
``min_tier``, ``budget_low``, ``budget_target``); the rest are the top level's.
``scope: team`` keeps each team's estimates apart (slower to learn, but one team's
feedback and retries never move another's routing; keys without a team learn together).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from clasp_gateway import Choice, Duration, Field, Integer, ListOf, MapOf, Number, Section, String

MAX_TIER = 99


@dataclass(slots=True, frozen=True)
class LearnPolicy:
    """What one team's requests may do: the choice rule and its bounds."""

    success_target: float = 0.6
    failure_weight: float = 1.0
    explore: float = 0.05
    min_tier: dict[str, int] = field(default_factory=dict)
    budget_low: float = 0.2
    budget_target: float = 0.6


@dataclass(slots=True, frozen=True)
class LearnSettings:
    """The validated ``router.learn:`` section."""

    policy: LearnPolicy = field(default_factory=LearnPolicy)
    teams: dict[str, LearnPolicy] = field(default_factory=dict)
    tiers: dict[str, int] = field(default_factory=dict)
    prior: float = 0.9
    half_life: float = 6 * 3600.0
    retry_window: float = 600.0
    feedback_window: float = 86_400.0
    feedback_fail_below: float = 0.0
    feedback_fail_metrics: tuple[str, ...] = ("tests_passed", "accepted")
    scope: str = "global"

    def policy_for(self, team: str | None) -> LearnPolicy:
        """The team's policy (the top level's when the team has none)."""
        if team is None:
            return self.policy
        return self.teams.get(team, self.policy)


def _policy_fields() -> dict[str, Field]:
    return {
        "success_target": Field(Number(above=0, maximum=1)),
        "failure_weight": Field(Number(0, 1000)),
        "explore": Field(Number(0, 1)),
        "min_tier": Field(MapOf(Integer(0, MAX_TIER), expected="a mapping of request class to tier")),
        "budget_low": Field(Number(0, 1)),
        "budget_target": Field(Number(above=0, maximum=1)),
    }


SECTION = Section({
    **_policy_fields(),
    "teams": MapOf(Section(_policy_fields()), expected="a mapping of team name to policy keys"),
    "tiers": MapOf(Integer(0, MAX_TIER), expected="a mapping of deployment id to tier"),
    "prior": Number(above=0, maximum=1),
    "half_life": Duration(1, 365 * 86_400),
    "retry_window": Duration(0, 86_400),
    "feedback_window": Duration(0, 30 * 86_400),
    "feedback_fail_below": Number(-1_000_000, 1_000_000),
    "feedback_fail_metrics": ListOf(String(non_empty=True), single=True),
    "scope": Choice("global", "team"),
})
"""The schema of ``router.learn:`` (a key not given parses as ``None``: the default)."""


def learn_settings(raw: dict[str, Any]) -> LearnSettings:
    """The settings from ``SECTION.parse``'s answer (``None``: the default)."""
    base = LearnSettings()
    raw = {k: v for k, v in raw.items() if v is not None}
    policy_keys = {f.name for f in dataclasses.fields(LearnPolicy)}
    top = dataclasses.replace(base.policy, **{k: v for k, v in raw.items() if k in policy_keys})
    teams = {name: dataclasses.replace(top, **{k: v for k, v in (own or {}).items() if v is not None})
             for name, own in (raw.get("teams") or {}).items()}
    rest = {k: v for k, v in raw.items() if k not in policy_keys and k != "teams"}
    if "feedback_fail_metrics" in rest:
        rest["feedback_fail_metrics"] = tuple(rest["feedback_fail_metrics"])
    return dataclasses.replace(base, policy=top, teams=teams, **rest)

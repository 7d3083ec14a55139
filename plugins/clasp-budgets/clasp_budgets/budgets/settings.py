"""The ``budgets:`` section of clasp.yaml, and the budgets a key's policy implies.

```yaml
budgets:
  lease_ttl: 30s          # a reservation a dead replica held is freed (and charged) this long after
  checkpoint_interval: 1s # running requests renew their leases with what they served so far
  max_wait: 30s           # a request whose worst case only in-flight requests block waits this long
  keys: {on_outage: fail_closed}          # settings for keys' own max_budget_usd
  limits:
    - name: platform-monthly
      scope: team         # key | team | project | user | global
      match: platform     # only this team; omitted: every team gets its own budget
      usd: 500
      period: monthly     # daily | weekly | monthly | total (UTC calendar)
      mode: hard          # hard: refuse; soft: alert only
      lower_max_tokens: false   # opt-in: lower max_tokens to what is left
      on_outage: fail_closed    # or fail_open, with local_cap_usd per process
      thresholds: [50, 80, 100]
```
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from clasp_gateway import (
    Boolean,
    Choice,
    Config,
    Duration,
    Field,
    Integer,
    ListOf,
    Number,
    Principal,
    Section,
    String,
)

from .periods import PERIODS

SCOPES = ("key", "team", "project", "user", "global")
DEFAULT_THRESHOLDS = (50.0, 80.0, 100.0)


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """One budget rule: a limit on spend per period for a scope (one instance per
    team, key, project or user it applies to, unless ``match`` names one)."""

    name: str
    usd: float
    scope: str = "global"
    match: str | None = None
    period: str = "monthly"
    mode: str = "hard"
    lower_max_tokens: bool = False
    min_tokens: int = 256
    on_outage: str = "fail_closed"
    local_cap_usd: float = 1.0
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    max_wait: float | None = None
    source: str = "config"
    """Where it comes from: ``config``, ``key`` (a key's policy) or ``database``."""

    @property
    def hard(self) -> bool:
        return self.mode == "hard"


@dataclass(frozen=True, slots=True)
class KeyBudgetDefaults:
    """How the budget of a key's own ``max_budget_usd`` behaves (``budgets.keys``)."""

    mode: str = "hard"
    lower_max_tokens: bool = False
    min_tokens: int = 256
    on_outage: str = "fail_closed"
    local_cap_usd: float = 1.0
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    """The whole section."""

    limits: tuple[BudgetSpec, ...] = ()
    keys: KeyBudgetDefaults = field(default_factory=KeyBudgetDefaults)
    lease_ttl: float = 30.0
    checkpoint_interval: float = 1.0
    """Seconds between renewals of running requests' leases with what they served so far."""
    max_wait: float = 30.0
    poll_interval: float = 1.0
    default_max_tokens: int = 4096
    """Output tokens assumed when neither the request nor the model says (the worst case)."""

    def for_key(self, principal: Principal) -> BudgetSpec | None:
        """The budget a key's own policy (``max_budget_usd``) implies, or None."""
        policy = principal.policy
        if policy.max_budget_usd is None:
            return None
        d = self.keys
        return BudgetSpec(
            name=f"key:{principal.name or principal.key_id}", usd=float(policy.max_budget_usd), scope="key",
            match=principal.key_id, period=policy.budget_period or "total", mode=d.mode,
            lower_max_tokens=d.lower_max_tokens, min_tokens=d.min_tokens, on_outage=d.on_outage,
            local_cap_usd=d.local_cap_usd, thresholds=d.thresholds, source="key",
        )


_THRESHOLDS = ListOf(Number(minimum=0, maximum=1000, above=None), expected="a list of percentages")

_COMMON: dict[str, Field] = {
    "mode": Field(Choice("hard", "soft"), "hard"),
    "lower_max_tokens": Field(Boolean(), False),
    "min_tokens": Field(Integer(minimum=1), 256),
    "on_outage": Field(Choice("fail_closed", "fail_open"), "fail_closed"),
    "local_cap_usd": Field(Number(minimum=0), 1.0),
    "thresholds": Field(_THRESHOLDS, list(DEFAULT_THRESHOLDS)),
}

LIMIT = Section({
    "name": Field(String(pattern=r"[A-Za-z0-9_.:@-]{1,64}", expected="a name of letters, digits, _.:@-"),
                  required=True),
    "scope": Field(Choice(*SCOPES), "global"),
    "match": Field(String(non_empty=True)),
    "usd": Field(Number(minimum=0), required="the spend allowed per period, in USD"),
    "period": Field(Choice(*PERIODS), "monthly"),
    "max_wait": Field(Duration(minimum=0)),
    **_COMMON,
})

SECTION = Section({
    "limits": Field(ListOf(LIMIT), []),
    "keys": Field(Section(dict(_COMMON)), {}),
    "lease_ttl": Field(Duration(minimum=1), 30.0),
    "checkpoint_interval": Field(Duration(minimum=0.05), 1.0),
    "max_wait": Field(Duration(minimum=0), 30.0),
    "poll_interval": Field(Duration(minimum=0.05), 1.0),
    "default_max_tokens": Field(Integer(minimum=1), 4096),
})


def spec_from(raw: dict[str, Any], source: str = "config") -> BudgetSpec:
    """A :class:`BudgetSpec` from a parsed limit (config or database row)."""
    values = {k: v for k, v in raw.items() if v is not None and k in BudgetSpec.__dataclass_fields__}
    if "thresholds" in values:
        values["thresholds"] = tuple(sorted(float(t) for t in values["thresholds"]))
    return replace(BudgetSpec(name=str(raw["name"]), usd=float(raw["usd"])), **values, source=source)


def parse_settings(config: Config, problems: list[str]) -> BudgetSettings:
    """The ``budgets:`` section; problems are appended as ``budgets.key: ...`` lines."""
    raw = SECTION.parse(config.raw.get("budgets"), "budgets", problems)
    limits = []
    names: set[str] = set()
    for i, item in enumerate(raw.get("limits") or []):
        if not isinstance(item, dict) or item.get("name") is None or item.get("usd") is None:
            continue  # already a problem
        if item["name"] in names:
            problems.append(f"budgets.limits.{i}.name: {item['name']!r} is used by another budget")
        names.add(item["name"])
        if item.get("scope") == "global" and item.get("match") is not None:
            problems.append(f"budgets.limits.{i}.match: a global budget applies to every request; remove match")
        limits.append(spec_from(item))
    if raw.get("checkpoint_interval") and raw.get("lease_ttl") and raw["checkpoint_interval"] * 2 > raw["lease_ttl"]:
        problems.append("budgets.checkpoint_interval: must be at most half of lease_ttl "
                        f"({raw['lease_ttl']:g}s), or leases of running requests expire between renewals")
    keys = raw.get("keys") or {}
    return BudgetSettings(
        limits=tuple(limits),
        keys=KeyBudgetDefaults(**{**keys, "thresholds": tuple(sorted(keys.get("thresholds") or DEFAULT_THRESHOLDS))}),
        lease_ttl=float(raw["lease_ttl"]), checkpoint_interval=float(raw["checkpoint_interval"]), max_wait=float(raw["max_wait"]),
        poll_interval=float(raw["poll_interval"]), default_max_tokens=int(raw["default_max_tokens"]),
    )

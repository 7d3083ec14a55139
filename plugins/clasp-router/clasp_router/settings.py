"""The ``router:`` section of clasp.yaml.

.. code-block:: yaml

    router:
      strategy: balanced          # chain | strict | cost | balanced | latency | availability | a plugin's
      latency_target_ms: 2000     # default target for the latency strategy (a key or header may lower it)
      max_request_cost_usd: 0.50  # estimated cost ceiling per request (a key or header may lower it)
      similar_fallback: true      # every chain candidate unavailable: try similar deployments
      explain: true               # the x-clasp-route response header
      learn: {...}                # the cheapest-capable strategy's learning (see .learn_settings)
      teams:                      # a team's own limits (a key or a header may lower them further)
        interns: {max_request_cost_usd: 0.05, latency_target_ms: 5000}
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from clasp_gateway import Boolean, Choice, Config, ConfigError, Field, MapOf, Number, Section, did_you_mean

from .learn_settings import SECTION as LEARN_SECTION
from .learn_settings import LearnSettings, learn_settings
from .registry import ALIASES, STRATEGIES

LATENCY_HEADER = "x-clasp-latency-target-ms"
"""A request header that sets (only lowers) the latency target, in milliseconds."""
COST_HEADER = "x-clasp-max-cost-usd"
"""A request header that sets (only lowers) the cost ceiling of one request, in dollars."""
LATENCY_KEY = "latency_target_ms"
COST_KEY = "max_request_cost_usd"
"""Key settings (``keys[].metadata``, or a virtual key's metadata) read by the router."""
MAX_COST_USD = 1000.0

MAX_LATENCY_TARGET_MS = 600_000.0


@dataclass(slots=True, frozen=True)
class RouterSettings:
    """The validated ``router:`` section."""

    strategy: str = "chain"
    latency_target_ms: float | None = None
    max_request_cost_usd: float | None = None
    similar_fallback: bool = True
    explain: bool = True
    learn: LearnSettings = field(default_factory=LearnSettings)
    teams: dict[str, dict[str, float]] = field(default_factory=dict)
    """Team name -> its ``latency_target_ms`` and ``max_request_cost_usd``."""


def _section(strategies: Iterable[str]) -> Section:
    names = dict.fromkeys([*STRATEGIES, *ALIASES, *strategies])
    return Section({
        "strategy": Field(Choice(*names), "chain"),
        "latency_target_ms": Field(Number(above=0, maximum=MAX_LATENCY_TARGET_MS), None),
        "max_request_cost_usd": Field(Number(above=0, maximum=MAX_COST_USD), None),
        "similar_fallback": Field(Boolean(), True),
        "explain": Field(Boolean(), True),
        "learn": Field(LEARN_SECTION),
        "teams": Field(MapOf(Section({
            "latency_target_ms": Number(above=0, maximum=MAX_LATENCY_TARGET_MS),
            "max_request_cost_usd": Number(above=0, maximum=MAX_COST_USD),
        }), expected="a mapping of team name to latency_target_ms and max_request_cost_usd"), {}),
    })


def parse_settings(config: Config, strategies: Iterable[str] = ()) -> RouterSettings:
    """Validate ``router:``; raise ConfigError listing every problem. ``strategies`` are
    the names other plugins registered."""
    problems: list[str] = []
    names = list(strategies)
    top = _section(names).parse(config.raw.get("router"), "router", problems)
    known = dict.fromkeys([*STRATEGIES, *ALIASES, *names])
    for route in config.models:
        own = route.settings.get("router")
        if own is not None and own not in known:
            guess = did_you_mean(str(own), list(known))
            problems.append(f"models.{route.pattern}.router: {own!r} is not a routing strategy"
                            + (f"; did you mean {guess!r}?" if guess else "") + f" (strategies: {', '.join(known)})")
    learn = top.get("learn") or {}
    ids = [d.id for d in config.deployments()]
    for ident in (learn.get("tiers") or {}):
        if ident not in ids:
            guess = did_you_mean(str(ident), ids)
            problems.append(f"router.learn.tiers.{ident}: not a deployment id"
                            + (f"; did you mean {guess!r}?" if guess else "") + f" (deployments: {', '.join(ids)})")
    if problems:
        raise ConfigError(config.source, problems)
    return RouterSettings(strategy=top["strategy"], latency_target_ms=top["latency_target_ms"],
                          max_request_cost_usd=top["max_request_cost_usd"],
                          similar_fallback=top["similar_fallback"], explain=top["explain"],
                          learn=learn_settings(learn),
                          teams={name: {k: v for k, v in (own or {}).items() if v is not None}
                                 for name, own in (top.get("teams") or {}).items()})


def _tightest(configured: float | None, *asked: Any, maximum: float) -> float | None:
    """The smallest of the configured value and the valid asked ones: a key or a client
    only ever tightens a limit, never widens it (bad values are ignored)."""
    best = configured
    for raw in asked:
        if raw is None or isinstance(raw, bool):
            continue
        try:
            value = float(raw)
        except (TypeError, ValueError):
            continue
        if 0 < value <= maximum and (best is None or value < best):
            best = value
    return best


def latency_target(settings: RouterSettings, headers: dict[str, str], key: dict[str, Any] | None = None,
                   team: str | None = None) -> float | None:
    """The request's latency target (ms): ``router.latency_target_ms``, the team's
    (``router.teams``), the key's ``latency_target_ms``, the
    ``x-clasp-latency-target-ms`` header; the smallest wins."""
    own = settings.teams.get(team or "", {}).get(LATENCY_KEY)
    return _tightest(settings.latency_target_ms, own, (key or {}).get(LATENCY_KEY), headers.get(LATENCY_HEADER),
                     maximum=MAX_LATENCY_TARGET_MS)


def cost_ceiling(settings: RouterSettings, headers: dict[str, str], key: dict[str, Any] | None = None,
                 team: str | None = None) -> float | None:
    """The request's cost ceiling ($): ``router.max_request_cost_usd``, the team's
    (``router.teams``), the key's ``max_request_cost_usd``, the ``x-clasp-max-cost-usd``
    header; the smallest wins."""
    own = settings.teams.get(team or "", {}).get(COST_KEY)
    return _tightest(settings.max_request_cost_usd, own, (key or {}).get(COST_KEY), headers.get(COST_HEADER),
                     maximum=MAX_COST_USD)

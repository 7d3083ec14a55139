"""The ``router:`` section of clasp.yaml.

.. code-block:: yaml

    router:
      strategy: balanced          # chain | strict | cost | balanced | latency | availability | a plugin's
      latency_target_ms: 2000     # default target for the latency strategy (a header may lower it)
      similar_fallback: true      # every chain candidate unavailable: try similar deployments
      explain: true               # the x-clasp-route response header
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from clasp_gateway import Boolean, Choice, Config, ConfigError, Field, Number, Section, did_you_mean

from .strategies import ALIASES, STRATEGIES

LATENCY_HEADER = "x-clasp-latency-target-ms"
"""A request header that sets (only lowers) the latency target, in milliseconds."""

MAX_LATENCY_TARGET_MS = 600_000.0


@dataclass(slots=True, frozen=True)
class RouterSettings:
    """The validated ``router:`` section."""

    strategy: str = "chain"
    latency_target_ms: float | None = None
    similar_fallback: bool = True
    explain: bool = True


def _section(strategies: Iterable[str]) -> Section:
    names = dict.fromkeys([*STRATEGIES, *ALIASES, *strategies])
    return Section({
        "strategy": Field(Choice(*names), "chain"),
        "latency_target_ms": Field(Number(above=0, maximum=MAX_LATENCY_TARGET_MS), None),
        "similar_fallback": Field(Boolean(), True),
        "explain": Field(Boolean(), True),
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
    if problems:
        raise ConfigError(config.source, problems)
    return RouterSettings(strategy=top["strategy"], latency_target_ms=top["latency_target_ms"],
                          similar_fallback=top["similar_fallback"], explain=top["explain"])


def latency_target(settings: RouterSettings, headers: dict[str, str]) -> float | None:
    """The request's latency target: the header may only tighten the configured one (a
    client chooses among the deployments it may use, never widens anything)."""
    configured = settings.latency_target_ms
    raw = headers.get(LATENCY_HEADER)
    if not raw:
        return configured
    try:
        asked = float(raw)
    except ValueError:
        return configured
    if not 0 < asked <= MAX_LATENCY_TARGET_MS:
        return configured
    return asked if configured is None else min(asked, configured)

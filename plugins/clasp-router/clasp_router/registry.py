"""Every strategy the router registers, by name, and the aliases a ``router:`` may use.

Kept apart from :mod:`.strategies` (the pure orderings) and :mod:`.learned` (the
learned one, which builds on them) so neither imports the other's users.
"""

from __future__ import annotations

from collections.abc import Sequence

from clasp_gateway import Deployment, RequestContext

from .learned import cheapest_capable
from .strategies import BASIC, Strategy

STRATEGIES: dict[str, Strategy] = {**BASIC, "cheapest-capable": cheapest_capable}
"""The router's strategies by name (``register_routing_strategies``)."""

ALIASES = {"learned": "cheapest-capable", "fastest": "latency"}
"""Friendlier names a pool's ``router:`` may use."""

LEARNED = frozenset({"cheapest-capable"})
"""Strategies that read the learner's estimates (the router prepares a view for them)."""


def order(name: str, ctx: RequestContext, deployments: Sequence[Deployment]) -> list[Deployment]:
    """Apply one of the router's strategies by name (or alias)."""
    return STRATEGIES[ALIASES.get(name, name)](ctx, list(deployments))

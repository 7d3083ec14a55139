"""The routing strategies, each registered with ``register_routing_strategies``.

A strategy is ``(ctx, deployments) -> ordered deployments``. The router hands every
strategy deployments that already passed the region and capability filters; what it
knows about the request (its needs, measured latency, availability) is in
``ctx.state[VIEW_KEY]`` (:class:`RouteView`), so a strategy stays a pure function.

The meanings (issue 12, the seed's):

``chain``
    The configured order (clasp.yaml), nothing else: what ``strict`` meant before.
``strict``
    Only fallbacks with the same capabilities as the first candidate (tools, vision,
    reasoning, at least its context and output windows), even if dearer; chain order.
``cost``
    Cheapest first, even if slightly less capable. The rule: a candidate may have less
    than the first one (a smaller window, no vision) as long as it has what *this*
    request needs (the capability filter already removed the others); then estimated
    cost ascending, available before unavailable, ties in chain order.
``balanced``
    Capability and cost weighed together: ``(1 - capability/max) + cost/max``, lower
    first, available before unavailable.
``latency``
    With a latency target: the candidates measured under it (or not measured yet)
    first, cheapest first among them; then the rest by measured time to first byte.
    Without one: unmeasured first (to measure them), then fastest first.
``availability``
    Available (circuit breaker closed) first, then the most rate-limit headroom (from
    the providers' headers), then fastest measured, chain order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clasp_gateway import Deployment, RequestContext

from .capability import Needs, capability_score, estimated_cost, same_capabilities

VIEW_KEY = "router.view"
"""``ctx.state`` key of the request's :class:`RouteView`."""

Strategy = Callable[[RequestContext, list[Deployment]], list[Deployment]]


def _always(_: str) -> bool:
    return True


def _unknown(_: str) -> float | None:
    return None


@dataclass(slots=True)
class RouteView:
    """What a strategy may read about the request being routed."""

    needs: Needs = field(default_factory=Needs)
    ttfb_ms: Callable[[str], float | None] = _unknown
    available: Callable[[str], bool] = _always
    headroom: Callable[[str], float | None] = _unknown
    """Share of requests left in the provider's rate-limit window (``None``: unknown)."""
    latency_target_ms: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    """What the strategy ranked by, per deployment id (for explain)."""
    learn: Any = None
    """The learner's view of the request (a :class:`~.learned.LearnView`, ``None`` when
    no learned strategy routes it); typed loosely here to keep this module free of the
    learning modules."""


def view_of(ctx: RequestContext) -> RouteView:
    """The request's view (a neutral one when the router did not prepare it)."""
    found = ctx.state.get(VIEW_KEY)
    if isinstance(found, RouteView):
        return found
    found = ctx.state[VIEW_KEY] = RouteView()
    return found


def chain(ctx: RequestContext, deployments: list[Deployment]) -> list[Deployment]:
    """The configured order."""
    return list(deployments)


def strict(ctx: RequestContext, deployments: list[Deployment]) -> list[Deployment]:
    """Only candidates as capable as the first, chain order."""
    if not deployments:
        return []
    primary = deployments[0]
    return [d for d in deployments if d is primary or same_capabilities(primary, d)]


def cost(ctx: RequestContext, deployments: list[Deployment]) -> list[Deployment]:
    """Cheapest capable first (available first)."""
    view = view_of(ctx)
    costs = {d.id: estimated_cost(d, view.needs) for d in deployments}
    view.scores = costs
    return sorted(deployments, key=lambda d: (not view.available(d.id), costs[d.id]))


def balanced(ctx: RequestContext, deployments: list[Deployment]) -> list[Deployment]:
    """Capability and cost together, lower score first (available first)."""
    view = view_of(ctx)
    caps = {d.id: capability_score(d) for d in deployments}
    costs = {d.id: estimated_cost(d, view.needs) for d in deployments}
    top_cap = max(caps.values(), default=0.0) or 1.0
    top_cost = max(costs.values(), default=0.0) or 1.0
    scores = {i: (1 - caps[i] / top_cap) + costs[i] / top_cost for i in caps}
    view.scores = scores
    return sorted(deployments, key=lambda d: (not view.available(d.id), scores[d.id]))


def latency(ctx: RequestContext, deployments: list[Deployment]) -> list[Deployment]:
    """Under the latency target (cheapest first), else fastest first."""
    view = view_of(ctx)
    target = view.latency_target_ms
    measured = {d.id: view.ttfb_ms(d.id) for d in deployments}
    view.scores = {i: v for i, v in measured.items() if v is not None}

    def key(d: Deployment) -> tuple[bool, int, float]:
        ms = measured[d.id]
        if target is not None:
            if ms is None or ms <= target:
                return (not view.available(d.id), 0, estimated_cost(d, view.needs))
            return (not view.available(d.id), 1, ms)
        return (not view.available(d.id), 0 if ms is None else 1, ms or 0.0)

    return sorted(deployments, key=key)


def availability(ctx: RequestContext, deployments: list[Deployment]) -> list[Deployment]:
    """Available first, then the most rate-limit headroom (unknown counts as full: a
    provider that sends no headers is not penalised), then fastest measured."""
    view = view_of(ctx)
    rooms = {d.id: view.headroom(d.id) for d in deployments}
    view.scores = {i: r for i, r in rooms.items() if r is not None}

    def key(d: Deployment) -> tuple[bool, float, float]:
        room = rooms[d.id]
        return (not view.available(d.id), -(1.0 if room is None else room), view.ttfb_ms(d.id) or 0.0)

    return sorted(deployments, key=key)


BASIC: dict[str, Strategy] = {
    "chain": chain, "strict": strict, "cost": cost, "balanced": balanced, "latency": latency,
    "availability": availability,
}
"""The strategies that need no learning (:mod:`.registry` adds ``cheapest-capable``)."""

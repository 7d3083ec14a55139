"""One app's router: the per-request hooks.

``resolve_route`` (below clasp-fallback's wrapper, which adds class chains before and
its own strategy after): regions first (a restricted key never leaves them; nothing
left is a 403 that says so), then the capability filter (deployments that cannot serve
this request move out; if none can, the chain is kept so the upstream explains), then
the configured strategy; when every candidate left is unavailable, similar-capability
deployments from the catalogue are appended (inside the regions). ``before_attempt``
names the deployment tried and why in ``x-clasp-route``; ``after_attempt`` feeds the
latency moving averages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from clasp_gateway import (
    Attempt,
    CanonicalRequest,
    Deployment,
    Gateway,
    InvalidRequestError,
    RequestContext,
    await_me_maybe,
    hookimpl,
)

from .capability import capability_score, estimated_cost, missing, needs_from, needs_of, same_capabilities
from .catalogue import Measurements, region_of
from .experiments import Experiments
from .learning import Learner
from .regions import allowed, restrict
from .registry import ALIASES, LEARNED, STRATEGIES
from .settings import RouterSettings, cost_ceiling, latency_target
from .shared import SharedLatency
from .strategies import VIEW_KEY, RouteView

log = logging.getLogger("clasp.router")

STRATEGY_KEY = "router.strategy"
"""``ctx.state`` key of a route's own strategy (``router:`` of a pool), over ``router.strategy``."""

LEARN_VIEW_KEY = "router.learn.view"
"""``ctx.state`` key of the learner's view, for a request a learned strategy routes."""

PLAN_KEY = "router.plan"
"""``ctx.state`` key of the request's :class:`Plan` (for the explain header)."""

MAX_HEADER = 200


class Availability(Protocol):
    """What the router asks clasp-fallback (``app.state.fallback``): is a deployment's
    circuit breaker letting requests through."""

    def available(self, deployment_id: str) -> bool: ...


class BudgetView(Protocol):
    """What the router asks clasp-budgets (``app.state.budget_remaining``): the smallest
    share left of the budgets a request counts against (``None``: none known)."""

    def remaining_fraction(self, ctx: RequestContext) -> float | None: ...


@dataclass(slots=True)
class Plan:
    """How one request was routed: the strategy, what the filters removed, the order."""

    strategy: str
    removed: dict[str, str] = field(default_factory=dict)
    """Deployment id -> the filter that removed it (``region``, ``tools``, ``context``...)."""
    order: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    tight: list[str] = field(default_factory=list)
    """Candidates whose context window looks too small (left to the core's context fitting)."""
    similar: list[str] = field(default_factory=list)
    """Similar-capability deployments appended from the catalogue."""
    note: str = ""

    def why(self, deployment_id: str) -> str:
        """The short reason shown in ``x-clasp-route`` (no secrets: ids and filter names)."""
        rank = self.order.index(deployment_id) + 1 if deployment_id in self.order else 0
        parts = [deployment_id, f"strategy={self.strategy}", f"rank={rank}/{len(self.order)}"]
        if self.removed:
            counts: dict[str, int] = {}
            for reason in self.removed.values():
                counts[reason] = counts.get(reason, 0) + 1
            parts.append("filtered=" + ",".join(f"{k}:{v}" for k, v in sorted(counts.items())))
        if self.tight:
            parts.append(f"context-tight={len(self.tight)}")
        if deployment_id in self.similar:
            parts.append("similar-capability fallback")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)[:MAX_HEADER]


class RouterRuntime:
    """The router of one gateway app (registered in that app's plugin manager)."""

    def __init__(self, gateway: Gateway, settings: RouterSettings, availability: Callable[[], Availability | None],
                 budgets: Callable[[], BudgetView | None] = lambda: None):
        self.gateway = gateway
        self._budgets = budgets
        self.settings = settings
        self.measurements = Measurements()
        self._availability = availability
        self._catalogue = gateway.config.deployments()
        self.shared = SharedLatency(gateway.state, self.measurements, lambda: gateway.clock())
        self._by_id = {d.id: d for d in self._catalogue}
        self.learner = Learner(settings.learn, self._catalogue, gateway.state, lambda: gateway.clock())
        self.experiments: Experiments | None = None
        """``experiments:`` (set in ``startup``; ``None`` when there are none)."""
        gateway.providers.track_rate_limits()  # headroom for single-key deployments too

    def headroom(self, deployment_id: str) -> float | None:
        """Share of requests left in the provider's rate-limit window, from its headers,
        or of the deployment's own ``limits:`` (clasp-fallback counts them), whichever
        is smaller."""
        dep = self._by_id.get(deployment_id)
        found = None if dep is None else self.gateway.providers.headroom(dep)
        own = getattr(self._availability(), "headroom", None)
        mine = own(deployment_id) if callable(own) else None
        if isinstance(mine, (int, float)):
            found = mine if found is None else min(found, mine)
        return found

    def available(self, deployment_id: str) -> bool:
        """Breaker closed (or no clasp-fallback installed: assume available)."""
        source = self._availability()
        return True if source is None else source.available(deployment_id)

    @hookimpl(trylast=True)
    def resolve_route(
        self, ctx: RequestContext, request: CanonicalRequest, candidates: list[Deployment]
    ) -> Any:
        """Regions, capability filter, strategy, similar-capability fallback.

        ``trylast``: the router is the default answer; a plugin that answers
        ``resolve_route`` itself takes routing over (the core still enforces regions)."""
        return self._route(ctx, request, candidates)

    async def _route(self, ctx: RequestContext, request: CanonicalRequest, candidates: list[Deployment]) -> list[Deployment]:
        self.shared.maybe_refresh(d.id for d in self._catalogue)  # a background task, at most every few seconds
        model_route = self.gateway.resolve_model(ctx.public_model)
        own = model_route.settings.get("router")
        if own:  # a pool's (or route's) own strategy: `router: cheapest-capable`
            ctx.state[STRATEGY_KEY] = own
        name = ctx.state.get(STRATEGY_KEY) or self.settings.strategy
        if ALIASES.get(name, name) in LEARNED:
            budgets = self._budgets()
            left = budgets.remaining_fraction(ctx) if budgets is not None else None
            ctx.state[LEARN_VIEW_KEY] = await self.learner.prepare(ctx, request, left)
        route = plan_route(ctx, request, candidates, self.settings, self.measurements.ttfb, self.available,
                           self._catalogue, self.gateway.strategies, headroom=self.headroom)
        if isinstance(route, Exception):
            raise route
        ordered, plan = route
        strategy = self.gateway.strategies.get(plan.strategy)
        if plan.strategy not in STRATEGIES and strategy is not None:  # another plugin's
            ordered = list(await await_me_maybe(strategy(ctx, ordered)) or ordered)
            plan.order = [d.id for d in ordered]
        if self.experiments is not None:  # a split puts the candidate first; a shadow copies in the background
            view = ctx.state.get(VIEW_KEY)
            needs = view.needs if isinstance(view, RouteView) else needs_of(request, ctx.hints)
            ordered = self.experiments.apply(ctx, request, model_route.pattern, ordered, needs)
            plan.order = [d.id for d in ordered]
        ctx.state[PLAN_KEY] = plan
        return ordered

    @hookimpl
    def before_attempt(self, ctx: RequestContext, deployment: Deployment, attempt_number: int) -> None:
        """Say which deployment is tried and why (the last one tried is the one that answered)."""
        plan = ctx.state.get(PLAN_KEY)
        if self.settings.explain and isinstance(plan, Plan):
            ctx.response_headers["x-clasp-route"] = plan.why(deployment.id)

    @hookimpl
    async def after_attempt(self, ctx: RequestContext, attempt: Attempt) -> None:
        """Fold a successful attempt's time to first byte and speed into the averages,
        and share them with the other replicas (throttled); a failed one is an outcome
        for the learner."""
        self.learner.attempt_ended(ctx, attempt)
        if not attempt.ok or not attempt.first_byte:
            return
        ttfb_ms = (attempt.first_byte - attempt.started) * 1000
        speed = None
        usage = getattr(attempt, "usage", None)
        out = getattr(usage, "output_tokens", None) if usage is not None else None
        if attempt.ended and out and attempt.ended > attempt.first_byte:
            speed = out / (attempt.ended - attempt.first_byte)
        self.measurements.of(attempt.deployment.id).add(ttfb_ms, speed)
        await self.shared.publish(attempt.deployment.id)

    @hookimpl
    async def record(self, ctx: RequestContext, event: dict[str, Any]) -> None:
        """The learner's outcomes: the request's answer, and feedback on an earlier one."""
        kind = event.get("kind")
        if kind == "request":
            await self.learner.finished(ctx, event)
        elif kind == "feedback":
            await self.learner.feedback(event)


def plan_route(
    ctx: RequestContext,
    request: CanonicalRequest,
    candidates: list[Deployment],
    settings: RouterSettings,
    ttfb_ms: Callable[[str], float | None],
    available: Callable[[str], bool],
    catalogue: list[Deployment],
    registered: dict[str, Any] | None = None,
    *,
    headroom: Callable[[str], float | None] | None = None,
) -> tuple[list[Deployment], Plan] | Exception:
    """The routing decision without side effects beyond ``ctx.state`` (``clasp route
    --explain`` calls it too). Returns the order and its plan, or the 4xx to raise."""
    strategy = ctx.state.get(STRATEGY_KEY) or settings.strategy
    plan = Plan(ALIASES.get(strategy, strategy))
    kept = restrict(ctx, candidates)
    if isinstance(kept, Exception):
        return kept
    kept_ids = {d.id for d in kept}  # ids: comparing deployments field by field is slow
    for d in candidates:
        if d.id not in kept_ids:
            plan.removed[d.id] = "region"
    learn = ctx.state.get(LEARN_VIEW_KEY)
    features = getattr(learn, "features", None)
    needs = needs_from(features) if features is not None else needs_of(request, ctx.hints)
    capable = []
    for d in kept:
        reason = missing(d, needs)
        if reason is None or reason == "context":
            # Context room is the core's to fit (it counts exactly, reroutes to the next
            # candidate that takes the request whole, trims or summarises, and says so
            # in x-clasp-context): the router only notes it.
            capable.append(d)
            if reason is not None:
                plan.tight.append(d.id)
        else:
            plan.removed[d.id] = reason
    if not capable:  # nobody can: keep the chain, the upstream (or the core's trimming) explains
        capable = kept
        plan.note = "no candidate fits, chain kept"
        for d in kept:
            plan.removed.pop(d.id, None)
    key = ctx.principal.metadata if ctx.principal is not None else None
    team = ctx.principal.team if ctx.principal is not None else None
    ceiling = cost_ceiling(settings, ctx.headers, key, team)
    if ceiling is not None:
        affordable = [d for d in capable if estimated_cost(d, needs) <= ceiling]
        if not affordable:
            cheapest = min(capable, key=lambda d: estimated_cost(d, needs))
            return InvalidRequestError(
                f"no deployment of {ctx.public_model!r} can serve this request under its cost ceiling of "
                f"${ceiling:g} (the cheapest estimate is ${estimated_cost(cheapest, needs):.6g}, on {cheapest.id}); "
                "lower max_tokens or raise the ceiling"
            )
        affordable_ids = {d.id for d in affordable}
        for d in capable:
            if d.id not in affordable_ids:
                plan.removed[d.id] = "cost-ceiling"
        capable = affordable
    view = RouteView(needs=needs, ttfb_ms=ttfb_ms, available=available, headroom=headroom or (lambda _: None),
                     latency_target_ms=latency_target(settings, ctx.headers, key, team), learn=learn)
    ctx.state[VIEW_KEY] = view
    name = plan.strategy
    ordered = STRATEGIES[name](ctx, capable) if name in STRATEGIES else list(capable)
    if name == "strict":
        ordered_ids = {d.id for d in ordered}
        for d in capable:
            if d.id not in ordered_ids:
                plan.removed[d.id] = "strict"
    if view.learn is not None and name in LEARNED:
        for ident in view.learn.removed:
            plan.removed[ident] = "min-tier"
        plan.note = "; ".join([*view.learn.why, *([plan.note] if plan.note else [])])
    if settings.similar_fallback and ordered and not any(available(d.id) for d in ordered):
        seen = {d.id for d in candidates}
        primary = ordered[0]
        similar = [d for d in allowed(ctx, catalogue)
                   if d.id not in seen and missing(d, needs) is None and available(d.id)
                   and same_capabilities(primary, d)]
        similar.sort(key=lambda d: (abs(capability_score(d) - capability_score(primary)), estimated_cost(d, needs)))
        plan.similar = [d.id for d in similar]
        ordered = ordered + similar
    plan.order = [d.id for d in ordered]
    plan.scores = dict(view.scores)
    return ordered, plan


def describe(deployment: Deployment) -> str:
    """A deployment for explain output: id, upstream model and region."""
    region = region_of(deployment)
    return deployment.label + (f" [{region}]" if region else "")

"""Which deployments a request tries, in which order.

1. The chain: the public model's deployments (clasp.yaml order), or the chain of the
   request's class (``fallback.tasks``, keyed by ``ctx.request_class``: the core's one
   classification), optionally followed by the model's chain.
2. The strategy: a name a plugin registered (``register_routing_strategies``; clasp-router
   registers ``chain``, ``strict``, ``cost``, ``balanced``, ``latency``, ``availability``
   with the seed's capability meanings) wins; else the built-in ones: ``chain`` (and the
   old ``strict``) keep the chain order; ``cost`` puts the cheapest healthy deployment
   first; ``balanced`` puts healthy ones first, ordered by a weighted mix of recent
   latency, error rate and cost.
Context windows are the core's business (``clasp_gateway/context.py`` reroutes a request
that does not fit, or trims it, after this ordering); this module only reuses its
token estimate for cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from clasp_gateway import CanonicalRequest, Deployment, RequestContext, await_me_maybe, estimate_tokens

from .breaker import BreakerView
from .settings import BalanceWeights, FallbackSettings
from .stats import Stats

DEFAULT_OUTPUT_TOKENS = 1000
"""Output tokens assumed for cost ordering when the request sets no ``max_tokens``."""


def estimated_cost(deployment: Deployment, input_tokens: int, output_tokens: int) -> float:
    """Dollars this request would cost on ``deployment`` (catalogue or clasp.yaml prices)."""
    info = deployment.info
    # At least one token each way, so prices still order deployments for tiny requests.
    return max(1, input_tokens) * info.input_cost_per_token + max(1, output_tokens) * info.output_cost_per_token


def output_budget(request: CanonicalRequest) -> int:
    """The output tokens a request may produce, for cost estimates."""
    value = request.get("max_tokens") or request.get("max_completion_tokens")
    return value if isinstance(value, int) and value > 0 else DEFAULT_OUTPUT_TOKENS


def chain_for(ctx: RequestContext, candidates: list[Deployment], settings: FallbackSettings) -> list[Deployment]:
    """The model's chain, or the chain of the request's class (then the model's,
    unless disabled)."""
    task = settings.tasks.get(ctx.request_class) if settings.tasks else None
    if task is None:
        return list(candidates)
    chain = list(task.deployments)
    if task.then_model_chain:
        seen = {d.id for d in chain}
        chain += [d for d in candidates if d.id not in seen]
    return chain


def healthy_first(deployments: Sequence[Deployment], peek: Callable[[str], BreakerView]) -> list[Deployment]:
    """Closed breakers first, then half-open/open ones; stable otherwise."""
    return sorted(deployments, key=lambda d: not peek(d.id).healthy)


def by_cost(
    deployments: Sequence[Deployment], peek: Callable[[str], BreakerView], input_tokens: int, output_tokens: int
) -> list[Deployment]:
    """Cheapest healthy first; ties keep the chain order."""
    return sorted(
        deployments,
        key=lambda d: (not peek(d.id).healthy, estimated_cost(d, input_tokens, output_tokens)),
    )


def balanced(
    deployments: Sequence[Deployment],
    peek: Callable[[str], BreakerView],
    stats: Stats,
    weights: BalanceWeights,
    input_tokens: int,
    output_tokens: int,
) -> list[Deployment]:
    """Healthy first, then by ``w.latency * latency/max + w.errors * error rate + w.cost * cost/max``.

    A deployment without latency data scores 0 for latency (optimism under
    uncertainty): it is tried, measured, and then ranked on what it showed, so a new
    or recovered deployment is never starved. Ties keep the chain order.
    """
    latencies = {d.id: stats.of(d.id).ttfb_ms for d in deployments}
    known = [v for v in latencies.values() if v is not None]
    max_latency = max(known, default=0.0) or 1.0
    costs = {d.id: estimated_cost(d, input_tokens, output_tokens) for d in deployments}
    max_cost = max(costs.values(), default=0.0) or 1.0

    def score(d: Deployment) -> tuple[bool, float]:
        latency = latencies[d.id]
        latency_part = 0.0 if latency is None else latency / max_latency
        return (
            not peek(d.id).healthy,
            weights.latency * latency_part
            + weights.errors * stats.of(d.id).error_rate
            + weights.cost * costs[d.id] / max_cost,
        )

    return sorted(deployments, key=score)


def order(
    request: CanonicalRequest,
    candidates: list[Deployment],
    settings: FallbackSettings,
    peek: Callable[[str], BreakerView],
    stats: Stats,
) -> list[Deployment]:
    """Apply the built-in strategy (``chain`` and ``strict`` keep the order)."""
    if settings.strategy == "cost":
        return by_cost(candidates, peek, estimate_tokens(request), output_budget(request))
    if settings.strategy == "balanced":
        return balanced(candidates, peek, stats, settings.weights, estimate_tokens(request), output_budget(request))
    return list(candidates)


async def custom_order(strategy: Any, ctx: RequestContext, deployments: list[Deployment]) -> list[Deployment]:
    """Run a plugin's registered strategy (it may return an awaitable)."""
    result = await await_me_maybe(strategy(ctx, deployments))
    return list(result) if result is not None else deployments

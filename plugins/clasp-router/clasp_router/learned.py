"""``cheapest-capable`` (alias ``learned``): the cheapest deployment that is estimated
to do this kind of request well, learned from outcomes.

Per request the router's learner (:mod:`.learning`) puts a :class:`LearnView` in the
request's :class:`~.strategies.RouteView`: the class and difficulty bucket, the
team's policy, the deployments' tiers, the tier that answered an earlier try of the
same turn (a retry), and how much of the key's budget is left. The choice, in order:

1. **Floor.** Never below the class's ``min_tier`` (those deployments are removed,
   not just put last); a retried turn goes one tier above the one that answered
   before (when there is one): the earlier answer failed silently.
2. **Latency target.** Candidates measured over the request's target go out of the
   choice (when some are under it).
3. **Target.** The cheapest available candidate whose estimated success (the Beta
   posterior mean of its (class, bucket) arm) reaches ``success_target`` wins; none
   does: the most likely to succeed (cheaper first on ties). Unseen arms start at
   an optimistic prior, so the cheapest is tried first and failures escalate.
4. **Exploration, bounded.** On an ``explore`` share of requests, Thompson samples
   replace the means (a Beta draw per candidate): an arm that failed a while ago
   gets another chance, and only that share of traffic pays for the trying.
5. **Budget.** When a budget of the key runs low (under ``budget_low`` of it left),
   the target drops to ``budget_target`` and exploration stops: traffic moves to
   cheaper capable models before the budget runs out.

The rest follow as fallbacks: stronger tiers first (the next one up), then cheaper
ones, unavailable ones last. Without a learner (``clasp route --explain`` with no
state) the same rule runs on the priors.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from clasp_gateway import Deployment, RequestContext

from .capability import estimated_cost
from .estimates import Estimates
from .learn_settings import LearnPolicy
from .strategies import cost, view_of


@dataclass(slots=True)
class LearnView:
    """What the learned strategy reads about one request (set by the router)."""

    estimates: Estimates
    policy: LearnPolicy
    tiers: dict[str, int]
    request_class: str
    bucket: int
    retry_tier: int | None = None
    """The tier of the deployment that answered an earlier try of this turn."""
    budget_left: float | None = None
    """The smallest share left of the key's budgets (``None``: no budget known)."""
    rng: random.Random = field(default_factory=random.Random)
    why: list[str] = field(default_factory=list)
    """What decided (for ``x-clasp-route`` and ``clasp route --explain``)."""
    removed: list[str] = field(default_factory=list)
    """Deployment ids below the class's minimum tier."""
    explored: bool = False


def cheapest_capable(ctx: RequestContext, deployments: list[Deployment]) -> list[Deployment]:
    """The learned choice first, then stronger tiers, then the rest (see the module)."""
    view = view_of(ctx)
    lv = view.learn
    if lv is None or not deployments:
        return cost(ctx, deployments)
    policy = lv.policy
    cls, bucket, est = lv.request_class, lv.bucket, lv.estimates
    tiers = lv.tiers
    costs = {d.id: estimated_cost(d, view.needs) for d in deployments}
    means = {d.id: est.mean(d.id, cls, bucket) for d in deployments}
    view.scores = means

    def tier(d: Deployment) -> int:
        return tiers.get(d.id, 0)

    floor = policy.min_tier.get(cls, 0)
    kept = [d for d in deployments if tier(d) >= floor]
    if not kept:  # nobody reaches the floor: the strongest there is
        top = max(tier(d) for d in deployments)
        kept = [d for d in deployments if tier(d) == top]
    if len(kept) < len(deployments):
        lv.removed = [d.id for d in deployments if d not in kept]
        lv.why.append(f"min_tier={floor}")
    pool = kept
    if lv.retry_tier is not None:
        above = [d for d in pool if tier(d) > lv.retry_tier]
        if above:
            pool = above
            lv.why.append(f"retry above tier {lv.retry_tier}")
        else:
            lv.why.append("retry, no stronger tier")
    target_ms = view.latency_target_ms
    if target_ms is not None:
        within = [d for d in pool if (ms := view.ttfb_ms(d.id)) is None or ms <= target_ms]
        if within and len(within) < len(pool):
            pool = within
            lv.why.append("latency target")
    choosable = [d for d in pool if view.available(d.id)] or pool
    target = policy.success_target
    low = lv.budget_left is not None and lv.budget_left < policy.budget_low
    if low:
        target = min(target, policy.budget_target)
        lv.why.append(f"budget low ({lv.budget_left:.0%} left)")
    lv.explored = not low and policy.explore > 0 and lv.rng.random() < policy.explore
    if lv.explored:
        values = {d.id: est.sample(d.id, cls, bucket) for d in choosable}
        lv.why.append("explore")
    else:
        values = {d.id: means[d.id] for d in choosable}
    good = [d for d in choosable if values[d.id] >= target]
    if good:
        expected = expected_costs(good, values, costs, tier, 0.0 if low else policy.failure_weight)
        chosen = min(good, key=lambda d: (expected[d.id], costs[d.id], tier(d)))
    else:
        chosen = max(choosable, key=lambda d: (values[d.id], -costs[d.id]))
        lv.why.append("none reaches the target")
    lv.why.insert(0, f"{cls}/{bucket} p={means[chosen.id]:.2f} target={target:.2f}")
    mine = tier(chosen)
    rest = [d for d in kept if d is not chosen]
    stronger = sorted((d for d in rest if tier(d) > mine), key=lambda d: (tier(d), costs[d.id]))
    weaker = sorted((d for d in rest if tier(d) <= mine), key=lambda d: (-means[d.id], costs[d.id]))
    ordered = [chosen, *stronger, *weaker]
    return sorted(ordered, key=lambda d: not view.available(d.id))  # stable: available first


def expected_costs(candidates: list[Deployment], success: dict[str, float], costs: dict[str, float],
                   tier: Callable[[Deployment], int], failure_weight: float) -> dict[str, float]:
    """What choosing each candidate is expected to cost: its own price, plus, when it
    fails (``1 - success``), the escalation to the cheapest stronger candidate and a
    penalty for the failure itself (``failure_weight`` times that escalation: the
    user's lost turn). The strongest escalates to itself."""
    out = {}
    for d in candidates:
        up = [costs[o.id] for o in candidates if tier(o) > tier(d)]
        escalation = min(up) if up else costs[d.id]
        out[d.id] = costs[d.id] + (1 - success[d.id]) * escalation * (1 + failure_weight)
    return out


def price_tiers(deployments: list[Deployment], overrides: dict[str, int]) -> dict[str, int]:
    """Each deployment's tier: ``router.learn.tiers`` when it names it, else its rank
    among the catalogue's distinct prices (the cheapest are tier 0)."""

    def price(d: Deployment) -> float:
        info = d.info
        return round(info.input_cost_per_token + info.output_cost_per_token, 15)

    ranks = {p: i for i, p in enumerate(sorted({price(d) for d in deployments}))}
    return {d.id: overrides.get(d.id, ranks[price(d)]) for d in deployments}

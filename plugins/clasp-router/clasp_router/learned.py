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
from dataclasses import dataclass, field

from clasp_gateway import Deployment, RequestContext, RequestFeatures

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
    features: RequestFeatures | None = None
    """The request's features, gathered once for the learner and the capability filter."""
    arm_prefix: str = ""
    """Prefix of the estimates' arm names: ``team@`` when ``learn.scope`` is ``team``."""
    why: list[str] = field(default_factory=list)
    """What decided (for ``x-clasp-route`` and ``clasp route --explain``)."""
    removed: list[str] = field(default_factory=list)
    """Deployment ids below the class's minimum tier."""
    explored: bool = False


def cheapest_capable(ctx: RequestContext, deployments: list[Deployment]) -> list[Deployment]:
    """The learned choice first, then stronger tiers, then the rest (see the module).

    Written for the hot path: one row per candidate (deployment, tier, cost, estimate),
    computed once; the rest is list work on those rows."""
    view = view_of(ctx)
    lv = view.learn
    if lv is None or not deployments:
        return cost(ctx, deployments)
    policy = lv.policy
    cls, bucket, est, why = lv.request_class, lv.bucket, lv.estimates, lv.why
    needs, tier_of = view.needs, lv.tiers
    prefix = lv.arm_prefix
    learned = est.means([prefix + d.id for d in deployments], cls, bucket)
    means = {d.id: learned[prefix + d.id] for d in deployments} if prefix else learned
    view.scores = means
    rows = [(d, tier_of.get(d.id, 0), estimated_cost(d, needs), means[d.id]) for d in deployments]

    floor = policy.min_tier.get(cls, 0)
    kept = [r for r in rows if r[1] >= floor]
    if not kept:  # nobody reaches the floor: the strongest there is
        top = max(r[1] for r in rows)
        kept = [r for r in rows if r[1] == top]
    if len(kept) < len(rows):
        kept_ids = {r[0].id for r in kept}
        lv.removed = [r[0].id for r in rows if r[0].id not in kept_ids]
        why.append(f"min_tier={floor}")
    pool = kept
    if lv.retry_tier is not None:
        above = [r for r in pool if r[1] > lv.retry_tier]
        if above:
            pool = above
            why.append(f"retry above tier {lv.retry_tier}")
        else:
            why.append("retry, no stronger tier")
    target_ms = view.latency_target_ms
    if target_ms is not None:
        within = [r for r in pool if (ms := view.ttfb_ms(r[0].id)) is None or ms <= target_ms]
        if within and len(within) < len(pool):
            pool = within
            why.append("latency target")
    down = {r[0].id for r in rows if not view.available(r[0].id)}
    choosable = [r for r in pool if r[0].id not in down] if down else pool
    choosable = choosable or pool
    target = policy.success_target
    low = lv.budget_left is not None and lv.budget_left < policy.budget_low
    if low:
        target = min(target, policy.budget_target)
        why.append(f"budget low ({lv.budget_left:.0%} left)")
    lv.explored = not low and policy.explore > 0 and lv.rng.random() < policy.explore
    if lv.explored:  # Thompson samples stand in for the estimates
        choosable = [(r[0], r[1], r[2], est.sample(prefix + r[0].id, cls, bucket)) for r in choosable]
        why.append("explore")
    good = [r for r in choosable if r[3] >= target]
    if good:
        expected = expected_costs(good, 0.0 if low else policy.failure_weight)
        chosen = min(zip(expected, good, strict=True), key=lambda pair: (pair[0], pair[1][2], pair[1][1]))[1]
    else:
        chosen = max(choosable, key=lambda r: (r[3], -r[2]))
        why.append("none reaches the target")
    why.insert(0, f"{cls}/{bucket} p={means[chosen[0].id]:.2f} target={target:.2f}")
    mine = chosen[1]
    first = chosen[0]
    stronger = sorted((r for r in kept if r[1] > mine and r[0] is not first), key=lambda r: (r[1], r[2]))
    weaker = sorted((r for r in kept if r[1] <= mine and r[0] is not first), key=lambda r: (-r[3], r[2]))
    ordered = [first, *(r[0] for r in stronger), *(r[0] for r in weaker)]
    if not down:
        return ordered
    return sorted(ordered, key=lambda d: d.id in down)  # stable: available first


Row = tuple[Deployment, int, float, float]
"""A candidate as the strategy sees it: (deployment, tier, estimated cost, success)."""


def expected_costs(rows: list[Row], failure_weight: float) -> list[float]:
    """What choosing each row is expected to cost: its own price, plus, when it fails
    (``1 - success``), the escalation to the cheapest row of a higher tier and a penalty
    for the failure itself (``failure_weight`` times that escalation: the user's lost
    turn). The strongest escalates to itself. One pass from the top tier down."""
    out = [0.0] * len(rows)
    weight = 1 + failure_weight
    above: float | None = None  # the cheapest of a strictly higher tier
    level: int | None = None
    level_min: float | None = None  # the cheapest of the tier being walked
    for i in sorted(range(len(rows)), key=lambda k: -rows[k][1]):
        _, tier, own, success = rows[i]
        if tier != level:
            if level_min is not None:
                above = level_min if above is None else min(above, level_min)
            level, level_min = tier, None
        out[i] = own + (1 - success) * (own if above is None else above) * weight
        level_min = own if level_min is None or own < level_min else level_min
    return out


def price_tiers(deployments: list[Deployment], overrides: dict[str, int]) -> dict[str, int]:
    """Each deployment's tier: ``router.learn.tiers`` when it names it, else its rank
    among the catalogue's distinct prices (the cheapest are tier 0)."""

    def price(d: Deployment) -> float:
        info = d.info
        return round(info.input_cost_per_token + info.output_cost_per_token, 15)

    ranks = {p: i for i, p in enumerate(sorted({price(d) for d in deployments}))}
    return {d.id: overrides.get(d.id, ranks[price(d)]) for d in deployments}

"""Hedged first byte: when to start a second attempt, and how many may be started.

The core races two attempts (``clasp_gateway.hedging``); this module answers its two
hooks. ``hedge_delay``: each deployment's learned p99 time to first byte
(:class:`TtfbEstimate`, an exponentially weighted mean and variance of the log of
successful attempts' TTFB: LLM first-token times are skewed, close to log-normal, and
an EWMA follows a deployment whose latency drifts), never below ``floor``, and
``initial_delay`` until ``min_samples`` were seen. ``start_hedge``: a token bucket per
deployment (:class:`HedgeBudget`) that earns ``ratio`` of a hedge per first attempt,
up to ``burst``, so hedges stay within ``ratio`` extra upstream calls on healthy
traffic, where about 1% of attempts pass their p99.

Until a deployment's latency is learned, losing a race says nothing by default (slow and
hung look the same after ``initial_delay``; ``cold_losses: count`` says otherwise): it
neither counts against its breaker nor makes it suspect, and hedges away from it come
out of the budget; its first-byte timeout still counts. Once learned, a deployment whose last attempt ended without a first byte (it
lost a hedge race, or timed out) is *suspect* until it answers again: hedging away from it is free, because
its call was lost anyway (without hedging the request would have made the same two
calls, the second after the timeout). This is what keeps a hanging deployment's added
latency at the hedge delay for every request in flight before its breaker opens,
rather than only for the first ``burst`` of them. All of it is this replica's own
(in memory): the ratio holds per replica, so it holds overall.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from statistics import NormalDist

from clasp_gateway import Attempt, Deployment, RequestContext

MIN_TTFB = 0.001
"""Seconds: shorter samples are clamped (the log of zero)."""


@dataclass(slots=True, frozen=True)
class HedgeSettings:
    """``fallback.hedge``."""

    enabled: bool = True
    quantile: float = 0.99
    """Which quantile of a deployment's time to first byte starts a hedge."""
    floor: float = 0.5
    """Never hedge sooner than this (seconds), however fast the deployment usually is."""
    initial_delay: float = 1.0
    """The delay used until ``min_samples`` successful attempts were measured."""
    min_samples: int = 20
    cold_losses: str = "ignore"
    """A race lost before ``min_samples``: ``ignore`` (says nothing of the deployment's
    health: never starves a deployment merely slower than ``initial_delay``) or
    ``count`` (a failure, and the deployment is suspect: a new deployment that hangs
    costs ``initial_delay`` per request instead of the first-byte timeout)."""
    alpha: float = 0.05
    """Weight of the newest sample in the moving mean and variance (~ the last 40)."""
    ratio: float = 0.05
    """Hedges earned per first attempt on a deployment: at most this share extra calls."""
    burst: float = 10.0
    """Hedges a deployment may bank (a quiet deployment can still hedge a few)."""


@dataclass(slots=True)
class TtfbEstimate:
    """Moving mean and variance of ``log(ttfb)``: a p-quantile in O(1) per sample."""

    mean: float = 0.0
    var: float = 0.0
    samples: int = 0

    def add(self, seconds: float, alpha: float) -> None:
        """Fold one successful attempt's time to first byte in."""
        x = math.log(max(MIN_TTFB, seconds))
        self.samples += 1
        if self.samples == 1:
            self.mean, self.var = x, 0.0
            return
        # The first samples weigh as a plain average, then as the EWMA (no cold bias).
        a = max(alpha, 1.0 / self.samples)
        diff = x - self.mean
        incr = a * diff
        self.mean += incr
        self.var = (1 - a) * (self.var + diff * incr)

    def quantile(self, z: float) -> float:
        """The ``z``-score quantile in seconds (log-normal)."""
        return math.exp(self.mean + z * math.sqrt(max(0.0, self.var)))


@dataclass(slots=True)
class HedgeBudget:
    """Token buckets of hedges, per deployment."""

    ratio: float
    burst: float
    tokens: dict[str, float] = field(default_factory=dict)

    def note_request(self, key: str) -> None:
        self.tokens[key] = min(self.burst, self.tokens.get(key, self.burst) + self.ratio)

    def try_spend(self, key: str) -> bool:
        left = self.tokens.get(key, self.burst)
        if left < 1.0:
            return False
        self.tokens[key] = left - 1.0
        return True


class Hedger:
    """This replica's TTFB estimates, hedge budgets and suspect deployments."""

    def __init__(self, settings: HedgeSettings) -> None:
        self.settings = settings
        self.z = NormalDist().inv_cdf(settings.quantile)
        self.estimates: dict[tuple[str, bool], TtfbEstimate] = {}
        """Per (deployment id, streamed): a whole non-streamed answer is its first byte."""
        self.budget = HedgeBudget(settings.ratio, settings.burst)
        self.suspect: set[str] = set()
        self.hedges: Counter[str] = Counter()
        """Hedges started away from each deployment by this replica (status page)."""
        self.free_hedges: Counter[str] = Counter()
        """Of which away from a suspect deployment (no budget spent)."""

    def p99(self, deployment_id: str, stream: bool = True) -> float | None:
        """The learned quantile of ``deployment_id``'s TTFB in seconds (``None`` until
        ``min_samples``)."""
        estimate = self.estimates.get((deployment_id, stream))
        if estimate is None or estimate.samples < self.settings.min_samples:
            return None
        return estimate.quantile(self.z)

    def delay(self, ctx: RequestContext, deployment: Deployment) -> float | None:
        """Seconds to wait for ``deployment``'s first byte before hedging, or ``None``
        (hedging off, or the first-byte timeout comes first)."""
        if not self.settings.enabled:
            return None
        self.budget.note_request(deployment.id)
        learned = self.p99(deployment.id, ctx.client_stream)
        delay = max(self.settings.floor, learned if learned is not None else self.settings.initial_delay)
        timeout = deployment.timeouts.first_byte
        if timeout is not None and delay >= timeout:
            return None  # the timeout fails over sooner than a hedge would start
        return delay

    def claim(self, deployment: Deployment) -> bool:
        """Whether a hedge away from ``deployment`` may start now (spends a token
        unless the deployment is suspect)."""
        if deployment.id in self.suspect:
            self.free_hedges[deployment.id] += 1
            self.hedges[deployment.id] += 1
            return True
        if self.budget.try_spend(deployment.id):
            self.hedges[deployment.id] += 1
            return True
        return False

    def observe(self, ctx: RequestContext, attempt: Attempt, *, timed_out: bool) -> None:
        """Learn from an ended attempt: its TTFB when it answered; suspect when it
        timed out (or lost a race) without a first byte."""
        ident = attempt.deployment.id
        if attempt.first_byte is not None:
            self.suspect.discard(ident)
            if attempt.ok:
                estimate = self.estimates.get((ident, ctx.client_stream))
                if estimate is None:
                    estimate = self.estimates[(ident, ctx.client_stream)] = TtfbEstimate()
                estimate.add(attempt.first_byte - attempt.started, self.settings.alpha)
        elif timed_out:
            self.suspect.add(ident)

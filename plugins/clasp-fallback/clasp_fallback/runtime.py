"""One app's reliability state, and the per-request hooks that use it.

A :class:`FallbackRuntime` is created in ``startup`` and registered in *that app's*
plugin manager (as pytest registers its per-session plugin objects), so two gateways
in one process never share breakers, budgets or statistics. Per request it:

* ``resolve_route`` (a wrapper around any routing plugin): swaps in the chain of the
  request's class (``fallback.tasks``) and applies the strategy (the core then fits context windows);
* ``before_attempt``: skips deployments whose breaker is open or that are at one of
  their own ``limits:`` (deployment_limits.py), claims half-open probes;
* ``on_error``: retry the same deployment (backoff with full jitter, ``retry-after``,
  within the retry budget), go to the next candidate, or fail;
* ``after_attempt``: feeds the breaker, the statistics and the TTFB estimates, and
  releases the attempt's per-deployment limit slot;
* ``hedge_delay``/``start_hedge``: hedged first byte (hedge.py);
* ``on_exhausted``: stale answer, default response, or a clear 529 (see degrade.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import orjson

from clasp_gateway import (
    Attempt,
    CanonicalRequest,
    Deployment,
    Gateway,
    RequestContext,
    StateBackend,
    StateSettings,
    StateUnavailable,
    await_me_maybe,
    create_state,
    estimate_tokens,
    hookimpl,
)

from .breaker import BreakerStore, BreakerView, SharedBreakers
from .classify import Failure, classify
from .degrade import Skip, exhausted_answer
from .deployment_limits import DeploymentLimits, Limits, limits_of
from .health import HealthChecker
from .hedge import Hedger
from .retry import RetryBudget, backoff_delay, retry_after_delay
from .settings import FallbackSettings
from .stats import CheckResult, Stats
from .strategy import chain_for, custom_order, order

log = logging.getLogger("clasp.fallback")

STATE_KEY = "fallback"
"""``ctx.state`` key of the request's :class:`RequestState`."""


@dataclass(slots=True)
class RequestState:
    """What the fallback plugin knows about one request while it is routed."""

    chain: list[Deployment]
    probes: set[str] = field(default_factory=set)
    skipped: list[Skip] = field(default_factory=list)
    tokens: int = 0
    """The request's estimated input tokens (counted against ``tpm`` limits)."""
    slots: dict[str, list[int]] = field(default_factory=dict)
    """Per deployment id: the token counts of the limit slots this request holds."""

    def untried(self, ctx: RequestContext, deployment: Deployment) -> list[Deployment]:
        """Candidates neither tried nor skipped yet (whatever order the core settled on:
        its context fitting may have moved a larger window first)."""
        done = {a.deployment.id for a in ctx.attempts} | {s.deployment for s in self.skipped} | {deployment.id}
        return [d for d in self.chain if d.id not in done]


class FallbackRuntime:
    """Retries, fallback, circuit breakers and health for one gateway app.

    Breaker and health-check state lives in the gateway's state backend
    (``gateway.state``, the core's ``state:`` section), or, when ``breaker.redis_url``
    is set, in a Redis backend of this plugin's own (a per-plugin override).
    """

    def __init__(self, gateway: Gateway, settings: FallbackSettings) -> None:
        self.gateway = gateway
        self.settings = settings
        self.stats = Stats()
        r = settings.retry
        self.budget = RetryBudget(ratio=r.budget_ratio, window=r.budget_window, min_retries=r.budget_min_retries)
        b = settings.breaker
        self.own_state: StateBackend | None = None
        if b.redis_url is not None and b.redis_url.value:
            # The override keeps its historical layout: key_prefix is the whole prefix.
            self.own_state = create_state(StateSettings(
                backend="redis", url=b.redis_url, prefix="", timeout=b.redis_timeout, configured=True))
        self.state: StateBackend = self.own_state or gateway.state
        self.namespace = b.key_prefix or ("clasp:fallback:" if self.own_state else "fallback:")
        self.breakers: BreakerStore = SharedBreakers(b, self.state, self.namespace)
        self.health = HealthChecker(self)
        self.hedger = Hedger(settings.hedge)
        self.limits = DeploymentLimits(self.state, self.namespace)
        self.deployment_limits: dict[str, Limits] = {}
        for dep in gateway.config.deployments():
            found = limits_of(dep)
            if found is not None:
                self.deployment_limits[dep.id] = found
        self._count_tokens = any(lim.tpm for lim in self.deployment_limits.values())
        self._limited_until: dict[str, float] = {}

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open this plugin's own Redis (with ``breaker.redis_url``) and start the health checks."""
        if self.own_state is not None:
            await self.own_state.open()  # logs (once) if Redis is down; serving goes on regardless
        self.health.start()
        h = self.settings.health
        log.info(
            "fallback: strategy %s, %d retr%s per deployment, breakers in %s, health checks %s",
            self.settings.strategy, self.settings.retry.attempts, "y" if self.settings.retry.attempts == 1 else "ies",
            self.breakers.describe, f"every {h.interval:g}s ({h.method})" if h.interval else "off",
        )

    async def close(self) -> None:
        """Stop the health checks and close this plugin's own Redis (the gateway closes its state)."""
        await self.health.stop()
        await self.breakers.close()
        if self.own_state is not None:
            await self.own_state.close()

    def available(self, deployment_id: str) -> bool:
        """Whether ``deployment_id``'s circuit breaker lets requests through (closed), as
        this replica last saw it: the public surface routing plugins (clasp-router) read
        for availability, without reaching into the breaker store."""
        if not self.breakers.peek(deployment_id).healthy:
            return False
        return self._limited_until.get(deployment_id, 0.0) <= time.monotonic()

    def headroom(self, deployment_id: str) -> float | None:
        """The share left of ``deployment_id``'s tightest own limit (``limits:``), as
        this replica last counted it; ``None`` without limits or before any count."""
        verdict = self.limits.last.get(deployment_id)
        return None if verdict is None else verdict.headroom

    def ttfb_p99(self, deployment_id: str) -> float | None:
        """The learned p99 time to first byte in seconds (hedge.py): of streamed
        answers, else (none measured yet) of whole ones."""
        found = self.hedger.p99(deployment_id, True)
        return found if found is not None else self.hedger.p99(deployment_id, False)

    def limits_of(self, deployment_id: str) -> dict[str, int] | None:
        """A deployment's own ``limits:`` (the ones set: rpm, tpm, rpd, max_concurrency), if any."""
        found = self.deployment_limits.get(deployment_id)
        return None if found is None else {k: v for k, v in dataclasses.asdict(found).items() if v is not None}

    # --- per request --------------------------------------------------------------------------

    def request_state(self, ctx: RequestContext) -> RequestState:
        """The request's state (created from the model's chain if routing skipped us)."""
        state = ctx.state.get(STATE_KEY)
        if not isinstance(state, RequestState):
            chain = list(self.gateway.resolve_model(ctx.public_model).deployments)
            state = ctx.state[STATE_KEY] = RequestState(chain)
        return state

    @hookimpl(wrapper=True)
    def resolve_route(
        self, ctx: RequestContext, request: CanonicalRequest, candidates: list[Deployment]
    ) -> Generator[None, Any, Any]:
        """Wrap any routing plugin: the class's chain before it, the strategy after it."""
        # The core hands every request a fresh list, so routers below see the class's chain.
        candidates[:] = chain_for(ctx, candidates, self.settings)
        inner = yield
        return self._finish_route(ctx, request, candidates, inner)

    async def _finish_route(
        self, ctx: RequestContext, request: CanonicalRequest, candidates: list[Deployment], inner: Any
    ) -> list[Deployment]:
        routed = await await_me_maybe(inner) if inner is not None else None
        ordered = list(routed) if routed is not None else list(candidates)
        registered = self.gateway.strategies.get(self.settings.strategy)
        if registered is not None:  # a plugin's (clasp-router's strict/cost/balanced win over ours)
            ordered = await custom_order(registered, ctx, ordered)
        else:
            ordered = order(request, ordered, self.settings, self.breakers.peek, self.stats)
        state = ctx.state[STATE_KEY] = RequestState(ordered)
        if self._count_tokens:
            state.tokens = estimate_tokens(request)
        return ordered

    @hookimpl
    async def before_attempt(self, ctx: RequestContext, deployment: Deployment, attempt_number: int) -> bool:
        """Skip deployments whose breaker is open; claim half-open probes."""
        state = self.request_state(ctx)
        ticket = await self.breakers.acquire(deployment.id)
        if not ticket.allowed:
            view = self.breakers.peek(deployment.id)
            self.stats.of(deployment.id).skipped += 1
            wait = view.reopens_in if view.state == "open" else None
            if view.state == "open":
                reason = "circuit breaker open" + (f", next probe in {wait:.1f}s" if wait else ", a probe is due")
            else:
                reason = "circuit breaker half-open, its one probe is in flight"
            await self._skip(ctx, state, deployment, reason, wait)
            return False
        limits = self.deployment_limits.get(deployment.id)
        if limits is not None and not await self._take_slot(ctx, state, deployment, limits):
            return False
        if ticket.probe:
            state.probes.add(deployment.id)
            self.stats.of(deployment.id).probes += 1
            log.info("%s probes %s (circuit breaker half-open)", ctx.request_id, deployment.id)
        if attempt_number == 1:
            self.budget.note_request(deployment.id)
        return True

    async def _take_slot(self, ctx: RequestContext, state: RequestState, deployment: Deployment, limits: Limits) -> bool:
        """Count this attempt against the deployment's own limits, or skip it."""
        verdict = await self.limits.acquire(deployment.id, limits, state.tokens)
        if verdict.ok:
            self._limited_until.pop(deployment.id, None)
            state.slots.setdefault(deployment.id, []).append(state.tokens)
            return True
        self._limited_until[deployment.id] = time.monotonic() + verdict.retry_after
        self.stats.of(deployment.id).limited += 1
        limit = getattr(limits, verdict.reason, None)
        await self._skip(ctx, state, deployment, f"at its {verdict.reason} limit ({limit}), room in "
                         f"{verdict.retry_after:.1f}s", verdict.retry_after, limit=True)
        return False

    async def _free_slot(self, state: RequestState, deployment_id: str, used_tokens: int | None) -> None:
        """Release one limit slot of this request on ``deployment_id`` (tokens corrected to ``used_tokens``)."""
        held = state.slots.get(deployment_id)
        limits = self.deployment_limits.get(deployment_id)
        if not held or limits is None:
            return
        counted = held.pop()
        correction = 0 if used_tokens is None or not limits.tpm else used_tokens - counted
        await self.limits.release(deployment_id, limits, correction)

    @hookimpl
    def hedge_delay(self, ctx: RequestContext, deployment: Deployment, attempt_number: int) -> float | None:
        """Hedge after the deployment's learned p99 time to first byte (hedge.py)."""
        return self.hedger.delay(ctx, deployment)

    @hookimpl
    def start_hedge(self, ctx: RequestContext, deployment: Deployment, candidate: Deployment) -> bool:
        """Within the hedge budget (free away from a suspect deployment)."""
        return self.hedger.claim(deployment)

    @hookimpl
    async def record(self, ctx: RequestContext, event: dict[str, Any]) -> None:
        """The request is over: free limit slots an attempt never started with (another
        plugin's ``before_attempt`` refused it after ours counted it)."""
        if event.get("kind") != "request":
            return
        state = ctx.state.get(STATE_KEY)
        if isinstance(state, RequestState) and state.slots:
            for ident in list(state.slots):
                while state.slots.get(ident):
                    await self._free_slot(state, ident, None)

    async def _skip(
        self, ctx: RequestContext, state: RequestState, deployment: Deployment, reason: str,
        retry_in: float | None = None, *, limit: bool = False,
    ) -> None:
        state.skipped.append(Skip(deployment.id, reason, retry_in, limit))
        event = {
            "kind": "skip",
            "request_id": ctx.request_id,
            "public_model": ctx.public_model,
            "deployment": deployment.id,
            "provider": deployment.provider,
            "model": deployment.model,
            "reason": reason,
            "time": time.time(),
        }
        await self.gateway.record(ctx, event)  # isolated: a broken recorder never breaks routing

    @hookimpl
    async def on_error(
        self, ctx: RequestContext, deployment: Deployment, error: Exception, attempt_number: int
    ) -> float | str | None:
        """Retry the same deployment, try the next candidate, or fail."""
        failure = classify(error)
        if failure is None:
            return None
        state = self.request_state(ctx)
        if failure.kind in ("overflow", "refusal"):
            # The core already gave an overflow its one extra go (a larger window, or
            # trimmed harder); another candidate may still take it. None left: the
            # client's 400 ("prompt is too long", a refusal), never a degraded answer.
            return "next" if state.untried(ctx, deployment) else "fail"
        if failure.kind == "invalid":
            return "fail"
        if failure.kind in ("misconfigured", "protocol"):
            return "next"
        delay = self._retry_delay(deployment, failure, attempt_number)
        return "next" if delay is None else delay

    def _retry_delay(self, deployment: Deployment, failure: Failure, attempt_number: int) -> float | None:
        """Seconds before retrying ``deployment``, or ``None`` to move on."""
        r = self.settings.retry_for(deployment.id)
        if failure.retry_after is not None and failure.retry_after > r.max_retry_after:
            return None  # waiting that long is worse than another deployment (or a fast error)
        if attempt_number > r.attempts or not failure.matches(r.on):
            return None
        if not self.breakers.peek(deployment.id).healthy:
            return None  # this failure opened the breaker: stop hammering it
        if not self.budget.try_spend(deployment.id):
            log.info("retry budget of %s is spent: moving on instead of retrying", deployment.id)
            return None
        self.stats.of(deployment.id).retries += 1
        if failure.retry_after is not None:
            return retry_after_delay(failure.retry_after, r.base_delay)
        return backoff_delay(attempt_number, r.base_delay, r.max_delay)

    @hookimpl
    async def after_attempt(self, ctx: RequestContext, attempt: Attempt) -> None:
        """Feed the breaker and the statistics (streams report when they end or break)."""
        dep = attempt.deployment
        failure = classify(attempt.error)
        state = ctx.state.get(STATE_KEY)
        probe = False
        if isinstance(state, RequestState) and dep.id in state.probes:
            probe = True
            state.probes.discard(dep.id)
        healthy = failure is None or not failure.counts_against_deployment
        if isinstance(state, RequestState) and state.slots.get(dep.id):
            usage = attempt.usage
            used = usage.input_tokens + usage.output_tokens + usage.cache_read_input_tokens if usage else None
            await self._free_slot(state, dep.id, used)
        if (not probe and getattr(attempt.error, "kind", None) == "slow" and self.settings.hedge.cold_losses == "ignore"
                and self.hedger.p99(dep.id, ctx.client_stream) is None):
            # Lost a hedge race before its latency was learned (it waited initial_delay):
            # slow or hung cannot be told apart yet, so it says nothing of its health.
            # (A probe that lost still fails its probe: the breaker stays open.)
            self.stats.attempt_ended(dep.id, ok=False, counts=False, ttfb=None, error=None)
            return
        self.hedger.observe(ctx, attempt, timed_out=failure is not None and failure.kind == "timeout")
        rest_for = 0.0
        r = self.settings.retry_for(dep.id)
        if (
            failure is not None and failure.kind == "rate_limited" and failure.retry_after
            and failure.retry_after > r.max_retry_after and self.settings.breaker.rest_on_retry_after
        ):
            rest_for = failure.retry_after
        before = self.breakers.peek(dep.id)
        view = await self.breakers.report(dep.id, healthy, probe=probe, rest_for=rest_for)
        self._log_transition(dep, before, view)
        ttfb = attempt.first_byte - attempt.started if attempt.first_byte else None
        self.stats.attempt_ended(
            dep.id, ok=attempt.ok, counts=failure is None or failure.counts_against_deployment, ttfb=ttfb,
            error=getattr(attempt.error, "message", str(attempt.error)) if attempt.error else None,
        )

    @staticmethod
    def _log_transition(dep: Deployment, before: BreakerView, after: BreakerView) -> None:
        if before.state == after.state and before.trips == after.trips:
            return
        if after.state == "open":
            log.warning(
                "circuit breaker for %s opened (%s): requests skip it for %.1fs, then one probe goes through",
                dep.id, after.reason or "failures", after.reopens_in,
            )
        elif after.state == "closed" and before.state != "closed":
            log.warning("circuit breaker for %s closed: the probe succeeded, traffic resumes", dep.id)

    @hookimpl(trylast=True)
    def on_exhausted(self, ctx: RequestContext, request: CanonicalRequest, error: Exception) -> Any:
        """Every candidate failed: stale answer, default response or a clear 529."""
        state = self.request_state(ctx)
        answer = exhausted_answer(ctx, error, state.chain, state.skipped, self.settings.default_response)
        if isinstance(answer, list):
            log.warning("%s answered degraded (%s): every deployment of %r failed",
                        ctx.request_id, ctx.response_headers.get("x-clasp-degraded"), ctx.public_model)
        return answer

    # --- health checks ---------------------------------------------------------------------

    async def claim_check(self, key: str, interval: float) -> bool:
        """Whether this process checks ``key`` this interval (always, unless the state is
        shared: then one process per interval holds a lease)."""
        if not self.state.shared:
            return True
        lease = self.namespace + "health-lease:" + key
        try:
            # 90% of the interval: the next round's claim must succeed.
            return await self.state.set(lease, "1", ttl=max(0.001, interval * 0.9), if_absent=True)
        except StateUnavailable:
            return True  # check locally

    async def check_ended(self, deployment: Deployment, check: CheckResult) -> None:
        """Record a health check and feed it to the breaker (not for config problems:
        those are static, and the request path explains them better)."""
        self.stats.of(deployment.id).check = check
        if self.state.shared:
            key = self.namespace + "health:" + deployment.id
            record = {"ok": check.ok, "verdict": check.verdict, "ms": check.ms, "at": check.at, "method": check.method}
            try:
                await self.state.set(key, orjson.dumps(record), ttl=max(self.settings.health.interval * 3, 60))
            except StateUnavailable:
                pass  # this process's status page still shows it
        if check.method == "config":
            return
        before = self.breakers.peek(deployment.id)
        view = await self.breakers.report_check(deployment.id, check.ok, conclusive=check.method == "call")
        self._log_transition(deployment, before, view)
        if not check.ok:
            log.info("health check of %s failed: %s", deployment.id, check.verdict)

    async def last_check(self, deployment: Deployment) -> CheckResult | None:
        """The latest check of ``deployment`` by any process sharing the state, or by this one."""
        local = self.stats.of(deployment.id).check
        if not self.state.shared:
            return local
        try:
            raw = await self.state.get(self.namespace + "health:" + deployment.id)
        except StateUnavailable:
            return local
        if not raw:
            return local
        try:
            f = orjson.loads(raw)
            shared = CheckResult(bool(f["ok"]), str(f["verdict"]), float(f["ms"]), float(f["at"]), str(f["method"]))
        except (KeyError, ValueError, TypeError, orjson.JSONDecodeError):
            return local
        return shared if local is None or shared.at >= local.at else local

"""Admitting a request against every limit that applies to it, and settling it after.

Which limits apply (:func:`scopes_for`): the key's policy, its team's (``limits.teams``)
and its user's (``limits.users``, keyed by ``ctx.user``: one person behind a shared key).
Each kind is a sliding window in the state backend (``hit``): requests count 1 at
admission; tokens count an estimate at admission (the input estimate plus
``max_tokens`` clamped to ``output_estimate_cap``) and are corrected by the real usage
when the request ends. Concurrency is a total per scope (``add_within`` +1, -1 on every
exit path) with a lease TTL, so slots a killed replica held free themselves.

A request is two state operations (:mod:`.admit`): one atomic script at admission (the
runaway pause check and ``requests`` count, then every window and slot: each fits and is
counted, or none is, so a refused request costs the client nothing against its other
limits) and one at settlement (slots released, tokens corrected, the runaway ``spend``
count). What a (key, user) pair needs for those (its scopes, state keys, and per
backend its :class:`Terms`: limits, script arguments, header texts) is a :class:`Plan`,
built once and reused by its requests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from clasp_gateway import Principal, RequestContext, StateBackend, StateUnavailable, input_estimate

from .admit import ADMIT, SETTLE, Admitted, Tally
from .settings import LimitSet, LimitsSettings, limits_of
from .shape import Headroom, LimitExceeded, refusal, window_headers
from .store import Store

WINDOWS = (("rpm", 60.0, False), ("rpd", 86400.0, False), ("tpm", 60.0, True), ("tpd", 86400.0, True))
"""(kind, window seconds, counts tokens)."""

NS = "limits:"
PAUSE = NS + "pause:"
FLAG = NS + "rw:flag:"
COUNT = NS + "rw:"
COUNT_TTL_MS = 180_000
"""Per-minute runaway counters live three minutes (this one and the previous are read)."""

MAX_PLANS = 4096
"""Plans kept per process (the oldest go first): memory stays bounded with many users."""


@dataclass(slots=True, frozen=True)
class Scope:
    """One subject limits apply to: ``key``, ``team`` or ``user``."""

    kind: str
    ident: str
    """Its id in state keys (a key's id, a team or user name)."""
    label: str
    """How a refusal names it (a key's name, never its secret)."""
    limits: LimitSet


@dataclass(slots=True, frozen=True)
class Window:
    """One sliding window of a plan."""

    scope: Scope
    kind: str
    """``rpm``, ``rpd``, ``tpm`` or ``tpd``."""
    length: float
    """Seconds."""
    tokens: bool
    key: str


class Admission:
    """What one request holds: token counts to correct, concurrency slots to release, and
    what its admission answered (runaway counts included)."""

    __slots__ = ("backend", "estimate", "headers", "plan", "refused", "result", "settled", "terms")

    def __init__(self, backend: StateBackend, plan: Plan, terms: Terms, estimate: int, result: Admitted) -> None:
        self.backend = backend
        self.plan = plan
        self.terms = terms
        self.estimate = estimate
        self.result = result
        self.headers: dict[str, str] | None = None
        """The headroom headers for the answer (``None``: no window applies)."""
        self.refused: LimitExceeded | None = None
        """The 429 of a window or slot that did not fit (nothing of the request counted)."""
        self.settled = False

    @property
    def slots(self) -> list[str]:
        """The concurrency slots this request holds (none when refused)."""
        return self.plan.slot_keys if self.result.ok else []


def scopes_for(ctx: RequestContext, settings: LimitsSettings) -> list[Scope]:
    """The scopes with limits for this request (empty: nothing to count)."""
    out: list[Scope] = []
    principal = ctx.principal
    if principal is not None:
        own = limits_of(principal.policy)
        if not own.empty:
            out.append(Scope("key", principal.key_id, f"key '{principal.name or 'unnamed'}'", own))
        if principal.team is not None:
            team = settings.teams.get(principal.team)
            if team is not None and not team.empty:
                out.append(Scope("team", principal.team, f"team '{principal.team}'", team))
    if ctx.user is not None and settings.users:
        user = settings.users.get(ctx.user) or settings.users.get("default")
        if user is not None and not user.empty:
            out.append(Scope("user", ctx.user, f"user '{ctx.user}'", user))
    return out


def subjects_for(ctx: RequestContext) -> list[tuple[str, str]]:
    """(runaway subject id, label) of the key and the user behind it."""
    out = []
    if ctx.principal is not None:
        out.append((f"key:{ctx.principal.key_id}", f"key '{ctx.principal.name or 'unnamed'}'"))
    if ctx.user is not None:
        out.append((f"user:{ctx.user}", f"user '{ctx.user}'"))
    return out


def token_estimate(ctx: RequestContext, request: Any, cap: int) -> int:
    """Input estimate (the core's, computed once per request: budgets use it too) +
    ``max_tokens`` (or ``max_completion_tokens``) clamped to ``cap``."""
    asked = request.get("max_completion_tokens") or request.get("max_tokens")
    output = min(int(asked), cap) if isinstance(asked, int) and asked > 0 else cap
    return input_estimate(ctx, request) + output


class Plan:
    """What limits and runaway detection do for one (key, user) pair, computed once.

    Valid while the key's name, team and policy are the ones it was built from (a key
    edited by an admin gets a new plan at its next request); the runaway counters'
    keys are per minute and rebuilt when the minute turns.
    """

    __slots__ = ("_minute", "_spend_keys", "_admit_keys", "_terms", "name", "policy", "team", "windows",
                 "slot_scopes", "slot_keys", "subjects", "pause_keys", "flag_keys", "limit_keys",
                 "token_windows", "request_windows")

    def __init__(self, ctx: RequestContext, settings: LimitsSettings) -> None:
        principal = ctx.principal
        self.name = principal.name if principal is not None else None
        self.team = principal.team if principal is not None else None
        self.policy = principal.policy if principal is not None else None
        self.windows: list[Window] = []
        self.slot_scopes: list[Scope] = []
        self.slot_keys: list[str] = []
        for scope in scopes_for(ctx, settings):
            base = f"{NS}{scope.kind}:{scope.ident}:"
            for kind, length, tokens in WINDOWS:
                if getattr(scope.limits, kind) is not None:
                    self.windows.append(Window(scope, kind, length, tokens, base + kind))
            if scope.limits.max_concurrency is not None:
                self.slot_scopes.append(scope)
                self.slot_keys.append(base + "concurrency")
        self.limit_keys = [w.key for w in self.windows] + self.slot_keys
        self.token_windows = [i for i, w in enumerate(self.windows) if w.tokens]
        self.request_windows = [i for i, w in enumerate(self.windows) if not w.tokens]
        runaway = settings.runaway
        self.subjects = subjects_for(ctx) if runaway.enabled else []
        self.pause_keys = [PAUSE + s for s, _ in self.subjects] if runaway.pause else []
        self.flag_keys = [FLAG + s for s, _ in self.subjects]
        self._minute = -1
        self._admit_keys: list[str] = []
        self._spend_keys: list[str] = []
        self._terms: dict[bool, Terms] = {}

    @property
    def empty(self) -> bool:
        """Nothing to count: no limit applies and runaway detection is off."""
        return not self.limit_keys and not self.subjects

    def matches(self, principal: Principal | None) -> bool:
        """Whether ``principal`` is still the key this plan was built for (same name, team,
        limits)."""
        if principal is None:
            return self.policy is None
        return (principal.name == self.name and principal.team == self.team
                and (principal.policy is self.policy or principal.policy == self.policy))

    def keys(self, minute: int) -> tuple[list[str], list[str]]:
        """The state keys of :data:`~.admit.ADMIT` this minute, and the runaway ``spend``
        counters and flags of :data:`~.admit.SETTLE`."""
        if minute != self._minute:
            counters = [f"{COUNT}{s}:requests:{minute}" for s, _ in self.subjects]
            self._admit_keys = self.pause_keys + counters + (self.flag_keys if counters else []) + self.limit_keys
            spend = [f"{COUNT}{s}:spend:{minute}" for s, _ in self.subjects]
            self._spend_keys = spend + (self.flag_keys if spend else [])
            self._minute = minute
        return self._admit_keys, self._spend_keys

    def terms(self, store: Store, backend: StateBackend, lease_ms: int) -> Terms:
        """This plan's numbers on ``backend`` (built once per backend)."""
        shared = backend is store.shared
        terms = self._terms.get(shared)
        if terms is None:
            terms = self._terms[shared] = Terms(self, store, backend, lease_ms)
        return terms


class Terms:
    """A :class:`Plan`'s numbers on one backend: each window's limit there (a share of it
    on the local fallback), :data:`~.admit.ADMIT`'s arguments but the request's own
    (``now``, the token costs), and the limit header texts."""

    __slots__ = ("args", "costs", "limits", "texts", "tokens")

    def __init__(self, plan: Plan, store: Store, backend: StateBackend, lease_ms: int) -> None:
        self.limits = [store.scaled(getattr(w.scope.limits, w.kind), backend) for w in plan.windows]
        """Each window's limit."""
        self.texts = [str(int(limit)) for limit in self.limits]
        """Each window's limit as its header says it."""
        args: list[float | int] = [len(plan.pause_keys), len(plan.subjects), len(plan.windows), 0.0, 1, COUNT_TTL_MS]
        self.costs: list[tuple[int, float]] = []
        """(index in ``args``, limit) of each token window's cost: the request's estimate,
        at most the limit."""
        for window, limit in zip(plan.windows, self.limits, strict=True):
            if window.tokens:
                self.costs.append((len(args) + 2, limit))
            args += (limit, window.length, 1.0)
        for scope in plan.slot_scopes:
            args += (store.scaled(scope.limits.max_concurrency or 0, backend), lease_ms)
        self.args = args
        """The arguments (``now`` at index 3, the token costs at ``costs``)."""
        self.tokens = [(w.key, w.length, self.limits[i]) for i, w in enumerate(plan.windows) if w.tokens]
        """(state key, window, limit) of each token window."""

    def admit_args(self, estimate: int, now: float) -> list[float | int]:
        """:data:`~.admit.ADMIT`'s arguments for a request of ``estimate`` tokens."""
        args = self.args.copy()
        args[3] = now
        for index, limit in self.costs:
            args[index] = min(float(estimate), limit)
        return args


class Limiter:
    """Counts admissions in a :class:`Store`; one per app."""

    def __init__(self, store: Store, settings: LimitsSettings) -> None:
        self.store = store
        self.settings = settings
        self.lease_ms = math.ceil(settings.lease_ttl * 1000)
        self._plans: dict[tuple[str | None, str | None], Plan] = {}

    def plan(self, ctx: RequestContext) -> Plan:
        """The request's :class:`Plan` (built at the first request of its key and user)."""
        principal = ctx.principal
        ident = (principal.key_id if principal is not None else None, ctx.user)
        plan = self._plans.get(ident)
        if plan is None or not plan.matches(principal):
            plan = Plan(ctx, self.settings)
            if len(self._plans) >= MAX_PLANS:
                del self._plans[next(iter(self._plans))]
            self._plans[ident] = plan
        return plan

    async def admit(self, ctx: RequestContext, request: Any, plan: Plan, *, minute: int = 0,
                    now: float = 0.0) -> Admission:
        """Check runaway pauses (against ``now``), count the runaway ``requests`` of
        ``minute``, and count the request against every limit of ``plan``, in one state
        operation. A pause or a full limit comes back in the admission (``result.paused``,
        ``refused``): the caller raises it once it has looked at the runaway counts."""
        estimate = token_estimate(ctx, request, self.settings.output_estimate_cap) if plan.token_windows else 0
        keys, _ = plan.keys(minute)
        lease_ms = self.lease_ms
        result, backend = await self.store.script(
            ADMIT, keys, lambda b: plan.terms(self.store, b, lease_ms).admit_args(estimate, now))
        terms = plan.terms(self.store, backend, lease_ms)
        admission = Admission(backend, plan, terms, estimate, result)
        if not plan.windows and result.ok:
            return admission
        wall = time.time()
        if not result.ok:
            if result.paused is None:
                admission.refused = self._refusal(ctx.api, plan, terms.limits, result, wall)
            return admission
        admission.headers = _headers(ctx.api, plan, terms, result.counts, wall)
        return admission

    def _refusal(self, api: str, plan: Plan, limits: list[float], result: Admitted, wall: float) -> LimitExceeded:
        """The 429 of the window or slot that did not fit."""
        windows = plan.windows
        if result.failed >= len(windows):
            scope = plan.slot_scopes[result.failed - len(windows)]
            return LimitExceeded(
                f"concurrency limit of {scope.label}: {scope.limits.max_concurrency} requests in flight at once",
                kind="concurrency", headers={"retry-after": "1"})
        rooms = [Headroom(w.kind, allowed, allowed - count, w.length - wall % w.length)
                 for w, allowed, count in zip(windows, limits, result.counts, strict=False)]
        window = windows[result.failed]
        room = Headroom(window.kind, limits[result.failed], max(0.0, rooms[-1].remaining), result.retry_after)
        return refusal(api, f"rate limit of {window.scope.label}: {getattr(window.scope.limits, window.kind)} "
                       f"{_noun(window.kind)} (retry in {max(1, round(result.retry_after))}s)",
                       room, rooms[:-1] + [room])

    async def settle(self, admission: Admission, used_tokens: int | None, *, minute: int = 0,
                     spend: int = 0) -> Tally | None:
        """The request ended (however): release its slots, correct its token counts to
        ``used_tokens`` (``None``: keep the estimate), and count ``spend`` (micro-dollars)
        on its runaway subjects' counters of ``minute``, in one state operation. Idempotent.
        The runaway counts, or ``None`` when none were made."""
        if admission.settled:
            return None
        admission.settled = True
        plan = admission.plan
        keys = list(admission.slots)
        corrections: list[float] = []
        if used_tokens is not None and admission.result.ok:
            # What admission counted: the estimate, at most a whole limit (so a request
            # larger than a limit can pass an empty window rather than never).
            estimate = float(admission.estimate)
            for key, window, limit in admission.terms.tokens:
                delta = used_tokens - min(estimate, limit)
                if delta:
                    keys.append(key)
                    corrections += (window, delta)
        counting = spend > 0 and bool(plan.subjects)
        if not keys and not counting:
            return None
        backend = admission.backend
        if counting and backend is not self.store.shared and self.store.local is not self.store.shared:
            # Admitted on the local fallback during an outage: its slots and windows are
            # there, but the runaway counts go where the store counts now.
            if keys:
                await self._settle_on(backend, keys, corrections, [], 0)
            return await self.count_spend(plan, minute, spend)
        spend_keys = plan.keys(minute)[1] if counting else []
        try:
            return await self._settle_on(backend, keys, corrections, spend_keys, spend)
        except StateUnavailable:
            # A lost release frees at its lease TTL, a lost correction leaves the estimate.
            return await self.count_spend(plan, minute, spend) if counting else None

    def _settle_on(self, backend: StateBackend, keys: list[str], corrections: list[float],
                   spend_keys: list[str], spend: int) -> Awaitable[Tally]:
        """:data:`~.admit.SETTLE` on ``backend``: ``keys`` are slots then corrected windows."""
        slots = len(keys) - len(corrections) // 2
        args: list[float | int] = [slots, len(corrections) // 2, len(spend_keys) // 2, self.lease_ms, spend,
                                   COUNT_TTL_MS]
        return backend.run(SETTLE, keys + spend_keys, args + corrections)

    async def count_spend(self, plan: Plan, minute: int, spend: int) -> Tally | None:
        """Count ``spend`` on ``plan``'s runaway counters (a request without an admission
        to settle); ``None`` when it has no runaway subjects."""
        if not plan.subjects:
            return None
        keys = plan.keys(minute)[1]
        tally, _ = await self.store.run(lambda b: b.run(SETTLE, keys, [0, 0, len(keys) // 2, 0, spend, COUNT_TTL_MS]))
        return tally


def _headers(api: str, plan: Plan, terms: Terms, counts: tuple[float, ...], wall: float) -> dict[str, str]:
    """The headroom headers of an admission: the request window and the token window
    with the least remaining (ties: the first)."""
    headers: dict[str, str] = {}
    limits = terms.limits
    for noun, indices in (("requests", plan.request_windows), ("tokens", plan.token_windows)):
        best = -1
        least = 0.0
        for i in indices:
            remaining = limits[i] - counts[i]
            if best < 0 or remaining < least:
                best, least = i, remaining
        if best >= 0:
            window_headers(headers, api, noun, terms.texts[best], least, plan.windows[best].length, wall)
    return headers


def _noun(kind: str) -> str:
    return {"rpm": "requests per minute", "rpd": "requests per day", "tpm": "tokens per minute",
            "tpd": "tokens per day"}[kind]

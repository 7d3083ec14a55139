"""The per-request hooks of one gateway's budgets: which budgets a request counts
against, reserve before the call, follow the stream, settle after.

Cache hits: the reservation is made before any cache is asked (``before_call`` runs
``tryfirst``), so an exhausted budget refuses even a request a cache could have
answered (whether a budget refuses must not depend on what happens to be cached), and
a hit then settles at zero: it cost nothing upstream, so it consumes no budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from clasp_gateway import (
    CanonicalRequest,
    Chunk,
    Deployment,
    Gateway,
    RequestContext,
    hookimpl,
    input_estimate,
    request_cost,
)

from .costs import (
    attempt_costs,
    cut_estimate,
    hedged_worst_case,
    set_max_tokens,
    streamed_text,
    worst_case,
    worst_case_on,
)
from .errors import refusal_error
from .periods import PERIODS, Period, current_period
from .reservations import BudgetRefused, Hold, Reservations, Slot
from .settings import BudgetSettings, BudgetSpec
from .store import DatabaseBudgets, spend_from_ledger

STARTUP_WAIT = 10.0
"""Seconds the first requests wait for stored budgets and the ledger's spend to load."""
HOLD = "clasp_budgets.hold"
"""``ctx.state`` key of the request's :class:`Hold`."""
HEADER = "x-clasp-budget-max-tokens"
SEEN_LIMIT = 10_000
"""Subjects remembered per budget for the admin listing (bounded: user ids come from clients)."""
PLANS_LIMIT = 10_000
"""Callers (key and user) whose budgets are remembered (bounded: user ids come from clients)."""
_SAFE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


def count_stream_chunk(ctx: RequestContext, chunk: Chunk) -> None:
    """Keep the text a budgeted stream showed, for its lease's charge at checkpoints."""
    hold = ctx.state.get(HOLD)
    if hold is not None:
        streamed_text(chunk, hold.texts)


class StreamMeter:
    """``on_stream_chunk`` for budgets on a *shared* state (Redis, SQLite): the text
    each budgeted stream showed so far, counted with the model's tokenizer at each
    checkpoint, is its lease's charge, which the other processes add to the spend if
    this one dies mid-stream (the SIGKILL guarantee). On a memory state that charge is
    never counted (the state dies with the process), so the meter is not registered
    and streams cost budgets nothing per chunk: a request is accounted once, at its
    end, from its usage (for a cut stream, the partial usage its route reports)."""

    @hookimpl
    def on_stream_chunk(self, ctx: RequestContext, chunk: Chunk) -> None:
        count_stream_chunk(ctx, chunk)


def subject_of(scope: str, ctx: RequestContext) -> str | None:
    """Whom a budget of ``scope`` is for, for this request (None: not applicable)."""
    principal = ctx.principal
    if scope == "global":
        return "*"
    if scope == "user":
        return ctx.user
    if principal is None:
        return None
    if scope == "key":
        return principal.key_id
    if scope == "team":
        return principal.team
    return principal.project


def safe_subject(subject: str) -> str:
    """A subject fit for a state key (a client's user id may be anything)."""
    return subject if _SAFE.fullmatch(subject) else "h:" + hashlib.sha256(subject.encode()).hexdigest()[:24]


def state_key(spec: BudgetSpec, subject: str, period: Period) -> str:
    """Where a budget instance's spend lives: per budget (a key's own budget: per key,
    whatever its name), subject and period."""
    name = "key" if spec.source == "key" else spec.name
    return f"budgets:{name}:{spec.scope}:{safe_subject(subject)}:{period.label}"


@dataclass(frozen=True, slots=True)
class BudgetPlan:
    """The budgets one caller (key and user) counts against in the current periods:
    worked out once and reused by that caller's requests until a period ends or the
    budgets change (:meth:`BudgetRuntime.plan`)."""

    slots: tuple[Slot, ...]
    max_wait: float
    """How long a request waits while only requests in flight block it (the shortest
    ``max_wait`` of its hard budgets; 0 without one)."""
    since: float
    until: float
    """Valid while ``since <= now < until`` (the latest period start, the earliest end)."""


def caller_of(ctx: RequestContext) -> tuple[Any, ...]:
    """What decides which budgets a request counts against: the key's identity and
    own budget (``max_budget_usd``), its team and project, and the user."""
    principal = ctx.principal
    if principal is None:
        return (ctx.user,)
    policy = principal.policy
    return (ctx.user, principal.key_id, principal.name, principal.team, principal.project,
            policy.max_budget_usd, policy.budget_period)


class BudgetRuntime:
    """One app's budgets (registered as a plugin object at start-up)."""

    def __init__(self, gateway: Gateway, settings: BudgetSettings, reservations: Reservations,
                 stored: DatabaseBudgets, *, clock: Callable[[], float] = time.time) -> None:
        self.gateway = gateway
        self.settings = settings
        self.reservations = reservations
        self.stored = stored
        """Budgets of the database (the admin API's), mirrored in memory."""
        self.clock = clock
        self.ready = asyncio.Event()
        """Set once stored budgets are loaded and spend is rebuilt from the ledger."""
        self._periods: dict[str, Period] = {}
        self._seen: dict[str, dict[str, BudgetSpec]] = {}
        """Per budget name, the subjects this process served (for the admin listing)."""
        self._plans: dict[tuple[Any, ...], BudgetPlan] = {}
        self._plans_specs: tuple[BudgetSpec, ...] = stored.specs
        """The stored budgets the plans were made with (a reload replaces the tuple)."""

    async def wait_ready(self) -> None:
        """The first requests after start-up wait (bounded) for stored budgets and the
        spend rebuilt from the ledger."""
        if not self.ready.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STARTUP_WAIT):
                    await self.ready.wait()

    # --- which budgets ---------------------------------------------------------------------

    def specs(self, ctx: RequestContext) -> Iterator[BudgetSpec]:
        yield from self.settings.limits
        yield from self.stored.specs
        if ctx.principal is not None:
            own = self.settings.for_key(ctx.principal)
            if own is not None:
                yield own

    def period(self, kind: str, now: float) -> Period:
        cached = self._periods.get(kind)
        if cached is None or (cached.end is not None and now >= cached.end) or now < cached.start:
            cached = self._periods[kind] = current_period(kind, now)
        return cached

    def slot(self, spec: BudgetSpec, subject: str, now: float) -> Slot:
        period = self.period(spec.period, now)
        return Slot(spec, subject, period, state_key(spec, subject, period))

    def slots_for(self, ctx: RequestContext) -> tuple[Slot, ...]:
        """The budget instances the request counts against."""
        return self.plan(ctx).slots

    def plan(self, ctx: RequestContext) -> BudgetPlan:
        """The request's budgets, from the plan of its caller (key and user) while the
        periods it was made for last and the stored budgets are the same tuple (the
        configured ones never change under a runtime: a reload builds a new one)."""
        now = self.clock()
        if self.stored.specs is not self._plans_specs:
            self._plans.clear()
            self._plans_specs = self.stored.specs
        caller = caller_of(ctx)
        plan = self._plans.get(caller)
        if plan is not None and plan.since <= now < plan.until:
            return plan
        plan = self._make_plan(ctx, now)
        if len(self._plans) >= PLANS_LIMIT:
            self._plans.pop(next(iter(self._plans)))
        self._plans[caller] = plan
        return plan

    def _make_plan(self, ctx: RequestContext, now: float) -> BudgetPlan:
        out = []
        for spec in self.specs(ctx):
            subject = subject_of(spec.scope, ctx)
            if subject is None or (spec.match is not None and spec.match != subject):
                continue
            out.append(self.slot(spec, subject, now))
            seen = self._seen.setdefault(spec.name, {})
            if subject not in seen and len(seen) < SEEN_LIMIT:
                seen[subject] = spec
        hard = [s.spec.max_wait if s.spec.max_wait is not None else self.settings.max_wait
                for s in out if s.spec.hard]
        return BudgetPlan(tuple(out), min(hard, default=0.0),
                          since=max((s.period.start for s in out), default=-math.inf),
                          until=min((s.period.end for s in out if s.period.end is not None), default=math.inf))

    def known_slots(self, asked: dict[str, str | None]) -> list[Slot]:
        """The budgets to list: each configured one for its subjects (its ``match``,
        ``*`` for global ones, ``asked[scope]`` and the subjects served so far), and
        keys' own budgets this process has seen."""
        now = self.clock()
        out: dict[str, Slot] = {}
        for spec in (*self.settings.limits, *self.stored.specs):
            subjects: set[str] = set()
            if spec.scope == "global":
                subjects.add("*")
            elif spec.match is not None:
                subjects.add(spec.match)
            else:
                subjects.update(self._seen.get(spec.name, {}))
                if asked.get(spec.scope):
                    subjects.add(str(asked[spec.scope]))
            for subject in sorted(subjects):
                slot = self.slot(spec, subject, now)
                out.setdefault(slot.key, slot)
        for seen in self._seen.values():
            for subject, spec in seen.items():
                if spec.source == "key":
                    slot = self.slot(spec, subject, now)
                    out.setdefault(slot.key, slot)
        return list(out.values())

    # --- hooks -------------------------------------------------------------------------------

    @hookimpl(tryfirst=True)
    async def before_call(self, ctx: RequestContext, request: CanonicalRequest) -> None:
        """Reserve the worst case on every budget the request counts against (waiting
        while only requests in flight stand in the way), or refuse with no upstream call."""
        if not self.ready.is_set():
            await self.wait_ready()
        plan = self.plan(ctx)
        if not plan.slots:
            return None
        candidates = self.gateway.resolve_model(ctx.public_model).deployments
        worst = worst_case(request, candidates, self.settings.default_max_tokens, input_estimate(ctx, request))
        hold = Hold(plan.slots, worst, None)
        try:
            await self.reservations.admit(hold, max_wait=plan.max_wait,
                                          lower=lambda h, tokens: set_max_tokens(request, tokens))
        except BudgetRefused as refused:
            raise refusal_error(refused, ctx.api, self.clock()) from None
        ctx.state[HOLD] = hold
        if hold.lowered is not None:
            ctx.response_headers[HEADER] = str(hold.lowered)
        return None

    @hookimpl
    def before_attempt(self, ctx: RequestContext, deployment: Deployment,
                       attempt_number: int) -> Awaitable[bool | None] | None:
        """A candidate dearer than those the reservation was sized for (a routing plugin
        chose it: ``fallback.tasks``) is tried only if the reservation can grow to its
        worst case; otherwise it is skipped (no upstream call). A hedge (another
        attempt still in flight) grows it by the input the attempts in flight were sent.
        Synchronous unless the reservation must grow (the common attempt costs no
        coroutine)."""
        hold: Hold | None = ctx.state.get(HOLD)
        if hold is None:
            return None
        in_flight = [a.deployment for a in ctx.attempts if a.ended is None]
        # A hedge (another attempt still in flight): its input counts too, win or lose.
        needed = hedged_worst_case(hold.worst, in_flight, deployment) if in_flight else worst_case_on(hold.worst, deployment)
        if needed <= hold.amount * (1 + 1e-9):
            return None
        return self._top_up(hold, needed)

    async def _top_up(self, hold: Hold, needed: float) -> bool | None:
        return None if await self.reservations.top_up(hold, needed) else False

    @hookimpl
    def record(self, ctx: RequestContext, event: dict[str, Any]) -> Awaitable[None] | None:
        """The request is over: settle its reservation to what it really cost (the
        settlement's awaitable; an attempt's event returns at once, with no coroutine)."""
        if event.get("kind") != "request":
            return None
        hold: Hold | None = ctx.state.pop(HOLD, None)
        if hold is None:
            return None
        return self.reservations.settle(hold, self.actual_cost(ctx, hold, event))

    def actual_cost(self, ctx: RequestContext, hold: Hold, event: dict[str, Any]) -> float:
        """Every attempt's priced usage; a cut stream at least what it showed; a served
        answer whose usage never came at its reservation (nothing known is cheaper)."""
        total = attempt_costs(ctx)
        committed = next((a for a in reversed(ctx.attempts) if a.first_byte is not None), None)
        if committed is None:
            return total
        if event.get("cut"):
            priced = 0.0
            if committed.usage is not None:
                try:
                    priced = request_cost(committed.deployment, committed.usage)
                except (TypeError, ValueError):
                    priced = 0.0
            estimate = cut_estimate(committed.deployment, hold.worst.input_tokens,
                                    self.reservations.count(hold), committed.usage)
            return total - priced + max(priced, estimate)
        if committed.usage is None and event.get("status") == 200:
            return total + hold.amount
        return total


async def rebuild_spend(runtime: BudgetRuntime, database: object) -> int:
    """Raise every budget's spend this period to at least what the ledger recorded
    (``SEED`` keeps the larger figure): a memory state starts empty after a restart,
    and a Redis without persistence may have lost its counters. Returns how many
    budget instances were seeded."""
    from .scripts import SEED

    now = runtime.clock()
    seeded = 0
    groups: dict[tuple[str, str], list[BudgetSpec]] = {}
    for spec in (*runtime.settings.limits, *runtime.stored.specs):
        groups.setdefault((spec.scope, spec.period), []).append(spec)
    for (scope, period), specs in groups.items():
        spent = await spend_from_ledger(database, scope, period, now)
        for spec in specs:
            for subject, amount in spent.items():
                if amount <= 0 or (spec.match is not None and spec.match != subject):
                    continue
                slot = runtime.slot(spec, subject, now)
                await runtime.reservations.state.run(SEED, [slot.key], [amount, slot.key_ttl_ms(now)])
                seeded += 1
    # Keys' own budgets (static or virtual: which keys have one is not known here), for
    # every kind of period: a key's budget reads only the one of its own period.
    for period in PERIODS:
        spec = BudgetSpec(name="key", usd=0.0, scope="key", period=period, source="key")
        for subject, amount in (await spend_from_ledger(database, "key", period, now)).items():
            if amount > 0:
                slot = runtime.slot(spec, subject, now)
                await runtime.reservations.state.run(SEED, [slot.key], [amount, slot.key_ttl_ms(now)])
                seeded += 1
    return seeded

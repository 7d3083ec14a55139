"""Reservations against budgets on the shared state: admit (or wait, or refuse), keep
a running stream's lease alive, settle to the real cost.

Why a request waits instead of being refused: 200 requests arriving at once against a
budget for 20 would mostly find the budget *reserved* (by requests in flight, whose
worst cases are far above what they will really cost), not *spent*. Refusing them
would serve a fraction of the budget. So a request whose worst case does not fit only
because of reservations in flight waits, bounded by ``max_wait``, and is woken when
they settle (publish/subscribe across processes; a poll covers a message missed and a
dead replica's lease running out). Waiters queue in arrival order per budget: a
settlement wakes the first one, and each passes the turn on when it is done, so a
settlement costs one reservation attempt, not one per waiter. A request whose worst
case does not fit even with nothing in flight is refused at once (the spend only
grows), or, where a budget opts in, sent with ``max_tokens`` lowered to what is left.

Leases: a reservation carries an expiry (``lease_ttl``), renewed every
``checkpoint_interval`` while the request runs (one state call per process and tick,
however many streams), and a *charge*: the input, the output streamed so far (counted
with the model's tokenizer) and half of what it streams until the next checkpoint
(see :meth:`Reservations.progress_charge`). A replica killed with SIGKILL stops
renewing; the next operation on that budget (from any replica) removes the lease and
adds its charge to the spend, so the budget is neither stranded nor overspent by
more than a fraction of a checkpoint's output per stream the dead replica served.

Outages (``StateUnavailable``): each budget's ``on_outage`` decides. ``fail_closed``
refuses; ``fail_open`` admits within ``local_cap_usd`` spent by this process during
the outage. Settlements that cannot be written are kept and written when the state
answers again. The outage is logged (and alerted) once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from clasp_gateway import Deployment, Script, StateBackend, StateUnavailable, Subscription

from .costs import WorstCase, count_tokens
from .periods import GRACE, Period
from .scripts import BUSY, EXHAUSTED, REFRESH, RESERVE, SETTLE, STATUS, Admission, Standing
from .settings import BudgetSettings, BudgetSpec

log = logging.getLogger("clasp.budgets")

T = TypeVar("T")

CHANNEL = "budgets:settled"
"""Published (the budget keys, one a line) when a settlement frees room someone waits for."""
STATE_CALLS = 16
"""State calls in flight per process: a burst of requests queues here, not in the
Redis pool, whose wait counts against ``state.timeout`` and would look like an outage."""
TAIL_LIMIT = 64
"""Characters of a stream's last word held back from a count (longer: counted as it is)."""
PENDING_LIMIT = 10_000
"""Settlements kept while the state is down (beyond: the oldest are dropped, logged)."""


@dataclass(frozen=True, slots=True)
class Slot:
    """One budget instance a request counts against (a team's monthly budget...)."""

    spec: BudgetSpec
    subject: str
    """Who it is for: the team, key id, project, user, or ``*`` (global)."""
    period: Period
    key: str
    """The state key of this budget in this period."""
    alert_at: float = field(init=False, repr=False, compare=False)
    """A spend (USD) a little below its lowest alert threshold (inf: it has none):
    a settlement below it has no threshold to look at."""

    def __post_init__(self) -> None:
        spec = self.spec
        at = spec.usd * (min(spec.thresholds) - 1e-3) / 100 if spec.usd > 0 and spec.thresholds else math.inf
        object.__setattr__(self, "alert_at", at)

    @property
    def limit(self) -> float | None:
        return self.spec.usd if self.spec.hard else None

    def key_ttl_ms(self, now: float) -> int:
        """``period.key_ttl(now)`` in whole milliseconds, for the scripts (0: forever)."""
        end = self.period.end
        return 0 if end is None else math.ceil(max(1.0, end - now + GRACE) * 1000)


@dataclass(slots=True)
class Hold:
    """One request's reservation (a lease on every slot it counts against)."""

    slots: tuple[Slot, ...]
    worst: WorstCase
    deployment: Deployment | None
    lease: str = field(default_factory=lambda: os.urandom(8).hex())
    amount: float = 0.0
    charge: float = 0.0
    """The charge last written: what the budgets count if this lease expires."""
    started: float = field(default_factory=time.monotonic)
    texts: list[str] = field(default_factory=list)
    """Output text streamed since it was last counted (the :class:`~.runtime.StreamMeter`'s
    ``on_stream_chunk``, on a shared state only)."""
    tokens: int = 0
    """Output tokens counted so far (at checkpoints, and at the end of a cut stream),
    ``tail`` not included."""
    tail: str = ""
    """The streamed text's last word, held back from ``tokens`` to be counted with what
    follows it (:meth:`Reservations.count`)."""
    local: bool = False
    """Admitted under ``fail_open`` while the state was down (no lease there)."""
    done: bool = False
    lowered: int | None = None
    """``max_tokens`` after lowering, when a budget lowered it."""
    last_tokens: int = 0
    last_at: float = 0.0
    """Output tokens at the previous checkpoint, and when (the recent rate)."""


class BudgetRefused(Exception):
    """A hard budget refused the request: ``why`` is ``exhausted``, ``busy`` or ``outage``."""

    def __init__(self, why: str, slot: Slot | None, standing: Standing | None = None, waited: float = 0.0) -> None:
        super().__init__(why)
        self.why, self.slot, self.standing, self.waited = why, slot, standing, waited


@dataclass(slots=True, eq=False)
class _Waiter:
    keys: frozenset[str]
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Reservations:
    """Admission, leases and settlement for one gateway process."""

    def __init__(self, state: StateBackend, settings: BudgetSettings, *,
                 alert: Callable[[dict[str, Any]], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.settings = settings
        self.alert = alert or (lambda event: None)
        self.monotonic = monotonic
        self.holds: dict[str, Hold] = {}
        self._queue: list[_Waiter] = []
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: list[tuple[tuple[Slot, ...], str, float, float]] = []
        self._local_spent: dict[str, float] = {}
        self._outage_logged = False
        self._alerted: set[tuple[str, float]] = set()
        # Only a shared state waits on I/O; the memory state answers inline.
        self._calls = asyncio.Semaphore(STATE_CALLS) if state.shared else None
        self._gaps: list[float] = []
        self._last_done = 0.0
        self.stats = {"admitted": 0, "waited": 0, "refused": 0, "lowered": 0, "expired_leases": 0}

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        with contextlib.suppress(StateUnavailable):
            self._subscription = await self.state.subscribe(CHANNEL, self._on_message)
        self._task = asyncio.get_running_loop().create_task(self._keep_alive(), name="clasp-budgets-leases")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._subscription is not None:
            with contextlib.suppress(StateUnavailable):
                await self._subscription.close()
        with contextlib.suppress(StateUnavailable):
            await self._flush_pending()

    # --- admission ---------------------------------------------------------------------

    async def admit(self, hold: Hold, *, max_wait: float, lower: Callable[[Hold, int], None]) -> Hold:
        """Reserve ``hold.worst`` on every slot, waiting while only reservations in
        flight stand in the way; raise :class:`BudgetRefused` otherwise. ``lower(hold,
        tokens)`` applies a lowered ``max_tokens`` to the request."""
        # Charged if this process dies before its first checkpoint: the input (nothing
        # streamed yet); checkpoints raise it as the answer streams.
        hold.amount, hold.charge = hold.worst.amount, hold.worst.input_cost
        hold.started = self.monotonic()
        deadline = hold.started + max_wait
        waiter: _Waiter | None = None
        try:
            while True:
                try:
                    admission = await self._reserve(hold)
                except StateUnavailable as exc:
                    return self._admit_locally(hold, exc)
                self._state_ok()
                if admission.ok:
                    hold.started = self.monotonic()  # the stream's rate counts from here
                    self.holds[hold.lease] = hold
                    self.stats["admitted"] += 1
                    return hold
                blocking = [(s, st) for s, st in zip(hold.slots, admission.standings, strict=True) if st.status]
                exhausted = [(s, st) for s, st in blocking if st.status == EXHAUSTED]
                if exhausted:
                    tokens = self._lowered_tokens(hold, blocking)
                    if tokens is None:
                        self.stats["refused"] += 1
                        raise BudgetRefused("exhausted", *exhausted[0])
                    lower(hold, tokens)
                    hold.lowered = tokens
                    hold.worst = hold.worst.with_output(tokens)
                    hold.amount, hold.charge = hold.worst.amount, hold.worst.input_cost
                    self.stats["lowered"] += 1
                    continue
                left = deadline - self.monotonic()
                if left <= 0:
                    self.stats["refused"] += 1
                    raise BudgetRefused("busy", *blocking[0], waited=max_wait)
                if waiter is None:
                    waiter = _Waiter(frozenset(s.key for s in hold.slots))
                    self._queue.append(waiter)
                    self.stats["waited"] += 1
                head = next((w for w in self._queue if w.keys & waiter.keys), None) is waiter
                waiter.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, self.settings.poll_interval) if head else left):
                        await waiter.wake.wait()
        finally:
            if waiter is not None:
                self._queue.remove(waiter)
                self._notify(waiter.keys)  # pass the turn on

    def _lowered_tokens(self, hold: Hold, blocking: Sequence[tuple[Slot, Standing]]) -> int | None:
        """``max_tokens`` that fits what is left, if every blocking budget opts in."""
        if not all(slot.spec.lower_max_tokens for slot, _ in blocking):
            return None
        room = min((slot.spec.usd - st.spent) for slot, st in blocking)
        tokens = min(hold.worst.tokens_for(room), hold.worst.output_tokens - 1)
        floor = max(slot.spec.min_tokens for slot, _ in blocking)
        return tokens if tokens >= floor else None

    async def _run(self, script: Script[T], keys: list[str], args: list[Any]) -> T:
        """Run a budget script, at most :data:`STATE_CALLS` at once on a shared state."""
        if self._calls is None:
            return await self.state.run(script, keys, args)
        async with self._calls:
            return await self.state.run(script, keys, args)

    async def _reserve(self, hold: Hold) -> Admission:
        now = time.time()
        args: list[Any] = [hold.lease, hold.amount, math.ceil(self.settings.lease_ttl * 1000), hold.charge]
        for slot in hold.slots:
            limit = slot.limit
            args += (-1.0 if limit is None else limit, slot.key_ttl_ms(now))
        return await self._run(RESERVE, [s.key for s in hold.slots], args)

    def _admit_locally(self, hold: Hold, exc: StateUnavailable) -> Hold:
        """The state is down: each hard budget's ``on_outage`` decides."""
        self._state_down(exc)
        for slot in hold.slots:
            if not slot.spec.hard:
                continue
            if slot.spec.on_outage == "fail_closed":
                self.stats["refused"] += 1
                raise BudgetRefused("outage", slot)
            used = self._local_spent.get(slot.key, 0.0) + sum(
                h.amount for h in self.holds.values() if h.local and slot in h.slots)
            if used + hold.amount > slot.spec.local_cap_usd + 1e-12:
                self.stats["refused"] += 1
                raise BudgetRefused("outage", slot)
        hold.local = True
        self.holds[hold.lease] = hold
        self.stats["admitted"] += 1
        return hold

    async def top_up(self, hold: Hold, amount: float) -> bool:
        """Raise a held reservation to ``amount`` (a fallback to a dearer deployment
        than the route's own), atomically, without waiting; False when it does not fit."""
        if hold.local or hold.done or amount <= hold.amount:
            return True
        previous = hold.amount
        hold.amount = amount
        try:
            admission = await self._reserve(hold)
        except StateUnavailable as exc:
            self._state_down(exc)
            hold.amount = previous
            return False
        if not admission.ok:
            hold.amount = previous
        return admission.ok

    # --- during the call -----------------------------------------------------------------

    def progress_charge(self, hold: Hold) -> float:
        """What the budgets should count if this process died now: what the request
        served (input, and output counted so far) plus half of what it streams, at its
        recent rate, until the next checkpoint lands; never more than its reservation.

        Why half: a process killed between two checkpoints is killed, on average,
        half-way; the upstream stops when the connection dies. So the charge is an
        unbiased estimate whose error per killed stream is at most half a checkpoint's
        output either way (a lean-high charge would waste a whole one per stream, on
        every kill). "Until the next checkpoint lands" is measured, not assumed: a busy
        event loop or a slow store stretches the gap, and the upstream keeps generating
        meanwhile. Keep ``checkpoint_interval`` short where streams are fast and dear."""
        worst = hold.worst
        now = self.monotonic()
        out_tokens = self.count(hold)
        served = worst.input_cost + out_tokens * worst.output_price
        average = out_tokens / max(1e-3, now - hold.started)
        recent = (out_tokens - hold.last_tokens) / max(1e-3, now - hold.last_at) if hold.last_at else 0.0
        hold.last_tokens, hold.last_at = out_tokens, now
        margin = max(average, recent) * worst.output_price * self.checkpoint_gap() / 2
        return min(hold.amount, served + margin)

    def checkpoint_gap(self) -> float:
        """Seconds the next checkpoint may take to land: the interval, or the last gap
        between checkpoints when the process was slower than that."""
        return max(self.settings.checkpoint_interval, self._gaps[-1]) if self._gaps else self.settings.checkpoint_interval

    @staticmethod
    def count(hold: Hold) -> int:
        """Output tokens the request streamed so far (counts the text not yet counted).

        The text is counted a piece at a time, at checkpoints. A piece cut at a word
        boundary counts that boundary twice ("tok tok " then "tok" is 3 + 1 tokens,
        "tok tok tok" 3): a stream whose chunks end in a space, counted every 100 ms,
        came out ~8% high, and a dead replica's leases were charged that much more
        than the provider served. So each piece's last word (from its last space, at
        most :data:`TAIL_LIMIT` characters) is held back and counted with the next
        piece; the figure returned includes it."""
        if hold.texts:
            text = hold.tail + "".join(hold.texts)
            hold.texts = []
            cut = text.rfind(" ")  # where a tokenizer's pre-split always cuts (not so a newline: "?\n")
            if cut < 0 or len(text) - cut > TAIL_LIMIT:
                cut = len(text)
            if cut:
                hold.tokens += count_tokens(hold.worst.model, [text[:cut]])
            hold.tail = text[cut:]
        return hold.tokens + (count_tokens(hold.worst.model, [hold.tail]) if hold.tail else 0)

    async def _keep_alive(self) -> None:
        """Every ``checkpoint_interval``: renew the leases of running requests with
        their charges (one state call per set of budgets, however many streams), and
        write settlements an outage held back."""
        while True:
            await asyncio.sleep(self.settings.checkpoint_interval)
            try:
                await self.checkpoint()
                await self._flush_pending()
                self._state_ok()
            except StateUnavailable as exc:
                self._state_down(exc)
            except Exception:  # the renewals must outlive anything one budget throws
                log.exception("renewing budget leases failed")

    async def checkpoint(self) -> None:
        """Renew every running request's lease with its current charge."""
        groups: dict[tuple[Slot, ...], list[tuple[Hold, float]]] = {}
        # A charge only matters to other processes (this one dying); state in this
        # process dies with it, so there the leases are only renewed, never counted.
        counted = self.state.shared
        for hold in list(self.holds.values()):
            if not hold.done and not hold.local:
                charge = self.progress_charge(hold) if counted else hold.charge
                groups.setdefault(hold.slots, []).append((hold, charge))
        now = time.time()
        ttl = math.ceil(self.settings.lease_ttl * 1000)
        for slots, holds in groups.items():
            args: list[Any] = [ttl, *(s.key_ttl_ms(now) for s in slots)]
            for hold, charge in holds:
                args += [hold.lease, charge]
            alive = await self.state.run(REFRESH, [s.key for s in slots], args)
            for (hold, charge), renewed in zip(holds, alive, strict=True):
                if renewed:
                    hold.charge = charge
        done = self.monotonic()
        if self._last_done:
            self._gaps = [*self._gaps[-9:], done - self._last_done]
        self._last_done = done

    # --- settlement ----------------------------------------------------------------------

    async def settle(self, hold: Hold, actual: float) -> None:
        """The request ended: count ``actual`` (USD) instead of the reservation."""
        if hold.done:
            return
        hold.done = True
        self.holds.pop(hold.lease, None)
        if hold.local:
            for slot in hold.slots:
                self._local_spent[slot.key] = self._local_spent.get(slot.key, 0.0) + actual
            # No lease in the state: the whole cost is added when it answers again.
            self._pending.append((hold.slots, hold.lease, actual, 0.0))
            with contextlib.suppress(StateUnavailable):
                await self._flush_pending()
            return
        try:
            await self._settle(hold.slots, hold.lease, actual, hold.charge)
        except StateUnavailable as exc:
            self._state_down(exc)
            self._keep_pending((hold.slots, hold.lease, actual, hold.charge))
        else:
            self._state_ok()
        if self._queue:
            self._notify(frozenset(s.key for s in hold.slots))

    async def _settle(self, slots: tuple[Slot, ...], lease: str, actual: float, charge: float) -> None:
        now = time.time()
        args: list[Any] = [lease, actual, charge]
        for slot in slots:
            args.append(slot.key_ttl_ms(now))
        result = await self._run(SETTLE, [s.key for s in slots], args)
        waited = [s.key for s, (_, waiting) in zip(slots, result, strict=True) if waiting]
        if waited:
            with contextlib.suppress(StateUnavailable):
                await self.state.publish(CHANNEL, "\n".join(waited))
        for slot, (spent, _) in zip(slots, result, strict=True):
            if spent >= slot.alert_at:
                await self._thresholds(slot, spent)

    def _keep_pending(self, item: tuple[tuple[Slot, ...], str, float, float]) -> None:
        if len(self._pending) >= PENDING_LIMIT:
            dropped = self._pending.pop(0)
            log.error("budgets: %d settlements are waiting for the state; dropped one of %.6f USD",
                      PENDING_LIMIT, dropped[2])
        self._pending.append(item)

    async def _flush_pending(self) -> None:
        while self._pending:
            slots, lease, actual, charge = self._pending[0]
            await self._settle(slots, lease, actual, charge)
            self._pending.pop(0)
            for slot in slots:  # now counted in the shared spend
                left = self._local_spent.get(slot.key, 0.0) - actual
                if left > 1e-12:
                    self._local_spent[slot.key] = left
                else:
                    self._local_spent.pop(slot.key, None)

    # --- thresholds, outages, waking -----------------------------------------------------

    async def _thresholds(self, slot: Slot, spent: float) -> None:
        """Alert once per threshold per budget per period, across replicas (a
        set-if-absent on the state decides which replica sends it)."""
        if slot.spec.usd <= 0:
            return
        share = spent / slot.spec.usd * 100
        for threshold in slot.spec.thresholds:
            if share + 1e-6 < threshold or (slot.key, threshold) in self._alerted:
                continue
            self._alerted.add((slot.key, threshold))
            if len(self._alerted) > 100_000:
                self._alerted.clear()
            ttl = slot.period.key_ttl(time.time())
            first = await self.state.set(f"{slot.key}:alerted:{threshold:g}", "1", ttl=ttl, if_absent=True)
            if first:
                self.alert({
                    "kind": "budget_threshold", "budget": slot.spec.name, "scope": slot.spec.scope,
                    "subject": slot.subject, "period": slot.period.kind, "period_start": slot.period.label,
                    "threshold_pct": threshold, "spent_usd": round(spent, 6), "limit_usd": slot.spec.usd,
                    "mode": slot.spec.mode, "resets_at": slot.period.resets_at(),
                })

    def _state_down(self, exc: StateUnavailable) -> None:
        if not self._outage_logged:
            self._outage_logged = True
            log.error("budgets: the shared state is unavailable (%s); each budget's on_outage applies "
                      "(fail_closed refuses, fail_open admits within local_cap_usd per process)", exc)
            self.alert({"kind": "budget_outage", "error": str(exc)[:300]})

    def _state_ok(self) -> None:
        if self._outage_logged:
            self._outage_logged = False
            log.warning("budgets: the shared state answers again; budgets are shared again")

    def _on_message(self, payload: bytes) -> None:
        self._notify(frozenset(payload.decode(errors="replace").split("\n")))

    def _notify(self, keys: frozenset[str]) -> None:
        """Wake the first waiter on any of ``keys`` (it passes the turn on when done)."""
        for waiter in self._queue:
            if waiter.keys & keys:
                waiter.wake.set()
                return

    async def status(self, slots: Sequence[Slot]) -> list[tuple[float, float]]:
        """(spent, reserved) of each slot right now."""
        if not slots:
            return []
        return await self.state.run(STATUS, [s.key for s in slots])

    def holds_for(self, key: str) -> list[Hold]:
        return [h for h in self.holds.values() if any(s.key == key for s in h.slots)]


__all__ = ["BUSY", "CHANNEL", "EXHAUSTED", "BudgetRefused", "Hold", "Reservations", "Slot"]

"""How much of a request's budgets is left, for routing (``app.state.budget_remaining``).

A router that knows a key's budget is running low can move its traffic to cheaper
capable models before it runs out (clasp-router's ``cheapest-capable``). It must know
that *before* the budget reservation (routing comes first) and without a state call
on the request's path, so this keeps, per budget instance (slot), the share left as
last read, and reads again in the background when that is older than
``REFRESH_EVERY``: :meth:`BudgetRemaining.remaining_fraction` costs the budgets'
slot lookup (the one ``before_call`` does) and a few dict reads. A budget never read
yet answers nothing until its first background read lands (a second or so).

The share left is ``1 - (spent + reserved) / limit`` (requests in flight count), the
smallest over the request's budgets; soft budgets count too (they are limits the team
set, even if nothing is refused at them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from clasp_gateway import RequestContext, StateUnavailable

if TYPE_CHECKING:
    from .reservations import Slot
    from .runtime import BudgetRuntime

log = logging.getLogger("clasp.budgets")

REFRESH_EVERY = 1.0
"""Seconds a budget's share left is trusted before it is read again (in the background)."""
KNOWN_LIMIT = 10_000
"""Budget instances remembered (users come from clients: bounded, oldest out)."""


class BudgetRemaining:
    """The smallest share left of the budgets a request counts against, from memory."""

    def __init__(self, runtime: BudgetRuntime, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.runtime = runtime
        self.clock = clock
        self.known: OrderedDict[str, tuple[float, float]] = OrderedDict()
        """Slot key -> (share left, when it was read)."""
        self._wanted: dict[str, Slot] = {}
        self._task: asyncio.Task[None] | None = None

    def remaining_fraction(self, ctx: RequestContext) -> float | None:
        """The smallest share left (0 to 1) of the request's budgets as last read, or
        ``None`` when it counts against none (or none was read yet)."""
        slots = self.runtime.slots_for(ctx)
        if not slots:
            return None
        now = self.clock()
        lowest: float | None = None
        for slot in slots:
            if slot.spec.usd <= 0:
                continue
            found = self.known.get(slot.key)
            if found is None or now - found[1] > REFRESH_EVERY:
                self._wanted[slot.key] = slot
            if found is not None and (lowest is None or found[0] < lowest):
                lowest = found[0]
        if self._wanted and (self._task is None or self._task.done()):
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule
                self._task = asyncio.get_running_loop().create_task(self.refresh())
        return lowest

    async def refresh(self) -> None:
        """Read the wanted budgets' spend (one state call for all of them)."""
        slots, self._wanted = list(self._wanted.values()), {}
        if slots:
            await self._read(slots)

    async def _read(self, slots: Sequence[Slot]) -> None:
        try:
            standings = await self.runtime.reservations.status(slots)
        except StateUnavailable as exc:
            log.debug("budgets: share left not read: %s", exc)
            return
        now = self.clock()
        for slot, (spent, reserved) in zip(slots, standings, strict=False):
            left = max(0.0, 1.0 - (float(spent) + float(reserved)) / slot.spec.usd)
            self.known[slot.key] = (left, now)
            self.known.move_to_end(slot.key)
        while len(self.known) > KNOWN_LIMIT:
            self.known.popitem(last=False)

    async def close(self) -> None:
        """Stop a read under way."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

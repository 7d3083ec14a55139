"""One app's limits: the ``before_call`` and ``record`` hooks, registered per app.

``before_call`` (``tryfirst``: before a cache answers or a budget reserves) refuses a
paused subject, then admits the request against every limit (:mod:`.limiter`) and
counts it for runaway detection; the headroom headers go on the answer. ``record``'s
request event (which the routes send on every exit path: success, error, client gone,
cut stream) settles the admission: slots released, tokens corrected to the real usage,
spend counted for runaway detection.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from operator import methodcaller
from typing import Any

import httpx
import orjson

from clasp_gateway import CanonicalRequest, RequestContext, StateBackend, hookimpl

from .limiter import NS, Admission, Limiter, scopes_for
from .runaway import COUNT_ALL, USD_UNIT, Detector, Flag
from .settings import LimitsSettings
from .shape import LimitExceeded
from .store import Store

log = logging.getLogger("clasp.limits")

ADMISSION = "clasp.limits.admission"
"""``ctx.state`` key of the request's :class:`Admission`."""

PAUSE = NS + "pause:"
FLAG = NS + "rw:flag:"
COUNT = NS + "rw:"
COUNT_TTL = 180.0
"""Per-minute runaway counters live three minutes (this one and the previous are read)."""
WEBHOOK_TIMEOUT = 5.0
MAX_WEBHOOKS_IN_FLIGHT = 32


class LimitsRuntime:
    """The limiter, the runaway detector and their hooks for one app."""

    def __init__(self, state: StateBackend, settings: LimitsSettings, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = Store(state, replicas=settings.expected_replicas)
        self.limiter = Limiter(self.store, settings)
        self.runaway = settings.runaway if settings.runaway.enabled else None
        self.detector = Detector(settings.runaway, clock)
        self.clock = clock
        self.http: httpx.AsyncClient | None = None
        self.alerts: list[dict[str, Any]] = []
        """Alerts this process raised (newest last, at most 100): for status and tests."""
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        if self.runaway is not None and self.runaway.webhook:
            self.http = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.http is not None:
            await self.http.aclose()
        await self.store.close()

    # --- hooks ---------------------------------------------------------------------------

    @hookimpl(tryfirst=True)
    async def before_call(self, ctx: RequestContext, request: CanonicalRequest) -> None:
        """Refuse a paused subject, count the request against its limits (429 when one is
        full, before any upstream call), set the headroom headers."""
        subjects = self._subjects(ctx)
        if self.runaway is not None and subjects:
            if self.runaway.pause:
                await self._refuse_if_paused(ctx, subjects)
            await self._count(ctx, subjects, "requests", 1)
        scopes = scopes_for(ctx, self.settings)
        if not scopes:
            return None
        admission = await self.limiter.admit(ctx, request, scopes)
        ctx.state[ADMISSION] = admission
        ctx.response_headers.update(admission.headers)
        return None

    @hookimpl
    async def record(self, ctx: RequestContext, event: dict[str, Any]) -> None:
        """On the request event: settle the admission, count the spend."""
        if event.get("kind") != "request":
            return
        admission: Admission | None = ctx.state.pop(ADMISSION, None)
        if admission is not None:
            await self.limiter.settle(admission, _used_tokens(event))
        cost = event.get("cost_usd")
        if self.runaway is not None and isinstance(cost, (int, float)) and cost > 0:
            subjects = self._subjects(ctx)
            if subjects:
                await self._count(ctx, subjects, "spend", max(1, round(cost * USD_UNIT)))

    # --- runaway -------------------------------------------------------------------------

    @staticmethod
    def _subjects(ctx: RequestContext) -> list[tuple[str, str]]:
        """(subject id, label) of the key and the user behind it."""
        out = []
        if ctx.principal is not None:
            out.append((f"key:{ctx.principal.key_id}", f"key '{ctx.principal.name or 'unnamed'}'"))
        if ctx.user is not None:
            out.append((f"user:{ctx.user}", f"user '{ctx.user}'"))
        return out

    async def _refuse_if_paused(self, ctx: RequestContext, subjects: list[tuple[str, str]]) -> None:
        for subject, label in subjects:
            raw, _ = await self.store.run(methodcaller("get", PAUSE + subject))
            if raw is None:
                continue
            until_text, _, why = raw.decode("utf-8", "replace").partition(" ")
            until = float(until_text)
            left = until - self.clock()
            if left <= 0:
                continue
            when = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise LimitExceeded(
                f"{label} is paused until {when} as a runaway agent ({why}); an admin can lift it with "
                f"POST /admin/limits/unpause", kind="paused", headers={"retry-after": str(max(1, math.ceil(left)))})

    async def _count(self, ctx: RequestContext, subjects: list[tuple[str, str]], series: str, amount: int) -> None:
        """Count ``amount`` on every subject's counter of ``series`` this minute, in one
        state operation (:data:`~.runaway.COUNT_ALL`), and flag what runs away."""
        minute, fraction = self.detector.minute()
        keys = [f"{COUNT}{subject}:{series}:{minute}" for subject, _ in subjects]
        ttl_ms = int(COUNT_TTL * 1000)
        totals, _ = await self.store.run(lambda backend: backend.run(COUNT_ALL, keys, [amount, ttl_ms]))
        for (subject, label), total in zip(subjects, totals, strict=True):
            flag = self.detector.observe(subject, series, minute, fraction, float(total))
            if flag is not None:
                await self._flagged(ctx, flag, label)

    async def _flagged(self, ctx: RequestContext, flag: Flag, label: str) -> None:
        """Alert once per episode across replicas; pause when configured."""
        assert self.runaway is not None
        first, _ = await self.store.run(
            methodcaller("set", FLAG + flag.subject, flag.describe(), ttl=self.runaway.episode, if_absent=True))
        if not first:
            return
        until = self.clock() + self.runaway.pause_for if self.runaway.pause else None
        if until is not None:
            value = f"{until!r} {flag.describe()}"
            await self.store.run(methodcaller("set", PAUSE + flag.subject, value, ttl=self.runaway.pause_for))
        alert = {"alert": "runaway", "subject": label, "series": flag.series, "rate": flag.rate,
                 "usual": flag.usual, "threshold": flag.threshold, "request_id": ctx.request_id,
                 "paused_until": until, "time": self.clock()}
        self.alerts = [*self.alerts[-99:], alert]
        log.warning("limits: runaway %s: %s%s", label, flag.describe(),
                    f"; paused for {self.runaway.pause_for:g}s" if until is not None else "")
        if self.http is not None and self.runaway.webhook and len(self._tasks) < MAX_WEBHOOKS_IN_FLIGHT:
            task = asyncio.create_task(self._post(self.runaway.webhook, alert))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _post(self, url: str, alert: dict[str, Any]) -> None:
        assert self.http is not None
        try:
            response = await self.http.post(url, content=orjson.dumps(alert),
                                            headers={"content-type": "application/json"})
            if response.status_code >= 400:
                log.warning("limits: runaway webhook answered %d", response.status_code)
        except httpx.HTTPError as exc:
            log.warning("limits: runaway webhook failed: %s", type(exc).__name__)

    async def unpause(self, subject: str) -> bool:
        """Lift a pause (and end the episode, so a new runaway alerts again)."""
        removed, _ = await self.store.run(methodcaller("delete", PAUSE + subject, FLAG + subject))
        return bool(removed)


def _used_tokens(event: dict[str, Any]) -> int | None:
    """The tokens a request used, from its event (``None`` when it has no usage: the
    estimate stands for a request that failed before any answer)."""
    usage = event.get("usage")
    if not isinstance(usage, dict):
        return None
    total = 0
    for name in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
        value = usage.get(name)
        if isinstance(value, int):
            total += value
    if total == 0 and event.get("deployment") is None:
        return 0  # refused or failed before any deployment answered: nothing was used
    return total

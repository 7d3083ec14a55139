"""One app's limits: the ``before_call`` and ``record`` hooks, registered per app.

``before_call`` (``tryfirst``: before a cache answers or a budget reserves) refuses a
paused subject, counts the request for runaway detection and admits it against every
limit (:mod:`.limiter`), in one state operation; the headroom headers go on the answer.
``record``'s request event (which the routes send on every exit path: success, error,
client gone, cut stream) settles the admission in one more: slots released, tokens
corrected to the real usage, spend counted for runaway detection.
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

from .limiter import FLAG, PAUSE, Admission, Limiter
from .runaway import USD_UNIT, Detector, Flag
from .settings import LimitsSettings
from .shape import LimitExceeded
from .store import Store

log = logging.getLogger("clasp.limits")

ADMISSION = "clasp.limits.admission"
"""``ctx.state`` key of the request's :class:`Admission`."""

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
        """Refuse a paused subject, count the request for runaway detection and against its
        limits (429 when one is full, before any upstream call), set the headroom headers:
        one state operation."""
        plan = self.limiter.plan(ctx)
        if plan.empty:
            return None
        now = self.clock()
        minute, fraction = self.detector.minute(now)
        admission = await self.limiter.admit(ctx, request, plan, minute=minute, now=now)
        result = admission.result
        if result.paused is not None:
            raise self._paused(plan.subjects[result.failed][1], result.paused)
        if result.totals:
            flags = self._observe(plan.subjects, "requests", minute, fraction, result.totals, result.episodes)
            for flag, label in flags:
                await self._flagged(ctx, flag, label)
        if admission.refused is not None:
            raise admission.refused
        ctx.state[ADMISSION] = admission
        if admission.headers:
            ctx.response_headers.update(admission.headers)
        return None

    @hookimpl
    async def record(self, ctx: RequestContext, event: dict[str, Any]) -> None:
        """On the request event: settle the admission and count the spend (one state
        operation)."""
        if event.get("kind") != "request":
            return
        admission: Admission | None = ctx.state.pop(ADMISSION, None)
        cost = event.get("cost_usd")
        spend = max(1, round(cost * USD_UNIT)) if self.runaway is not None and isinstance(cost, (int, float)) \
            and cost > 0 else 0
        if admission is None and not spend:
            return
        minute, fraction = self.detector.minute()
        if admission is not None:
            plan = admission.plan
            tally = await self.limiter.settle(admission, _used_tokens(event), minute=minute, spend=spend)
        else:  # counted without an admission (one refused before this plugin's before_call)
            plan = self.limiter.plan(ctx)
            tally = await self.limiter.count_spend(plan, minute, spend)
        if tally is not None and tally.totals:
            for flag, label in self._observe(plan.subjects, "spend", minute, fraction, tally.totals, tally.episodes):
                await self._flagged(ctx, flag, label)

    # --- runaway -------------------------------------------------------------------------

    def _paused(self, label: str, raw: bytes) -> LimitExceeded:
        """The 429 of a subject paused as a runaway agent (``raw``: ``"<until> <why>"``)."""
        until_text, _, why = raw.decode("utf-8", "replace").partition(" ")
        until = float(until_text)
        left = until - self.clock()
        when = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return LimitExceeded(
            f"{label} is paused until {when} as a runaway agent ({why}); an admin can lift it with "
            f"POST /admin/limits/unpause", kind="paused", headers={"retry-after": str(max(1, math.ceil(left)))})

    def _observe(self, subjects: list[tuple[str, str]], series: str, minute: int, fraction: float,
                 totals: tuple[int, ...], episodes: tuple[bool, ...]) -> list[tuple[Flag, str]]:
        """Take each subject's counter of ``series`` this minute; what runs away, with its
        label, to alert (a subject whose episode flag exists has alerted already)."""
        flags = []
        for (subject, label), total, episode in zip(subjects, totals, episodes, strict=True):
            flag = self.detector.observe(subject, series, minute, fraction, total, episode)
            if flag is not None:
                flags.append((flag, label))
        return flags

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

"""Hedged first byte: two attempts in flight, the first to commit answers.

When an attempt has not committed (:func:`~clasp_gateway.pipeline.commits`) within
the delay a plugin gave (``hedge_delay``: clasp-fallback's learned p99 time to first
byte), :func:`race` starts the next candidate beside it and keeps whichever commits
first. The other is cancelled cleanly: its task cancelled, its upstream stream closed
(which closes the connection), and its attempt ended with the input tokens it was sent
(:func:`cancelled_usage`: a provider bills a prompt it received, so budgets and the
ledger must count it) and an error of kind ``slow`` (a primary that lost: no first
byte by its hedge delay) or ``cancelled`` (a hedge that lost: it was only late to start).

Bookkeeping stays exactly once per attempt: every attempt that ends here, won or lost,
goes through ``after_attempt`` here, except the one handed back (the caller streams it
and :meth:`~clasp_gateway.pipeline.Gateway.finish` closes it) and the primary's own
failure when both fail (the caller handles it as any failed attempt: ``on_error``).

The hedge candidate is what the attempt loop would try next: the candidates after the
current one, already inside the key's regions and ordered by routing (capability
filter, strategy), each passing the permission probes and every ``before_attempt``
(circuit breakers, per-deployment limits, budgets), as a fallback would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import GatewayError, UpstreamError
from .plugins import call_each, call_first
from .shaping.context.measure import estimate_tokens
from .types import Attempt, CanonicalRequest, Chunk, Deployment, RequestContext, Usage

if TYPE_CHECKING:
    from .pipeline import Gateway

log = logging.getLogger("clasp.hedging")

HEDGED = "clasp.hedged"
"""``ctx.state`` key: ids of the deployments started as hedges in this upstream round
(the attempt loop does not try them again as plain fallbacks; reset each round)."""


@dataclass(slots=True)
class Launch:
    """One attempt in flight: its deployment, attempt, body sent and upstream stream."""

    deployment: Deployment
    attempt: Attempt
    body: CanonicalRequest
    chunks: AsyncIterator[Chunk]
    held: list[Chunk] | None = None
    """The chunks up to the commit point, once it committed."""
    task: asyncio.Task[list[Chunk]] | None = None


Starter = Callable[[Deployment], Awaitable["Launch | None"]]
"""Opens an attempt on a deployment (or ``None`` when it was skipped)."""
Committer = Callable[[Deployment, AsyncIterator[Chunk]], Coroutine[Any, Any, list[Chunk]]]
"""Reads a stream up to its commit point within the first-byte timeout."""


def cancelled_usage(body: CanonicalRequest) -> Usage:
    """What a cancelled attempt is charged: the input it was sent (an estimate: the
    provider never reported usage), no output (it had produced nothing)."""
    return Usage(input_tokens=estimate_tokens(body))


async def close_stream(chunks: AsyncIterator[Chunk]) -> None:
    """Close an upstream stream (its connection goes back or is dropped); never raises."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception as exc:  # noqa: BLE001 (closing a loser: nothing the client needs to hear)
        log.debug("closing a cancelled attempt's stream failed: %s", exc)


async def _cancel(launch: Launch) -> None:
    task = launch.task
    if task is not None and not task.done():
        task.cancel()
        try:
            await task
        except BaseException:  # noqa: BLE001 (the cancellation we asked for, or its last error)
            pass
    await close_stream(launch.chunks)


async def race(
    gateway: Gateway,
    ctx: RequestContext,
    primary: Launch,
    delay: float,
    candidates: list[Deployment],
    start: Starter,
    commit: Committer,
) -> Launch:
    """Wait for ``primary`` to commit; after ``delay`` seconds without a commit, start
    a hedge on the first of ``candidates`` that may be tried, and return whichever
    commits first (with :attr:`Launch.held` set). Raises the primary's error when
    every attempt failed (a hedge's failure is recorded here)."""
    primary.task = asyncio.get_running_loop().create_task(commit(primary.deployment, primary.chunks))
    hedge: Launch | None = None
    try:
        if not await _done_within(primary.task, delay):
            hedge = await _start_hedge(gateway, ctx, primary, candidates, start)
        if hedge is None:
            primary.held = await primary.task
            return primary
        hedge.task = asyncio.get_running_loop().create_task(commit(hedge.deployment, hedge.chunks))
        return await _first_of(gateway, ctx, primary, hedge)
    finally:
        # Cancelled from outside (the client went away): stop both, close both.
        for launch in (primary, hedge):
            if launch is not None and launch.held is None and launch.task is not None and not launch.task.done():
                await _cancel(launch)


async def _done_within(task: asyncio.Task[list[Chunk]], delay: float) -> bool:
    """Whether ``task`` ended within ``delay`` seconds; it runs on either way. (A
    future, a done callback and a timer: a third of ``asyncio.wait``'s CPU, and this
    runs on every hedged request, almost always without a hedge.)"""
    if task.done():
        return True
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    task.add_done_callback(wake)
    timer = loop.call_later(delay, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        task.remove_done_callback(wake)
    return task.done()


async def _start_hedge(
    gateway: Gateway, ctx: RequestContext, primary: Launch, candidates: list[Deployment], start: Starter
) -> Launch | None:
    hedged: set[str] = ctx.state.setdefault(HEDGED, set())
    for candidate in candidates:  # the ones after the primary: not tried yet this round
        if candidate.id in hedged or candidate.id == primary.deployment.id:
            continue
        if gateway.permissions.blocked and gateway.permissions.unavailable(candidate) is not None:
            continue
        if await call_first(gateway.pm.hook.start_hedge, ctx=ctx, deployment=primary.deployment,
                            candidate=candidate) is False:
            return None  # no budget for a hedge now: the primary goes on alone
        verdicts = await call_each(gateway.pm.hook.before_attempt, ctx=ctx, deployment=candidate, attempt_number=1)
        if False in verdicts:
            continue
        hedged.add(candidate.id)
        launch = await start(candidate)
        if launch is not None:
            log.info("%s: no first byte from %s after %.0f ms: hedging on %s", ctx.request_id,
                     primary.deployment.id, (time.perf_counter() - primary.attempt.started) * 1000, candidate.id)
            ctx.response_headers["x-clasp-hedged"] = candidate.id
            return launch
        return None
    return None


async def _first_of(gateway: Gateway, ctx: RequestContext, primary: Launch, hedge: Launch) -> Launch:
    """Both in flight: the first to commit wins and the other is cancelled; a failure
    waits for the other. The primary's failure is raised when both fail."""
    assert primary.task is not None and hedge.task is not None
    by_task: dict[asyncio.Future[list[Chunk]], Launch] = {primary.task: primary, hedge.task: hedge}
    pending: set[asyncio.Future[list[Chunk]]] = {primary.task, hedge.task}
    primary_error: GatewayError | None = None
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        # Both may be done at once: a commit beats a failure; the primary beats the hedge.
        for task in sorted(done, key=lambda t: (t.exception() is not None, by_task[t] is not primary)):
            launch = by_task[task]
            error = task.exception()
            if error is None:
                launch.held = task.result()
                other = hedge if launch is primary else primary
                if other.held is None and not (other.task is not None and other.task.done()
                                               and other.task.exception() is not None):
                    await _lose(gateway, ctx, other, winner=launch, primary=primary)
                if primary_error is not None:
                    await _fail(gateway, ctx, primary, primary_error)
                return launch
            if not isinstance(error, GatewayError):
                raise error
            if launch is primary:
                primary_error = error
            else:
                await _fail(gateway, ctx, hedge, error)
    assert primary_error is not None
    raise primary_error


async def _fail(gateway: Gateway, ctx: RequestContext, launch: Launch, error: GatewayError) -> None:
    attempt = launch.attempt
    attempt.error = error
    attempt.ended = time.perf_counter()
    log.warning("%s %s attempt on %s failed: %s", ctx.request_id,
                "hedge" if launch.deployment.id in ctx.state.get(HEDGED, ()) else "primary",
                launch.deployment.id, error.message)
    await gateway.after_attempt(ctx, attempt)


async def _lose(gateway: Gateway, ctx: RequestContext, loser: Launch, *, winner: Launch, primary: Launch) -> None:
    """Cancel the slower attempt and record it: the input it was sent, and why it ended."""
    await _cancel(loser)
    attempt = loser.attempt
    attempt.ended = time.perf_counter()
    waited = (attempt.ended - attempt.started) * 1000
    if loser is primary:
        attempt.error = UpstreamError(
            f"{loser.deployment.id}: no first byte after {waited:.0f} ms; the hedge on {winner.deployment.id} "
            "answered first (cancelled)", upstream_status=0, deployment=loser.deployment.id, kind="slow")
    else:
        attempt.error = UpstreamError(
            f"{loser.deployment.id}: hedge cancelled after {waited:.0f} ms; {winner.deployment.id} answered first",
            upstream_status=0, deployment=loser.deployment.id, kind="cancelled")
    attempt.usage = cancelled_usage(loser.body)
    await gateway.after_attempt(ctx, attempt)


def launch_of(deployment: Deployment, attempt: Attempt, body: CanonicalRequest, chunks: AsyncIterator[Chunk]) -> Launch:
    """A :class:`Launch` (for the pipeline, which opens attempts)."""
    return Launch(deployment, attempt, body, chunks)


__all__ = ["HEDGED", "Launch", "cancelled_usage", "close_stream", "launch_of", "race"]

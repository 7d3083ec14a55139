"""Active health checks, and ``GET /health/providers``.

A background task (started in ``startup``, cancelled in ``shutdown``) checks every
deployment each ``fallback.health.interval`` seconds with the core's probe
(:func:`clasp_gateway.wire.probe.probe_deployment`: ``GET /models`` for OpenAI-compatible
upstreams, or a 1-token completion with ``method: call``) and feeds the result to the
deployment's circuit breaker. With shared state, one process checks each deployment per
interval (a lease: ``set(..., if_absent=True)`` on the shared state, Redis or the
workers' SQLite) and the result is shared, so N processes do not multiply the probes and
every status page shows the same last check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from starlette.requests import Request
from starlette.responses import Response

from clasp_gateway import Deployment, GatewayError, authenticate, error_response, json_response, probe_deployment

from .stats import CheckResult, safe_error_text

if TYPE_CHECKING:
    from .runtime import FallbackRuntime

log = logging.getLogger("clasp.fallback")


def iso(at: float | None) -> str | None:
    """A wall-clock time as ISO 8601 UTC (``None`` stays ``None``)."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class HealthChecker:
    """Checks every deployment periodically and feeds the breakers."""

    def __init__(self, runtime: FallbackRuntime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings.health
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def method_for(self, deployment: Deployment) -> str | None:
        """The probe for a deployment, or ``None`` when it has no free one ("auto")."""
        method = self.settings.method
        if method == "auto":
            return "models" if deployment.mode == "direct" else None
        return method

    def start(self) -> None:
        """Start checking (no-op when ``interval`` is 0)."""
        if self.settings.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="clasp-fallback-health")

    async def stop(self) -> None:
        """Cancel the loop and close its HTTP session."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _loop(self) -> None:
        gateway = self.runtime.gateway
        # The providers' pools open after the startup hooks; the core offers a flag.
        while not gateway.ready:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        self._session = aiohttp.ClientSession()
        interval = self.settings.interval
        while True:
            started = time.monotonic()
            try:
                await self.check_all()
            except Exception:  # the loop must survive anything one round throws
                log.exception("health check round failed")
            # A little jitter so replicas and deployments do not probe in lockstep.
            pause = interval * random.uniform(0.9, 1.1) - (time.monotonic() - started)
            await asyncio.sleep(max(0.05, pause))

    async def check_all(self) -> None:
        """One round: every checkable deployment, concurrently (at most 8 at a time)."""
        limit = asyncio.Semaphore(8)

        async def one(dep: Deployment) -> None:
            async with limit:
                await self.check(dep)

        deployments = [d for d in self.runtime.gateway.config.deployments() if self.method_for(d)]
        await asyncio.gather(*(one(d) for d in deployments))

    async def check(self, deployment: Deployment) -> CheckResult | None:
        """Check one deployment now (unless another replica holds this interval's lease)."""
        method = self.method_for(deployment)
        if method is None:
            return None
        if not await self.runtime.claim_check(deployment.id, self.settings.interval):
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        began = time.perf_counter()
        result = await probe_deployment(
            self.runtime.gateway.providers, deployment, self._session, self.settings.timeout, method=method
        )
        check = CheckResult(
            ok=result.ok,
            verdict=safe_error_text(result.verdict),
            ms=(time.perf_counter() - began) * 1000,
            at=time.time(),
            method=result.method,
        )
        await self.runtime.check_ended(deployment, check)
        return check


def deployment_status(runtime: FallbackRuntime, deployment: Deployment, view: Any, check: CheckResult | None) -> dict[str, Any]:
    """One deployment's entry on ``/health/providers``: no URLs, keys or headers."""
    stats = runtime.stats.of(deployment.id)
    p99 = runtime.ttfb_p99(deployment.id)
    limits = runtime.limits_of(deployment.id)
    return {
        "id": deployment.id,
        "provider": deployment.provider,
        "model": deployment.model,
        "state": view.state,
        "breaker": {
            "consecutive_failures": view.consecutive_failures,
            "recent_requests": round(view.recent_requests, 2),
            "recent_error_rate": None if view.recent_error_rate is None else round(view.recent_error_rate, 3),
            "trips": view.trips,
            "reason": view.reason or None,
            "probe_in_s": round(view.reopens_in, 3) if view.state == "open" else None,
        },
        "latency_ms": {"ttfb_avg": None if stats.ttfb_ms is None else round(stats.ttfb_ms, 1),
                       "ttfb_p99": None if p99 is None else round(p99 * 1000, 1)},
        "hedges": {"started": runtime.hedger.hedges[deployment.id], "free": runtime.hedger.free_hedges[deployment.id],
                   "budget_available": round(runtime.hedger.budget.tokens.get(deployment.id, runtime.hedger.budget.burst), 2)},
        "limits": None if limits is None else {
            **limits,
            "headroom": runtime.headroom(deployment.id), "skipped_at_limit": stats.limited,
        },
        "attempts": {
            "total": stats.attempts,
            "failed": stats.failures,
            "retries": stats.retries,
            "probes": stats.probes,
            "skipped_open_breaker": stats.skipped,
        },
        "retry_budget_available": round(runtime.budget.available(deployment.id), 2),
        "last_error": None if stats.last_error is None else {"message": stats.last_error, "at": iso(stats.last_error_at)},
        "last_success_at": iso(stats.last_success_at),
        "last_check": None if check is None else {
            "ok": check.ok, "verdict": check.verdict, "ms": round(check.ms, 1), "at": iso(check.at), "method": check.method,
        },
        # The core's permission checks: which credentials may use the model (None: off).
        "access": runtime.gateway.permissions.status(deployment),
    }


async def providers_health(request: Request) -> Response:
    """``GET /health/providers``: every deployment's breaker, latency, last error and check.

    Needs a gateway key unless ``fallback.health.public`` is true. Never shows URLs,
    keys or headers; error texts are redacted.
    """
    runtime: FallbackRuntime | None = getattr(request.app.state, "fallback", None)
    request_id = request.scope.get("state", {}).get("request_id")
    if runtime is None:
        error = GatewayError("the fallback plugin has not started (is the app running its lifespan?)", status=503,
                             error_type="api_error")
        return error_response(error, "anthropic", request_id)
    gateway = runtime.gateway
    if not runtime.settings.health.public:
        try:
            await authenticate(request)
        except GatewayError as exc:
            return error_response(exc, "anthropic", request_id)
    deployments = gateway.config.deployments()
    views = await asyncio.gather(*(runtime.breakers.view(d.id) for d in deployments))
    checks = await asyncio.gather(*(runtime.last_check(d) for d in deployments))
    entries = [deployment_status(runtime, d, v, c) for d, v, c in zip(deployments, views, checks, strict=True)]
    for entry in entries:
        entry["serves"] = [r.pattern for r in gateway.config.models if any(d.id == entry["id"] for d in r.deployments)]
    # A deployment none of whose credentials has access is skipped like an open breaker.
    closed = sum(1 for v, e in zip(views, entries, strict=True) if v.state == "closed" and (e["access"] or {}).get(
        "available", True))
    status = "ok" if closed == len(views) else ("down" if closed == 0 else "degraded")
    h = runtime.settings.health
    return json_response({
        "status": status,
        "breaker_state": runtime.breakers.describe,
        "pid": os.getpid(),  # which worker answered: with shared state, every one agrees
        "health_checks": {"interval_s": h.interval, "method": h.method} if h.interval else None,
        "deployments": entries,
    })

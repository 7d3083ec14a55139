"""``GET /metrics``: the Prometheus text format, behind an admin key by default.

``analytics.metrics.auth`` says who may scrape: ``admin`` (an admin key, the default),
``token`` (a bearer token of the scraper's own, ``analytics.metrics.token``; no gateway
key needs to live in Prometheus' configuration) or ``none``. Circuit breaker states are
read from the shared state at scrape time, so every worker and replica reports the same;
so are the shared state's, the database's and the ledger spool's health
(:mod:`.dependencies`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from clasp_gateway import GatewayError, error_response

from .access import check_bearer, require_admin
from .dependencies import dependency_families
from .metrics import breaker_family

if TYPE_CHECKING:
    from .runtime import AnalyticsRuntime

BREAKER_READ_TIMEOUT = 2.0
"""Seconds a scrape waits for the breakers' shared state before leaving them out."""


def runtime_of(request: Request) -> AnalyticsRuntime:
    """This app's analytics runtime, or a shaped 503 when the plugin has not started."""
    runtime: AnalyticsRuntime | None = getattr(request.app.state, "analytics", None)
    if runtime is None:
        raise GatewayError("the analytics plugin has not started", status=503, error_type="api_error")
    return runtime


async def metrics_endpoint(request: Request) -> Response:
    """Every series, summed over the workers of this gateway."""
    request_id = request.scope.get("state", {}).get("request_id")
    try:
        runtime = runtime_of(request)
        settings = runtime.settings.metrics
        if runtime.metrics is None:
            raise GatewayError("metrics are turned off (analytics.metrics.enabled: false)", status=404,
                               error_type="not_found_error")
        if settings.auth == "admin":
            await require_admin(request)
        elif settings.auth == "token":
            check_bearer(request, runtime.metrics_token or "")
    except GatewayError as exc:
        return error_response(exc, "anthropic", request_id)
    states, dependencies = await asyncio.gather(breaker_states(request), dependency_families(request.app.state))
    extra = ([breaker_family(states)] if states else []) + dependencies
    body = runtime.metrics.exposition(extra)
    return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"cache-control": "no-store"})


async def breaker_states(request: Request) -> list[tuple[str, str, str]]:
    """(deployment, provider, state) for each deployment, when clasp-fallback keeps
    breakers (read through its runtime's ``breakers.view``); empty otherwise."""
    fallback: Any = getattr(request.app.state, "fallback", None)
    breakers = getattr(fallback, "breakers", None)
    if breakers is None:
        return []
    deployments = request.app.state.gateway.config.deployments()
    try:
        async with asyncio.timeout(BREAKER_READ_TIMEOUT):
            views = await asyncio.gather(*(breakers.view(d.id) for d in deployments))
    except Exception:  # the shared state is down: the scrape goes on without breakers
        return []
    return [(d.id, d.provider, str(v.state)) for d, v in zip(deployments, views, strict=True)]

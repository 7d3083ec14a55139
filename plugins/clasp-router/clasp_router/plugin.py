"""clasp-router's hook implementations (entry point ``router = "clasp_router.plugin"``).

The per-request hooks live on :class:`~clasp_router.runtime.RouterRuntime`, created in
``startup`` and registered in that app's plugin manager (so two apps in one process
never share measurements).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from clasp_gateway import Config, ConfigError, GatewayError, authenticate, error_response, hookimpl, json_response

from .catalogue import entry
from .explain import main as explain_main
from .runtime import Availability, RouterRuntime
from .settings import parse_settings
from .strategies import STRATEGIES

RUNTIME_PLUGIN = "router.runtime"


@hookimpl
def register_config_sections(register: Callable[..., None]) -> None:
    """``router:`` is this plugin's section."""
    register("router")


@hookimpl
def register_routing_strategies(register: Callable[..., None]) -> None:
    """chain, strict, cost, balanced, latency, availability (see :mod:`.strategies`)."""
    for name, strategy in STRATEGIES.items():
        register(name, strategy)


@hookimpl
def register_commands(register: Callable[..., None]) -> None:
    """``clasp route --explain request.json [--key NAME]``."""
    register("route", explain_main, help="explain how a request would be routed, without calling anything")


@hookimpl
def register_routes(register: Callable[..., None]) -> None:
    """``GET /-/catalogue`` (any valid key)."""
    register("/-/catalogue", catalogue, methods=["GET"])


@hookimpl
def validate_config(config: Config, gateway: Any) -> list[str] | None:
    """Check ``router:`` for ``clasp check`` and before ``clasp serve`` binds."""
    try:
        parse_settings(config, gateway.strategies)
    except ConfigError as exc:
        return exc.problems
    return None


@hookimpl
def startup(app: Starlette, config: Config) -> None:
    """Create this app's runtime and register its per-request hooks."""
    gateway = app.state.gateway
    pm = app.state.pm
    settings = parse_settings(config, gateway.strategies)
    previous = pm.get_plugin(RUNTIME_PLUGIN)
    if previous is not None:
        pm.unregister(previous)

    def availability() -> Availability | None:
        # clasp-fallback starts in any order next to us: look it up per request.
        return getattr(app.state, "fallback", None)

    runtime = RouterRuntime(gateway, settings, availability)
    app.state.router = runtime
    pm.register(runtime, name=RUNTIME_PLUGIN)


@hookimpl
def shutdown(app: Starlette) -> Any:
    """Unregister the runtime and stop its background refresh."""
    return _stop(app)


async def _stop(app: Starlette) -> None:
    runtime = getattr(app.state, "router", None)
    if runtime is None:
        return
    if app.state.pm.get_plugin(RUNTIME_PLUGIN) is runtime:
        app.state.pm.unregister(runtime)
    app.state.router = None
    await runtime.shared.close()


async def catalogue(request: Request) -> Response:
    """Every deployment: capabilities, prices, region, measured latency, availability.
    No secrets (no keys, headers or addresses)."""
    try:
        await authenticate(request)
    except GatewayError as exc:
        return error_response(exc, "anthropic")
    runtime: RouterRuntime | None = getattr(request.app.state, "router", None)
    if runtime is None:
        return error_response(GatewayError("the router has not started", status=503, error_type="api_error"))
    deployments = runtime.gateway.config.deployments()
    if runtime.shared.state.shared:
        await runtime.shared.refresh([d.id for d in deployments])  # what every replica measured
    fallback = getattr(request.app.state, "fallback", None)  # hedging estimates and own limits, if installed
    p99 = getattr(fallback, "ttfb_p99", None)
    own = getattr(fallback, "limits_of", None)
    rows = []
    for d in deployments:
        limits = own(d.id) if callable(own) else None
        rows.append(entry(d, runtime.measurements.by_id.get(d.id), runtime.available(d.id), runtime.headroom(d.id),
                          ttfb_p99_s=p99(d.id) if callable(p99) else None,
                          limits=limits if isinstance(limits, dict) else None))
    return json_response({"strategy": runtime.settings.strategy, "deployments": rows})

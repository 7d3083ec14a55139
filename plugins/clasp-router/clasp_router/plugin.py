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

from clasp_gateway import (
    Chunk,
    Config,
    ConfigError,
    GatewayError,
    RequestContext,
    authenticate,
    error_response,
    hookimpl,
    json_response,
    skips_text_deltas,
)

from .catalogue import entry
from .experiments import Experiments, parse_experiments
from .experiments_cli import list_endpoint, report_endpoint
from .experiments_cli import main as experiment_main
from .experiments_cli import report_main as experiment_report_main
from .explain import main as explain_main
from .learning import watch_chunk
from .registry import STRATEGIES
from .runtime import Availability, BudgetView, RouterRuntime
from .settings import parse_settings

RUNTIME_PLUGIN = "router.runtime"


@hookimpl
def register_config_sections(register: Callable[..., None]) -> None:
    """``router:`` and ``experiments:`` are this plugin's sections."""
    register("router")
    register("experiments")


@hookimpl
def register_routing_strategies(register: Callable[..., None]) -> None:
    """chain, strict, cost, balanced, latency, availability (see :mod:`.strategies`)."""
    for name, strategy in STRATEGIES.items():
        register(name, strategy)


@hookimpl
def register_commands(register: Callable[..., None]) -> None:
    """``clasp route --explain request.json [--key NAME]``; ``clasp experiment list|report NAME``
    and ``clasp report experiment NAME``."""
    register("route", explain_main, help="explain how a request would be routed, without calling anything")
    register("experiment", experiment_main, help="list experiments, or compare an experiment's arms (report NAME)")
    register("report experiment", experiment_report_main, help="compare an experiment's arms (clasp report experiment NAME)")


@hookimpl
def register_routes(register: Callable[..., None]) -> None:
    """``GET /-/catalogue`` (any valid key); ``GET /admin/experiments[/{name}]`` (admin)."""
    register("/-/catalogue", catalogue, methods=["GET"])
    register("/admin/experiments", list_endpoint, methods=["GET"])
    register("/admin/experiments/{name}", report_endpoint, methods=["GET"])


@hookimpl
def validate_config(config: Config, gateway: Any) -> list[str] | None:
    """Check ``router:`` for ``clasp check`` and before ``clasp serve`` binds."""
    problems: list[str] = []
    for check in (lambda: parse_settings(config, gateway.strategies), lambda: parse_experiments(config)):
        try:
            check()
        except ConfigError as exc:
            problems += exc.problems
    return problems or None


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

    def budgets() -> BudgetView | None:
        return getattr(app.state, "budget_remaining", None)  # clasp-budgets, when installed

    runtime = RouterRuntime(gateway, settings, availability, budgets)
    runtime.experiments = Experiments.build(gateway)
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
    if runtime.experiments is not None:
        await runtime.experiments.close()
    await runtime.learner.close()


@hookimpl
@skips_text_deltas  # finish reasons and tool calls only: text deltas need not come here
def on_stream_chunk(ctx: RequestContext, chunk: Chunk) -> None:
    """The learner reads an answer's finish reason and tool calls (truncation, invalid
    tool JSON). Module level: the core decides before start-up whether anyone wants
    chunks; for requests no learned strategy routed, it is one dict lookup."""
    watch_chunk(ctx, chunk)


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

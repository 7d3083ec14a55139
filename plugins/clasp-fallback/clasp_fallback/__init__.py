"""clasp-fallback: retries, fallback chains, circuit breakers, health checks, degradation.

This module holds the hook implementations only; the pieces live in their own modules:
:mod:`.settings` (the ``fallback:`` section), :mod:`.classify` (what an error means),
:mod:`.retry` (backoff and the retry budget), :mod:`.breaker` (circuit breakers, in
the gateway's state backend), :mod:`.strategy` (which deployments, in which order), :mod:`.health`
(active checks and ``GET /health/providers``), :mod:`.degrade` (what to answer when
everything failed) and :mod:`.runtime` (one app's state and its per-request hooks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette

from clasp_gateway import Config, ConfigError, hookimpl

from .degrade import STALE_KEY
from .health import providers_health
from .runtime import FallbackRuntime
from .settings import FallbackSettings, parse_settings, strict_warning

__version__ = "0.1.0"

RUNTIME_PLUGIN = "fallback.runtime"
"""Name of the per-app runtime in the app's plugin manager."""


@hookimpl
def register_routes(register: Callable[..., None]) -> None:
    """Serve ``GET /health/providers``."""
    register("/health/providers", providers_health, methods=["GET"])


@hookimpl
def register_config_sections(register: Callable[..., None]) -> None:
    """``fallback:`` is this plugin's section."""
    register("fallback")


@hookimpl
def validate_config(config: Config, gateway: Any) -> list[str] | None:
    """Check ``fallback:`` (with the strategies other plugins registered, and the
    gateway's request classes for ``tasks``) for ``clasp check`` and before ``clasp
    serve`` binds."""
    try:
        parse_settings(config, gateway.strategies, gateway.classifier.names)
    except ConfigError as exc:
        return exc.problems
    warning = strict_warning(config, gateway.strategies)
    if warning is not None and warning not in config.warnings:
        config.warnings.append(warning)  # `clasp check` prints it, `clasp serve` logs it
    return None


@hookimpl
def startup(app: Starlette, config: Config) -> Any:
    """Validate ``fallback:``, open its own Redis (``breaker.redis_url``), start health checks, and register
    this app's runtime (its per-request hooks) in this app's plugin manager."""
    return _start(app, config)


async def _start(app: Starlette, config: Config) -> None:
    gateway = app.state.gateway
    pm = app.state.pm
    settings = parse_settings(config, gateway.strategies, gateway.classifier.names)  # checked already
    previous = pm.get_plugin(RUNTIME_PLUGIN)
    if previous is not None:  # a restarted lifespan: replace the old runtime
        pm.unregister(previous)
        await previous.close()
    runtime = FallbackRuntime(gateway, settings)
    await runtime.start()
    app.state.fallback = runtime
    pm.register(runtime, name=RUNTIME_PLUGIN)


@hookimpl
def shutdown(app: Starlette) -> Any:
    """Stop health checks, close its own Redis, unregister the runtime."""
    return _stop(app)


async def _stop(app: Starlette) -> None:
    runtime = getattr(app.state, "fallback", None)
    if runtime is None:
        return
    pm = app.state.pm
    if pm.get_plugin(RUNTIME_PLUGIN) is runtime:
        pm.unregister(runtime)
    app.state.fallback = None
    await runtime.close()


__all__ = [
    "STALE_KEY", "FallbackRuntime", "FallbackSettings", "parse_settings", "register_config_sections", "register_routes",
    "shutdown", "startup", "validate_config",
]

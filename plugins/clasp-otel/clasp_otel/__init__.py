"""clasp-otel: OpenTelemetry traces of the gateway (optional; inert without ``otel:``).

A span per request (continuing a client's W3C ``traceparent``) and per upstream
attempt, whose ``traceparent`` the provider receives: see :mod:`.runtime`; the
``otel:`` section and the exporter (OTLP/HTTP by default): :mod:`.settings`. Without
an ``otel:`` section (or with ``enabled: false``) the plugin registers nothing per
request and wraps nothing: tracing off costs nothing. Uses only the public API.

Tests: set ``app.state.otel_span_exporter`` (e.g. the SDK's ``InMemorySpanExporter``)
before start-up to receive the spans instead of the configured exporter.
"""

from __future__ import annotations

from typing import Any

from clasp_gateway import Config, RegisterConfigSection, hookimpl

from .runtime import OtelRuntime
from .settings import SETTINGS, build_provider

__all__ = ["SETTINGS", "OtelRuntime"]

RUNTIME = "otel.runtime"


def _settings(config: Config) -> dict[str, Any] | None:
    if "otel" not in config.raw:
        return None
    settings: dict[str, Any] = SETTINGS.parse(config.raw["otel"], "otel", [])
    return settings if settings["enabled"] else None


class _Deferred:
    """The request-span wrapper, whose tracer arrives at start-up (the wrapper is
    built with the app, before its lifespan)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.traced: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await (self.traced or self.app)(scope, receive, send)


_wrappers: dict[int, _Deferred] = {}
"""The wrapper of each config's app (by ``id(config)``), until its start-up takes it."""


@hookimpl
def register_config_sections(register: RegisterConfigSection) -> None:
    register("otel")


@hookimpl
def validate_config(config: Config) -> list[str]:
    problems: list[str] = []
    SETTINGS.parse(config.raw.get("otel"), "otel", problems)
    return problems


@hookimpl
def asgi_wrapper(config: Config) -> Any:
    if _settings(config) is None:
        return None  # tracing off: nothing wraps the app

    def wrap(app: Any) -> Any:
        deferred = _wrappers[id(config)] = _Deferred(app)
        return deferred

    return wrap


@hookimpl
def startup(app: Any, config: Config) -> None:
    settings = _settings(config)
    if settings is None:
        return
    provider = build_provider(settings, getattr(app.state, "otel_span_exporter", None))
    runtime = OtelRuntime(provider, settings)
    app.state.otel = runtime
    deferred = _wrappers.pop(id(config), None) or getattr(app.state, "otel_wrapper", None)
    if deferred is not None:
        app.state.otel_wrapper = deferred  # a restarted lifespan finds it here
        deferred.traced = runtime.wrap(deferred.app)
    pm = app.state.gateway.pm
    if pm.has_plugin(RUNTIME):
        pm.unregister(name=RUNTIME)
    pm.register(runtime, name=RUNTIME)


@hookimpl
def shutdown(app: Any) -> None:
    runtime: OtelRuntime | None = getattr(app.state, "otel", None)
    if runtime is None:
        return
    pm = app.state.gateway.pm
    if pm.has_plugin(RUNTIME):
        pm.unregister(name=RUNTIME)
    runtime.provider.shutdown()  # exports what is batched
    app.state.otel = None
    deferred = getattr(app.state, "otel_wrapper", None)
    if deferred is not None:
        deferred.traced = None

"""clasp-analytics' hook implementations (entry point ``analytics``).

The pieces live in their own modules: :mod:`.settings` (the ``analytics:`` section),
:mod:`.metrics` and :mod:`.scrape` (Prometheus), :mod:`.multiproc` (one samples
directory per ``clasp serve`` run with several workers), :mod:`.quality` (signals read
from answers), :mod:`.feedback` (``POST /v1/feedback``), :mod:`.reports` (queries over
the spend ledger), :mod:`.export` (CSV, JSON lines, Parquet), :mod:`.admin_api` (the
admin analytics API), :mod:`.dashboard` (the admin page and its assets),
:mod:`.command` (``clasp export``) and :mod:`.runtime` (one app's state and its
per-request hooks).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from clasp_gateway import Config, ConfigError, hookimpl

from .runtime import AnalyticsRuntime
from .settings import SECTION, parse_settings

RUNTIME_PLUGIN = "analytics.runtime"
"""Name of the per-app runtime in the app's plugin manager."""
INSPECTOR_PLUGIN = "analytics.streams"


@hookimpl
def register_config_sections(register: Callable[..., Any]) -> None:
    """``analytics:`` is this plugin's section."""
    register(SECTION)


@hookimpl
def validate_config(config: Config) -> list[str] | None:
    """Check ``analytics:`` for ``clasp check`` and before ``clasp serve`` binds."""
    try:
        parse_settings(config)
    except ConfigError as exc:
        return exc.problems
    return None


@hookimpl
def register_routes(register: Callable[..., Any]) -> None:
    """``/metrics``, ``POST /v1/feedback``, the dashboard and the admin analytics API."""
    from . import admin_api, dashboard, feedback, scrape

    register("/metrics", scrape.metrics_endpoint, methods=["GET"])
    register("/v1/feedback", feedback.feedback_endpoint, methods=["POST"])
    dashboard.register(register)
    admin_api.register(register)


@hookimpl
def register_data_stores(register: Callable[..., Any]) -> None:
    """``analytics``: quality rows and feedback, for retention and deletion (:mod:`.retention`)."""
    from .retention import purge

    register("analytics", purge, "quality rows and feedback (analytics_quality, analytics_feedback)")


@hookimpl
def register_migrations(register: Callable[..., Any]) -> None:
    """The ``analytics`` Alembic branch: quality rows and feedback."""
    from clasp_gateway import MigrationRegistration

    register(MigrationRegistration(name="analytics", directory=Path(__file__).parent / "migrations"))


@hookimpl
def register_commands(register: Callable[..., Any]) -> None:
    """``clasp export``: the ledger as CSV, JSON lines or Parquet, and cohort views."""
    from .command import export_command

    register("export", export_command, help="export the spend ledger (csv, jsonl, parquet) or a cohort view")


@hookimpl
def prepare_workers(config: Config, workers: int) -> Any:
    """Several workers: one fresh Prometheus samples directory for the run."""
    try:
        settings = parse_settings(config)
    except ConfigError:
        return None
    if not settings.metrics.enabled:
        return None
    from .multiproc import per_run_directory

    return per_run_directory()


@hookimpl
def startup(app: Starlette, config: Config) -> Any:
    """Build this app's runtime and register its per-request hooks in this app's plugin manager."""
    return _start(app, config)


async def _start(app: Starlette, config: Config) -> None:
    gateway = app.state.gateway
    pm = app.state.pm
    settings = parse_settings(config)
    for name in (RUNTIME_PLUGIN, INSPECTOR_PLUGIN):  # a restarted lifespan: replace the old ones
        previous = pm.get_plugin(name)
        if previous is not None:
            pm.unregister(previous)
            if isinstance(previous, AnalyticsRuntime):
                await previous.close()
    runtime = AnalyticsRuntime(gateway, settings)
    await runtime.start()
    app.state.analytics = runtime
    pm.register(runtime, name=RUNTIME_PLUGIN)
    if settings.quality.enabled and settings.quality.inspect_streams:
        from .quality import StreamInspector

        pm.register(StreamInspector(), name=INSPECTOR_PLUGIN)
        gateway.chunk_hook = True  # the core decided at build time; it now has an implementation


@hookimpl
def shutdown(app: Starlette) -> Any:
    """Write what is queued and unregister the runtime."""
    return _stop(app)


async def _stop(app: Starlette) -> None:
    runtime: AnalyticsRuntime | None = getattr(app.state, "analytics", None)
    pm = app.state.pm
    for name in (INSPECTOR_PLUGIN, RUNTIME_PLUGIN):
        plugin = pm.get_plugin(name)
        if plugin is not None:
            pm.unregister(plugin)
    if runtime is not None:
        await runtime.close()
        app.state.analytics = None

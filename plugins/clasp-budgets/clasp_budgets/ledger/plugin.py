"""The ``budgets_ledger`` plugin: the spend ledger's migrations, writer and reports.

Registered under the entry point ``budgets_ledger``:
- ``register_migrations``: the Alembic branch ``ledger`` (``ledger_requests``,
  ``ledger_attempts``);
- ``startup``: a :class:`~.writer.LedgerWriter` on the gateway's database
  (``storage:``) and a :class:`~.runtime.LedgerRuntime` (``before_call``: the prompt
  fingerprint; ``record``: the rows) registered in the app's plugin manager;
- ``shutdown`` (SIGTERM ends here through the server's lifespan): the flush, within
  ``ledger.shutdown_timeout``; what the database does not take is spooled;
- ``register_config_sections`` / ``validate_config``: ``ledger:``;
- ``register_routes``: the admin reports (``/admin/usage``, ``/admin/reports/...``);
- ``register_commands``: ``clasp report`` and ``clasp prices``;
- ``register_data_stores``: ``ledger``, for retention and deletion (:mod:`.retention`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from clasp_gateway import (
    Config,
    ConfigError,
    MigrationRegistration,
    RegisterCommand,
    RegisterConfigSection,
    RegisterDataStore,
    RegisterMigrations,
    RegisterRoute,
    data_dir,
    hookimpl,
)

from . import MIGRATIONS
from .runtime import RUNTIME_PLUGIN, LedgerRuntime
from .settings import SPOOL_FILE, LedgerSettings, parse_settings
from .writer import LedgerWriter

log = logging.getLogger("clasp.ledger")


@hookimpl
def register_migrations(register: RegisterMigrations) -> None:
    """The branch ``ledger``: ``ledger_requests`` and ``ledger_attempts``."""
    register(MigrationRegistration(name="ledger", directory=MIGRATIONS))


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    """The spend reports of the admin API."""
    from ..reports.routes import ROUTES

    for path, endpoint in ROUTES:
        register(path, endpoint, methods=["GET"])


@hookimpl
def register_commands(register: RegisterCommand) -> None:
    """``clasp report`` and ``clasp prices``."""
    from .. import prices
    from ..reports import cli

    register("report", cli.main, help="spend by provider, model, key, team...; projections; savings")
    register("prices", prices.main, help="the price map: update FILE (offline), show MODEL")


@hookimpl
def register_data_stores(register: RegisterDataStore) -> None:
    """``ledger``: its rows by age (``retention.max_age.ledger``), a key's or a team's."""
    from .retention import purge

    register("ledger", purge, "spend ledger rows (ledger_requests, ledger_attempts)")


@hookimpl
def register_config_sections(register: RegisterConfigSection) -> None:
    register("ledger")


@hookimpl
def validate_config(config: Config, gateway: Any) -> list[str] | None:
    """Check ``ledger:``."""
    try:
        parse_settings(config)
    except ConfigError as exc:
        return exc.problems
    return None


def spool_base(settings: LedgerSettings) -> Path:
    """Where the spool files go: ``ledger.spool_path``, else the data dir."""
    return Path(settings.spool_path).expanduser() if settings.spool_path else data_dir() / SPOOL_FILE


@hookimpl
def startup(app: Starlette, config: Config) -> Any:
    """Start this app's ledger writer and register its hooks."""
    return _start(app, config)


async def _start(app: Starlette, config: Config) -> None:
    settings = parse_settings(config)
    if not settings.enabled:
        return
    gateway = app.state.gateway
    pm = app.state.pm
    previous = pm.get_plugin(RUNTIME_PLUGIN)
    if previous is not None:  # a restarted lifespan: flush and replace the old runtime
        pm.unregister(previous)
        await previous.writer.close()
    database = gateway.database
    writer = LedgerWriter(database.begin, database.dialect, settings, spool_base(settings))
    writer.start()
    runtime = LedgerRuntime(writer, settings, database)
    app.state.ledger = runtime
    pm.register(runtime, name=RUNTIME_PLUGIN)


@hookimpl
def shutdown(app: Starlette) -> Any:
    """Flush the ledger (SIGTERM comes here): rows the database does not take within
    ``ledger.shutdown_timeout`` go to the spool, replayed at the next start."""
    return _stop(app)


async def _stop(app: Starlette) -> None:
    runtime: LedgerRuntime | None = getattr(app.state, "ledger", None)
    if runtime is None:
        return
    app.state.ledger = None
    await runtime.writer.close()
    # The gateway disposed of its pool before the plugins' shutdown (Gateway.close):
    # the flush opened a new one; let it go.
    await runtime.database.dispose()
    pm = app.state.pm
    if pm.get_plugin(RUNTIME_PLUGIN) is runtime:
        pm.unregister(runtime)
    stats = runtime.writer.stats
    log.info("ledger closed: %d row(s) written, %d spooled, %d replayed, %d dropped",
             stats.written, stats.spooled, stats.replayed, stats.dropped)

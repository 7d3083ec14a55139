"""clasp-budgets' budgets as a pluggy plugin: the ``budgets:`` section, and a
:class:`~clasp_budgets.budgets.runtime.BudgetRuntime` registered per app at start-up
(settings live per app, never in module globals: two gateways in one process keep
their own). Inert when no budget applies to a request (no ``budgets.limits`` and no key
with ``max_budget_usd``): ``before_call`` then returns at once."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from clasp_gateway import (
    Config,
    ConfigError,
    MigrationRegistration,
    RegisterConfigSection,
    RegisterMigrations,
    RegisterRoute,
    hookimpl,
)

from .admin import create_budget, delete_budget, list_budgets, update_budget
from .costs import load_tokenizers
from .remaining import BudgetRemaining
from .reservations import Reservations
from .runtime import BudgetRuntime, StreamMeter, rebuild_spend
from .settings import parse_settings
from .store import DatabaseBudgets

RUNTIME = "clasp_budgets.budgets.runtime"
METER = "clasp_budgets.budgets.meter"
log = logging.getLogger("clasp.budgets")


@hookimpl
def register_config_sections(register: RegisterConfigSection) -> None:
    register("budgets")


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    register("/admin/budgets", list_budgets, methods=["GET"])
    register("/admin/budgets", create_budget, methods=["POST"])
    register("/admin/budgets/{name}", update_budget, methods=["PUT"])
    register("/admin/budgets/{name}", delete_budget, methods=["DELETE"])


@hookimpl
def register_migrations(register: RegisterMigrations) -> None:
    """The branch ``budgets``: the table of budgets created through the admin API."""
    register(MigrationRegistration(name="budgets", directory=Path(__file__).parent / "migrations"))


@hookimpl
def validate_config(config: Config) -> list[str]:
    problems: list[str] = []
    parse_settings(config, problems)
    return problems


def alert_sink(app: Any) -> Any:
    """Where budget alerts go: the alerts plugin's sender when it runs, else the log."""

    def send(event: dict[str, Any]) -> None:
        sender = getattr(app.state, "clasp_alerts", None)
        if sender is not None:
            sender.send(event)
        else:
            log.warning("budget alert: %s", event)

    return send


@hookimpl
async def startup(app: Any, config: Config) -> None:
    problems: list[str] = []
    settings = parse_settings(config, problems)
    if problems:
        raise ConfigError(config.source, problems)
    gateway = app.state.gateway
    reservations = Reservations(gateway.state, settings, alert=alert_sink(app))
    stored = DatabaseBudgets(gateway.database, gateway.state)
    runtime = BudgetRuntime(gateway, settings, reservations, stored)
    app.state.clasp_budgets = runtime
    app.state.budget_remaining = BudgetRemaining(runtime)  # read by routers (clasp-router's cheapest-capable)
    gateway.pm.register(runtime, name=RUNTIME)
    metered = gateway.state.shared
    if metered:  # leases' charges need the streamed text (see StreamMeter)
        gateway.pm.register(StreamMeter(), name=METER)
        gateway.chunk_hook = True  # the core decided at build time; it now has an implementation
    await reservations.start()

    async def when_ready() -> None:
        """The database is migrated in ``Gateway.start``, after the start-up hooks."""
        while not gateway.ready:  # noqa: ASYNC110 (the core offers a flag, not an event)
            await asyncio.sleep(0.02)
        try:
            await stored.load()
            seeded = await rebuild_spend(runtime, gateway.database)
            if seeded:
                log.info("budgets: spend of %d budget(s) rebuilt from the ledger", seeded)
        except Exception as exc:  # no ledger (plugin off), database down: counters as they are
            log.warning("budgets: could not rebuild spend from the ledger (%s: %s)", type(exc).__name__, exc)
        finally:
            runtime.ready.set()

    await stored.start(when_ready)
    if settings.limits and metered:
        # Budgets apply from the first request: count streams with the real tokenizer
        # from the start (loading one takes about a second, in a thread). Without
        # configured limits (only keys' own budgets) it loads at the first budgeted stream.
        await asyncio.to_thread(load_tokenizers, [d.model for d in config.deployments()])


@hookimpl
async def shutdown(app: Any) -> None:
    gateway = app.state.gateway
    runtime = getattr(app.state, "clasp_budgets", None)
    for name in (RUNTIME, METER):
        if gateway.pm.has_plugin(name):
            gateway.pm.unregister(name=name)
    remaining = getattr(app.state, "budget_remaining", None)
    if remaining is not None:
        await remaining.close()
    if runtime is not None:
        await runtime.stored.close()
        await runtime.reservations.close()

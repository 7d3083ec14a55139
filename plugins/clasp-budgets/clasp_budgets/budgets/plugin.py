"""clasp-budgets' budgets as a pluggy plugin: the ``budgets:`` section, and a
:class:`~clasp_budgets.budgets.runtime.BudgetRuntime` registered per app at start-up
(settings live per app, never in module globals: two gateways in one process keep
their own). Inert when no budget applies to a request (no ``budgets.limits`` and no key
with ``max_budget_usd``): ``before_call`` then returns at once."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from clasp_gateway import Chunk, Config, ConfigError, RegisterConfigSection, RegisterRoute, RequestContext, hookimpl

from .admin import list_budgets
from .costs import load_tokenizers
from .reservations import Reservations
from .runtime import BudgetRuntime, count_stream_chunk
from .settings import parse_settings

RUNTIME = "clasp_budgets.budgets.runtime"
log = logging.getLogger("clasp.budgets")


@hookimpl
def register_config_sections(register: RegisterConfigSection) -> None:
    register("budgets")


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    register("/admin/budgets", list_budgets, methods=["GET"])


@hookimpl
def validate_config(config: Config) -> list[str]:
    problems: list[str] = []
    parse_settings(config, problems)
    return problems


@hookimpl
def on_stream_chunk(ctx: RequestContext, chunk: Chunk) -> None:
    """What a budgeted stream showed so far (cheap: nothing for a request without budgets)."""
    count_stream_chunk(ctx, chunk)


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
        raise ConfigError("\n".join(problems))
    gateway = app.state.gateway
    reservations = Reservations(gateway.state, settings, alert=alert_sink(app))
    runtime = BudgetRuntime(gateway, settings, reservations)
    app.state.clasp_budgets = runtime
    gateway.pm.register(runtime, name=RUNTIME)
    await reservations.start()
    if settings.limits:
        # Budgets apply from the first request: count streams with the real tokenizer
        # from the start (loading one takes about a second, in a thread). Without
        # configured limits (only keys' own budgets) it loads at the first budgeted stream.
        await asyncio.to_thread(load_tokenizers, [d.model for d in config.deployments()])


@hookimpl
async def shutdown(app: Any) -> None:
    gateway = app.state.gateway
    runtime = getattr(app.state, "clasp_budgets", None)
    if gateway.pm.has_plugin(RUNTIME):
        gateway.pm.unregister(name=RUNTIME)
    if runtime is not None:
        await runtime.reservations.close()

"""clasp-budgets' alerts as a pluggy plugin: the ``alerts:`` section, the sender
(``app.state.clasp_alerts``, which the budgets use for thresholds and outages) and the
anomaly detector fed by ``record`` events. An anomaly is sent once across replicas:
the replica that first stores its key (set-if-absent) sends it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from clasp_gateway import (
    Config,
    ConfigError,
    RegisterConfigSection,
    RequestContext,
    StateBackend,
    StateUnavailable,
    hookimpl,
)

from .anomaly import AnomalyDetector
from .settings import AlertSettings, parse_settings
from .webhook import AlertSender

RUNTIME = "clasp_budgets.alerts.runtime"
TICK = 15.0
log = logging.getLogger("clasp.alerts")


class AlertsRuntime:
    """One app's alerts: the sender and the anomaly detector."""

    def __init__(self, settings: AlertSettings, state: StateBackend, *, clock: Callable[[], float] | None = None,
                 sender: AlertSender | None = None) -> None:
        self.settings = settings
        self.state = state
        self.sender = sender or AlertSender(settings.webhook)
        self.detector = AnomalyDetector(settings.anomaly, **({"clock": clock} if clock else {}))
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.sender.start()
        if self.settings.anomaly.enabled:
            self._task = asyncio.get_running_loop().create_task(self._ticks(), name="clasp-alerts-anomaly")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.sender.close()

    async def _ticks(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            with contextlib.suppress(Exception):
                await self.report(self.detector.tick())

    async def report(self, anomalies: list[dict[str, Any]]) -> None:
        """Send each anomaly unless another replica already did."""
        for anomaly in anomalies:
            key = f"alerts:anomaly:{anomaly['dimension']}:{anomaly['subject']}:{anomaly['metric']}:{anomaly['minute']}"
            try:
                first = await self.state.set(key, "1", ttl=3600, if_absent=True)
            except StateUnavailable:
                first = True  # better twice than never
            if first:
                self.sender.send(anomaly)

    @hookimpl
    def record(self, ctx: RequestContext, event: dict[str, Any]) -> Awaitable[None] | None:
        """Count the request for the anomaly detector; an awaitable (the report) only
        when a minute it closed was an anomaly: most requests cost no coroutine."""
        if event.get("kind") != "request" or not self.settings.anomaly.enabled:
            return None
        status = event.get("status") or 0
        subjects = {
            "key": event.get("key_name") or event.get("key_id"), "team": event.get("team"),
            "model": event.get("model") or event.get("public_model"),
            "project": ctx.principal.project if ctx.principal else None, "user": ctx.user,
        }
        found = self.detector.observe(subjects, float(event.get("cost_usd") or 0.0), status >= 500 or status == 429)
        return self.report(found) if found else None


@hookimpl
def register_config_sections(register: RegisterConfigSection) -> None:
    register("alerts")


@hookimpl
def validate_config(config: Config) -> list[str]:
    problems: list[str] = []
    parse_settings(config, problems)
    return problems


@hookimpl
async def startup(app: Any, config: Config) -> None:
    problems: list[str] = []
    settings = parse_settings(config, problems)
    if problems:
        raise ConfigError(config.source, problems)
    gateway = app.state.gateway
    runtime = AlertsRuntime(settings, gateway.state)
    app.state.clasp_alerts = runtime.sender
    gateway.pm.register(runtime, name=RUNTIME)
    await runtime.start()


@hookimpl
async def shutdown(app: Any) -> None:
    gateway = app.state.gateway
    runtime = gateway.pm.get_plugin(RUNTIME)
    if runtime is not None:
        gateway.pm.unregister(name=RUNTIME)
        await runtime.close()

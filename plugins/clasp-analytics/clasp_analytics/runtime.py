"""One app's analytics: metrics, quality rows and the per-request hooks.

Built in ``startup`` and registered in that app's plugin manager (two gateways in one
process, as tests run them, never share series or queues). Per request it costs a few
counter increments, one hash of the conversation and, with a retry window, two
shared-state operations after the answer: nothing waits on the database.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from clasp_gateway import CanonicalRequest, Gateway, RequestContext, hookimpl

from .metrics import GatewayMetrics
from .quality import FINGERPRINT_PREFIX, STATE_KEY, AnswerSeen, fingerprint, seen, signals_of
from .settings import AnalyticsSettings, metrics_token
from .writer import BatchWriter

log = logging.getLogger("clasp.analytics")

IN_FLIGHT = "analytics.in_flight"
KEPT_METRICS = "clasp_analytics.metrics"
"""Name of the Prometheus series in the gateway's handover (kept across reloads)."""


class AnalyticsRuntime:
    """Per-app state, and the hooks that feed it (``before_call``, ``record``)."""

    def __init__(self, gateway: Gateway, settings: AnalyticsSettings) -> None:
        self.gateway = gateway
        self.settings = settings
        self.metrics: GatewayMetrics | None = None
        if settings.metrics.enabled:
            # A reload keeps the series while their labels are the same: counters never go
            # backwards (``rate()`` would read a reset), the in-flight gauge stays true.
            shape = (settings.metrics.team_label, settings.metrics.key_label, settings.metrics.max_label_values)
            self.metrics = gateway.handover.adopt(KEPT_METRICS, shape, lambda: GatewayMetrics(settings.metrics))
        self._hook_failures_seen: dict[str, int] = {}
        """This gateway's ``hook_failures`` already exported (the metrics may outlive it)."""
        token = metrics_token(settings.metrics) if settings.metrics.auth == "token" else None
        self.metrics_token: str | None = token.value if token is not None else None
        self.quality = settings.quality.enabled
        self.retry_window = settings.quality.retry_window if self.quality else 0.0
        self.database: Any = getattr(gateway, "database", None)
        self.has_ledger = any(m.name == "ledger" for m in getattr(gateway, "migrations", ()))
        """Whether the ledger's tables are registered (clasp-budgets' ledger plugin loaded)."""
        self.quality_rows: BatchWriter | None = None
        if self.quality and self.database is not None:
            from .tables import QUALITY

            self.quality_rows = BatchWriter(self.database, QUALITY)

    async def start(self) -> None:
        if self.quality_rows is not None:
            self.quality_rows.start()
        if self.metrics is not None and self.gateway.config.server.workers > 1 and not self.metrics.multiprocess:
            log.warning("metrics: %d workers but no PROMETHEUS_MULTIPROC_DIR: /metrics shows the answering worker "
                        "only (start the gateway with `clasp serve`, which sets one per run)",
                        self.gateway.config.server.workers)

    async def close(self) -> None:
        if self.quality_rows is not None:
            await self.quality_rows.close()
        if self.metrics is not None and self.gateway.handover.release(KEPT_METRICS, self.metrics) \
                and self.metrics.multiprocess:
            from .multiproc import forget_process

            forget_process(os.getpid())  # the process stops serving (not a reload)

    # --- hooks ------------------------------------------------------------------------------

    @hookimpl(tryfirst=True)
    def before_call(self, ctx: RequestContext, request: CanonicalRequest) -> None:
        """First of all ``before_call``s (it never answers): count the request in flight
        and fingerprint the conversation for retry detection."""
        if self.metrics is not None:
            self.metrics.in_flight.inc()
            ctx.state[IN_FLIGHT] = True
        if self.retry_window > 0:
            seen(ctx).fingerprint = fingerprint(ctx, request)
        return None

    @hookimpl
    def record(self, ctx: RequestContext, event: dict[str, Any]) -> Any:
        """Metrics from every event; the quality row from the request event."""
        kind = event.get("kind")
        if kind == "attempt":
            if self.metrics is not None:
                self.metrics.observe_attempt(event)
            return None
        if kind != "request":
            return None
        record: AnswerSeen | None = ctx.state.get(STATE_KEY)
        signals = signals_of(event, record) if self.quality else []
        metrics = self.metrics
        if metrics is not None:
            if ctx.state.pop(IN_FLIGHT, False):
                metrics.in_flight.dec()
            metrics.observe_request(event, ctx)
            if signals:
                metrics.observe_signals(event.get("public_model"), event.get("request_class"), signals)
            metrics.sync_hook_failures(self.gateway.hook_failures, self._hook_failures_seen)
        if not self.quality or event.get("deployment") is None and event.get("status") in (401, 403, 404):
            return None  # refused before any model was chosen: nothing to judge
        if record is not None and record.fingerprint and self.retry_window > 0:
            return self._finish_with_retry_check(ctx, event, record, signals)
        self._queue_row(ctx, event, record, signals)
        return None

    async def _finish_with_retry_check(self, ctx: RequestContext, event: dict[str, Any], record: AnswerSeen,
                                       signals: list[str]) -> None:
        key = FINGERPRINT_PREFIX + (record.fingerprint or "")
        state = self.gateway.state
        previous: bytes | None = None
        try:
            # One operation in the common case (a new conversation turn); a retry, rare,
            # reads the earlier request's id and takes its place for the next retry.
            if not await state.set(key, ctx.request_id, ttl=self.retry_window, if_absent=True):
                previous = await state.get(key)
                await state.set(key, ctx.request_id, ttl=self.retry_window)
        except Exception as exc:  # StateUnavailable: the retry signal is lost, nothing else
            log.debug("analytics: retry check skipped: %s", exc)
        if previous is not None:
            record.retry_of = previous.decode()
            if self.metrics is not None:
                self.metrics.observe_signals(event.get("public_model"), event.get("request_class"), ["retried"])
        self._queue_row(ctx, event, record, signals)

    def _queue_row(self, ctx: RequestContext, event: dict[str, Any], record: AnswerSeen | None,
                   signals: list[str]) -> None:
        if self.quality_rows is None:
            return
        principal = ctx.principal
        self.quality_rows.add({
            "request_id": ctx.request_id,
            "ts": time.time() - (event.get("latency_ms") or 0.0) / 1000,
            "api": event.get("api"),
            "public_model": event.get("public_model"),
            "request_class": event.get("request_class"),
            "provider": event.get("provider"),
            "model": event.get("model"),
            "deployment": event.get("deployment"),
            "key_id": event.get("key_id"),
            "key_name": event.get("key_name"),
            "team": event.get("team"),
            "project": event.get("project", principal.project if principal else None),
            "status": int(event.get("status") or 0),
            "error": "error" in signals,
            "truncated": "truncated" in signals,
            "invalid_tool_json": "invalid_tool_json" in signals,
            "fingerprint": record.fingerprint if record else None,
            "retry_of": record.retry_of if record else None,
        })

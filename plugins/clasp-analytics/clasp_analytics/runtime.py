"""One app's analytics: metrics, quality rows and the per-request hooks.

Built in ``startup`` and registered in that app's plugin manager (two gateways in one
process, as tests run them, never share series or queues). Per request it costs a few
counter increments, one hash of the conversation and, with a retry window, one
shared-state operation after the answer (none on the memory state:
:class:`~.quality.RecentTurns`); its quality row is a tuple queued for the batched
writer: nothing waits on the database.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from clasp_gateway import CanonicalRequest, Gateway, RequestContext, hookimpl

from .metrics import GatewayMetrics
from .quality import FINGERPRINT_PREFIX, STATE_KEY, SWAP_TURN, AnswerSeen, RecentTurns, fingerprint, seen, signals_of
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
        self.recent: RecentTurns | None = None
        """The retry window's fingerprints when the state is memory (this process's
        only): kept here, without the awaited state call (see :mod:`.quality`)."""
        state = getattr(gateway, "state", None)
        if self.retry_window > 0 and state is not None and not state.shared:
            self.recent = RecentTurns(self.retry_window)
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
            if self.recent is None:
                return self._finish_with_retry_check(ctx, event, record, signals)
            previous = self.recent.swap(record.fingerprint, ctx.request_id)
            if previous is not None:
                self._retried(event, record, previous)
        self._queue_row(ctx, event, record, signals)
        return None

    async def _finish_with_retry_check(self, ctx: RequestContext, event: dict[str, Any], record: AnswerSeen,
                                       signals: list[str]) -> None:
        previous: bytes | None = None
        try:
            previous = await self.gateway.state.run(SWAP_TURN, [FINGERPRINT_PREFIX + (record.fingerprint or "")],
                                                    [ctx.request_id, max(1, round(self.retry_window * 1000))])
        except Exception as exc:  # StateUnavailable: the retry signal is lost, nothing else
            log.debug("analytics: retry check skipped: %s", exc)
        if previous is not None:
            self._retried(event, record, previous.decode())
        self._queue_row(ctx, event, record, signals)

    def _retried(self, event: dict[str, Any], record: AnswerSeen, previous: str) -> None:
        """This request repeats ``previous`` (same conversation, within the window)."""
        record.retry_of = previous
        if self.metrics is not None:
            self.metrics.observe_signals(event.get("public_model"), event.get("request_class"), ["retried"])

    def _queue_row(self, ctx: RequestContext, event: dict[str, Any], record: AnswerSeen | None,
                   signals: list[str]) -> None:
        """The request's ``analytics_quality`` row, as a tuple in the table's column
        order (:data:`~.tables.QUALITY`; the writer hands it to the driver as is)."""
        if self.quality_rows is None:
            return
        get = event.get
        project = get("project")
        if project is None and ctx.principal is not None:
            project = ctx.principal.project
        latency = get("latency_ms")
        self.quality_rows.add((
            ctx.request_id,
            time.time() - (latency / 1000 if latency else 0.0),  # ts: when the request came in
            get("api"),
            get("public_model"),
            get("request_class"),
            get("provider"),
            get("model"),
            get("deployment"),
            get("key_id"),
            get("key_name"),
            get("team"),
            project,
            int(get("status") or 0),
            "error" in signals,
            "truncated" in signals,
            "invalid_tool_json" in signals,
            record.fingerprint if record else None,
            record.retry_of if record else None,
        ))

"""What ``/metrics`` says about what the gateway stands on: the shared state, the
database and the ledger's spool, read at scrape time.

Why at scrape time and not from the request path: "Redis is down" must be visible when
no request arrives (a quiet night is when an outage goes unnoticed until the morning),
and a probe per scrape (one read of the state, one ``SELECT 1``, one ``stat`` of the
spool, every 15-30 s per replica) costs nothing a request pays. Each probe is bounded
by :data:`PROBE_TIMEOUT`; a slow store reads as down, which is what an alert wants.

The series (the alert rules in ``deploy/prometheus/clasp.rules.yml`` use them):

- ``clasp_state_up{backend}``: 1 when the shared state (Redis, or the SQLite file
  several workers share) answered a read; absent with the in-process memory state.
- ``clasp_database_up{dialect}``: 1 when the database (``storage:``) answered
  ``SELECT 1``; absent when no plugin uses a database.
- ``clasp_ledger_spool_bytes``: rows this process's ledger writer could not hand to the
  database yet, on disk (0 in normal operation; growing: the database is down or slow).
- ``clasp_ledger_backlog_rows``: rows waiting in memory for the next batch.
- ``clasp_ledger_rows_total{outcome}``: rows ``written``, ``spooled``, ``replayed``,
  ``dropped`` (lost: the spool was full) and ``rejected`` (the database refused them),
  since this process started.

With several workers these come from the worker that answers the scrape (each worker
has its own spool; the state and the database are the same for all).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from clasp_gateway import Gateway

log = logging.getLogger("clasp.analytics")

PROBE_TIMEOUT = 2.0
"""Seconds a probe may take before the store counts as down for this scrape."""
PROBE_KEY = "analytics:probe"
"""The key the state probe reads (never written: a read proves the store answers)."""
LEDGER_OUTCOMES = ("written", "spooled", "replayed", "dropped", "rejected")


async def state_up(gateway: Gateway) -> bool | None:
    """Whether the shared state answers a read (``None``: not shared, nothing to watch)."""
    state = gateway.state
    if state is None or not state.shared:
        return None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await state.get(PROBE_KEY)
    except Exception:  # StateUnavailable, a timeout, a closed backend: down, for this scrape
        return False
    return True


async def database_up(gateway: Gateway) -> bool | None:
    """Whether the database answers ``SELECT 1`` (``None``: no database in this gateway)."""
    database = getattr(gateway, "database", None)
    if database is None:
        return None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await database.check()
    except Exception:  # DatabaseError, a timeout: down, for this scrape
        return False
    return True


async def ledger_figures(app_state: Any) -> dict[str, float] | None:
    """The ledger writer's spool size, backlog and row counts (``None``: no ledger)."""
    runtime = getattr(app_state, "ledger", None)
    writer = getattr(runtime, "writer", None)
    if writer is None:
        return None
    spool = getattr(writer, "spool", None)
    size = 0
    if spool is not None:
        try:
            size = await asyncio.to_thread(spool.size)
        except OSError:
            size = 0
    stats = writer.stats
    figures = {"spool_bytes": float(size), "backlog_rows": float(writer.backlog)}
    for outcome in LEDGER_OUTCOMES:
        figures[outcome] = float(getattr(stats, outcome, 0))
    return figures


async def dependency_families(app_state: Any) -> list[Metric]:
    """Every family above that applies to this gateway, probed concurrently."""
    gateway: Gateway = app_state.gateway
    state, database, ledger = await asyncio.gather(state_up(gateway), database_up(gateway), ledger_figures(app_state))
    families: list[Metric] = []
    if state is not None:
        family = GaugeMetricFamily("clasp_state_up", "Whether the shared state answered a read at this scrape "
                                   "(1) or not (0).", labels=["backend"])
        family.add_metric([gateway.state.kind], 1.0 if state else 0.0)
        families.append(family)
    if database is not None:
        family = GaugeMetricFamily("clasp_database_up", "Whether the database answered SELECT 1 at this scrape "
                                   "(1) or not (0).", labels=["dialect"])
        family.add_metric([gateway.database.dialect], 1.0 if database else 0.0)
        families.append(family)
    if ledger is not None:
        families.append(GaugeMetricFamily("clasp_ledger_spool_bytes", "Ledger rows on disk waiting for the "
                                          "database (this process's spool).", value=ledger["spool_bytes"]))
        families.append(GaugeMetricFamily("clasp_ledger_backlog_rows", "Ledger rows in memory waiting for the "
                                          "next batch.", value=ledger["backlog_rows"]))
        rows = CounterMetricFamily("clasp_ledger_rows", "Ledger rows by outcome since this process started "
                                   "(dropped: lost, the spool was full).", labels=["outcome"])
        for outcome in LEDGER_OUTCOMES:
            rows.add_metric([outcome], ledger[outcome])
        families.append(rows)
    return families

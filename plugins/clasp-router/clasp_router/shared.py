"""Measured latency shared by replicas through the gateway's state (``gateway.state``).

Each replica keeps its own moving averages (:class:`~.catalogue.Measurements`, O(1)
per attempt) and, off the hot path, publishes them (at most once per
``PUBLISH_EVERY`` per deployment, in ``after_attempt``) under
``router:latency:<deployment id>``; every ``REFRESH_EVERY`` seconds a background task
reads the others' and blends them in (the mean of the two averages), so a replica that
never called a deployment still ranks it by what the others measured. A state outage
only means each replica goes on with its own figures.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Callable, Iterable

import orjson

from clasp_gateway import StateBackend, StateUnavailable

from .catalogue import Measurements

log = logging.getLogger("clasp.router")

PREFIX = "router:latency:"
PUBLISH_EVERY = 1.0
REFRESH_EVERY = 5.0
TTL = 600.0
"""Seconds a published figure lives: older than that, it says nothing about today."""


class SharedLatency:
    """Publishes this replica's averages and blends in the other replicas'."""

    def __init__(self, state: StateBackend, measurements: Measurements, clock: Callable[[], float]) -> None:
        self.state = state
        self.measurements = measurements
        self.clock = clock
        self.writer = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._published: dict[str, float] = {}
        self._refreshed = float("-inf")
        self._task: asyncio.Task[None] | None = None

    async def publish(self, deployment_id: str) -> None:
        """Write this replica's figures for one deployment (throttled)."""
        now = self.clock()
        if now - self._published.get(deployment_id, float("-inf")) < PUBLISH_EVERY:
            return
        self._published[deployment_id] = now
        m = self.measurements.of(deployment_id)
        record = {"ttfb_ms": m.ttfb_ms, "tokens_per_s": m.tokens_per_s, "writer": self.writer}
        try:
            await self.state.set(PREFIX + deployment_id, orjson.dumps(record), ttl=TTL)
        except StateUnavailable:
            pass  # this replica keeps its own figures

    def maybe_refresh(self, ids: Iterable[str]) -> None:
        """Start a background refresh when the last one is older than ``REFRESH_EVERY``
        (never awaited on the request path)."""
        if not self.state.shared or self.clock() - self._refreshed < REFRESH_EVERY:
            return
        if self._task is not None and not self._task.done():
            return
        self._refreshed = self.clock()
        self._task = asyncio.get_running_loop().create_task(self.refresh(list(ids)))

    async def refresh(self, ids: list[str]) -> None:
        """Blend in the other replicas' figures for ``ids``."""
        self._refreshed = self.clock()
        for ident in ids:
            try:
                raw = await self.state.get(PREFIX + ident)
            except StateUnavailable:
                return
            if not raw:
                continue
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(record, dict) or record.get("writer") == self.writer:
                continue
            mine = self.measurements.of(ident)
            for name in ("ttfb_ms", "tokens_per_s"):
                theirs = record.get(name)
                if isinstance(theirs, (int, float)) and theirs > 0:
                    own = getattr(mine, name)
                    setattr(mine, name, float(theirs) if own is None else (own + float(theirs)) / 2)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 (closing: nothing to report)
                pass

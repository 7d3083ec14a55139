"""Where limits are counted: the gateway's shared state, or this process while it is down.

Shared (Redis, or one SQLite file for one machine's workers) is what makes a limit hold
across replicas. When it fails, :class:`StateUnavailable` comes back at once (the core
fails fast during an outage), and this module counts in a process-local memory backend
instead, with every limit divided by ``expected_replicas`` so N replicas together stay
near the configured limit. The switch is logged once per outage, and so is the return
to shared counting (the first successful shared call).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from clasp_gateway import Script, StateBackend, StateSettings, StateUnavailable, create_state

log = logging.getLogger("clasp.limits")

T = TypeVar("T")


class Store:
    """Runs each limit operation on the shared state, else on the local fallback."""

    def __init__(self, shared: StateBackend, *, replicas: int, clock: Callable[[], float] | None = None) -> None:
        self.shared = shared
        self.replicas = replicas
        self.local: StateBackend = shared if not shared.shared else create_state(
            StateSettings(backend="memory", prefix=shared.prefix), clock=clock)
        self.degraded = False
        """Whether the last shared call failed (per-process limits apply)."""

    def scaled(self, limit: float, backend: StateBackend) -> float:
        """``limit`` as it applies on ``backend`` (a share of it on the local fallback)."""
        if backend is self.shared or self.replicas <= 1:
            return limit
        return max(1.0, math.floor(limit / self.replicas))

    async def run(self, op: Callable[[StateBackend], Awaitable[T]]) -> tuple[T, StateBackend]:
        """``op`` on the shared state; on the local fallback while it is unavailable."""
        if self.local is not self.shared:
            try:
                result = await op(self.shared)
            except StateUnavailable:
                if not self.degraded:
                    self.degraded = True
                    log.error("limits: shared state %s unavailable; enforcing per-process limits "
                              "(each limit / %d expected replicas) until it is back",
                              self.shared.describe, self.replicas)
            else:
                if self.degraded:
                    self.degraded = False
                    log.warning("limits: shared state %s is back; limits are shared across replicas again",
                                self.shared.describe)
                return result, self.shared
        return await op(self.local), self.local

    async def script(self, script: Script[T], keys: Sequence[str],
                     args: Callable[[StateBackend], Sequence[float | int]]) -> tuple[T, StateBackend]:
        """``script`` on ``keys`` as :meth:`run` runs an operation, with ``args(backend)``
        (the arguments differ per backend: a share of each limit on the local fallback)."""
        if self.local is self.shared:
            return await self.local.run(script, keys, args(self.local)), self.local
        return await self.run(lambda backend: backend.run(script, keys, args(backend)))

    async def close(self) -> None:
        if self.local is not self.shared:
            await self.local.close()

"""A clock a test moves: time-dependent behaviour tested without sleeping.

Windows, cooldowns, expiries and backoffs are tested by handing the component its clock
(``MemoryState(clock=...)``, ``MemoryBreakers(policy, clock=...)``, the failed-key
throttle, key pools, token caches, permission checks) and moving it past the boundary,
never by ``time.sleep`` past it: a sleep makes the test slow, and on a busy machine
whatever must happen *before* the boundary may not.
"""

from __future__ import annotations

import time


class FakeClock:
    """Seconds that move only when told to: ``clock()`` reads, :meth:`advance` moves.

    Starts at ``start`` (default: now on the monotonic clock, so a clock swapped into a
    running component does not go backwards). Reading it from another thread (a gateway
    in a thread) is safe: it is one float.
    """

    def __init__(self, start: float | None = None) -> None:
        self.now = time.monotonic() if start is None else float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds``; returns the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self.now += seconds
        return self.now


__all__ = ["FakeClock"]

"""Retry timing (exponential backoff with full jitter) and the retry budget.

Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter") spreads the
retries of many clients over the whole backoff interval, so a failing upstream is
not hit by synchronised waves. The budget (as in Finagle and gRPC's retry throttling)
caps retries to a share of each deployment's requests, so during an outage retries
cannot multiply the load on the deployment that is already failing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def backoff_delay(retry_number: int, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry ``retry_number`` (1 for the first retry).

    Uniform in ``[0, min(cap, base * 2 ** (retry_number - 1))]``.
    """
    ceiling = min(cap, base * 2.0 ** max(0, retry_number - 1))
    return ceiling * rng()


def retry_after_delay(retry_after: float, base: float, rng: Callable[[], float] = random.random) -> float:
    """Wait what the provider asked, plus a little jitter so waiting clients spread out."""
    return retry_after + min(base, retry_after * 0.1 + 0.01) * rng()


@dataclass(slots=True)
class _Ledger:
    """Request and retry counts of one deployment in ``slots`` time buckets."""

    epochs: list[int]
    requests: list[int]
    retries: list[int]


@dataclass(slots=True)
class RetryBudget:
    """Retries per deployment may be at most ``min_retries + ratio * requests`` over ``window``.

    Counts live in ``slots`` buckets of ``window / slots`` seconds, so the window slides
    in small steps and memory stays constant. Local to the process: the budget is a
    proportion, so each replica limiting its own retries limits the whole fleet's.
    """

    ratio: float = 0.2
    window: float = 10.0
    min_retries: int = 3
    slots: int = 10
    clock: Callable[[], float] = time.monotonic
    _ledgers: dict[str, _Ledger] = field(default_factory=dict)

    def _bucket(self, key: str) -> tuple[_Ledger, int, int]:
        width = self.window / self.slots
        epoch = int(self.clock() / width)
        ledger = self._ledgers.get(key)
        if ledger is None:
            ledger = _Ledger([-1] * self.slots, [0] * self.slots, [0] * self.slots)
            self._ledgers[key] = ledger
        index = epoch % self.slots
        if ledger.epochs[index] != epoch:
            ledger.epochs[index] = epoch
            ledger.requests[index] = 0
            ledger.retries[index] = 0
        return ledger, index, epoch

    def _totals(self, ledger: _Ledger, epoch: int) -> tuple[int, int]:
        oldest = epoch - self.slots + 1
        requests = retries = 0
        for i in range(self.slots):
            if ledger.epochs[i] >= oldest:
                requests += ledger.requests[i]
                retries += ledger.retries[i]
        return requests, retries

    def note_request(self, key: str) -> None:
        """A first attempt was sent to deployment ``key``."""
        ledger, index, _ = self._bucket(key)
        ledger.requests[index] += 1

    def available(self, key: str) -> float:
        """Retries deployment ``key`` may still take in the current window."""
        ledger, _, epoch = self._bucket(key)
        requests, retries = self._totals(ledger, epoch)
        return self.min_retries + self.ratio * requests - retries

    def try_spend(self, key: str) -> bool:
        """Take one retry from ``key``'s budget; ``False`` if it is exhausted."""
        ledger, index, epoch = self._bucket(key)
        requests, retries = self._totals(ledger, epoch)
        if self.min_retries + self.ratio * requests - retries < 1:
            return False
        ledger.retries[index] += 1
        return True

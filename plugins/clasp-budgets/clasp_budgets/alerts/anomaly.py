"""Anomalies: a key, team or model whose spend or error rate this minute is far above
its own usual.

Per subject (``team=platform``), per minute: spend, requests, errors. When a minute
closes, it is compared with the subject's EWMA of earlier minutes (quiet minutes count
as zeros), then folded in. A minute is an anomaly when its spend is above
``factor`` x the EWMA *and* above ``min_spend_usd`` (the floor: a key that usually
spends nothing is not alarming at its first cent), or its error rate is above
``factor`` x the usual rate and ``min_error_rate``, with at least ``min_errors`` errors.
Nothing alerts before ``warmup_minutes`` of history. The clock is injected: tests move
it instead of waiting for minutes to pass.

Each process sees its own share of the traffic (a load balancer splits it evenly, so
ratios to the usual hold); the plugin dedups an anomaly across replicas with a
set-if-absent on the shared state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .settings import AnomalySettings

MAX_GAP = 120
"""Quiet minutes folded in one by one at most (beyond: the EWMA has decayed anyway)."""


@dataclass(slots=True)
class _Track:
    minute: int
    spend: float = 0.0
    requests: int = 0
    errors: int = 0
    ewma_spend: float = 0.0
    ewma_rate: float = 0.0
    history: int = 0


class AnomalyDetector:
    """Per-minute rates per subject against their EWMA."""

    def __init__(self, settings: AnomalySettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._per_dimension: dict[str, int] = {}

    def observe(self, subjects: dict[str, str | None], cost: float, error: bool) -> list[dict[str, Any]]:
        """Count one request for each of its subjects (``{"team": "platform", ...}``);
        returns the anomalies of minutes this closed."""
        minute = int(self.clock() // 60)
        found: list[dict[str, Any]] = []
        for dimension in self.settings.dimensions:
            value = subjects.get(dimension)
            if not value:
                continue
            track = self._tracks.get((dimension, value))
            if track is None:
                if self._per_dimension.get(dimension, 0) >= self.settings.max_subjects:
                    continue
                self._per_dimension[dimension] = self._per_dimension.get(dimension, 0) + 1
                track = self._tracks[(dimension, value)] = _Track(minute)
            elif track.minute != minute:
                found += self._close(dimension, value, track, minute)
            track.spend += cost
            track.requests += 1
            track.errors += int(error)
        return found

    def tick(self) -> list[dict[str, Any]]:
        """Close the minutes that ended without a request since (called periodically)."""
        minute = int(self.clock() // 60)
        found: list[dict[str, Any]] = []
        for (dimension, value), track in list(self._tracks.items()):
            if track.minute < minute:
                found += self._close(dimension, value, track, minute)
        return found

    def _close(self, dimension: str, value: str, track: _Track, minute: int) -> list[dict[str, Any]]:
        s = self.settings
        found: list[dict[str, Any]] = []
        rate = track.errors / track.requests if track.requests else 0.0
        if track.history >= s.warmup_minutes and track.requests:
            base = {"kind": "anomaly", "dimension": dimension, "subject": value, "minute": track.minute * 60}
            if track.spend > s.min_spend_usd and track.spend > s.factor * track.ewma_spend:
                found.append({**base, "metric": "spend_per_minute", "value": round(track.spend, 6),
                              "usual": round(track.ewma_spend, 6)})
            if track.errors >= s.min_errors and rate > s.min_error_rate and rate > s.factor * track.ewma_rate:
                found.append({**base, "metric": "error_rate", "value": round(rate, 4),
                              "usual": round(track.ewma_rate, 4), "errors": track.errors})
        gap = min(MAX_GAP, max(1, minute - track.minute))
        track.ewma_spend += s.alpha * (track.spend - track.ewma_spend)
        track.ewma_rate += s.alpha * (rate - track.ewma_rate)
        for _ in range(gap - 1):  # quiet minutes: zeros (the error rate keeps its usual)
            track.ewma_spend -= s.alpha * track.ewma_spend
        track.history += gap
        track.minute, track.spend, track.requests, track.errors = minute, 0.0, 0, 0
        return found

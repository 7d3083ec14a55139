"""Runaway agents: a key or user whose rate or spend per minute leaves its own pattern.

Per subject (``key:<id>``, ``user:<name>``) and per minute, requests and spend are
counted in the shared state (``incr`` on ``limits:rw:<subject>:<series>:<minute>``,
inside the admission and settlement scripts of :mod:`.admit`), so every replica sees
the deployment's totals. Each process keeps an EWMA of the subject's complete minutes
(from the totals it last saw) and compares the last 60 seconds (the previous minute's
share plus this one, as the sliding window does) with ``max(floor, multiplier x EWMA)``.
A new subject starts with an EWMA of 0: its floor alone applies until it has a history.

A flag raises one alert per episode across replicas (``set(..., if_absent=True)`` on
``limits:rw:flag:<subject>``, lasting ``episode`` seconds; the counting scripts say
whether that flag exists, so a subject flagged again within its episode costs no extra
operation) and, with ``pause: true``, stores a pause every replica honours until it
expires or an admin lifts it (the admission script checks it before counting anything).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .settings import RunawaySettings

USD_UNIT = 1_000_000
"""Spend is counted in micro-dollars (``incr`` takes integers)."""

MAX_SUBJECTS = 50_000
"""Patterns kept per process (the least recently seen go first): memory stays bounded."""


@dataclass(slots=True)
class Series:
    """One subject's one series (requests or spend) as this process last saw it."""

    minute: int = -1
    current: float = 0.0
    """This minute's shared total (as of our last observation)."""
    previous: float = 0.0
    """The previous minute's total."""
    ewma: float = 0.0
    history: int = 0
    """Complete minutes folded into ``ewma``."""
    threshold: float = 0.0
    """The rate that flags this minute: ``max(floor, multiplier x ewma)``."""

    def observe(self, minute: int, total: float, alpha: float) -> None:
        """Fold complete minutes into the EWMA, then take ``total`` as this minute's."""
        if minute > self.minute >= 0:
            gap = minute - self.minute
            self.ewma = alpha * self.current + (1 - alpha) * self.ewma  # the minute that ended
            self.history += 1
            if gap > 1:  # quiet minutes count as zero
                self.ewma *= (1 - alpha) ** (gap - 1)
                self.history += gap - 1
            self.previous = self.current if gap == 1 else 0.0
            self.current = 0.0
        elif self.minute < 0:
            self.previous = 0.0
        if minute >= self.minute:
            self.minute = minute
            self.current = max(self.current, total)

    def last_minute(self, fraction: float) -> float:
        """The sliding estimate of the last 60 s (``fraction``: how far into this minute)."""
        return self.previous * (1 - fraction) + self.current


@dataclass(slots=True, frozen=True)
class Flag:
    """Why a subject was flagged."""

    subject: str
    series: str
    """``requests`` or ``spend``."""
    rate: float
    usual: float
    threshold: float

    def describe(self) -> str:
        if self.series == "requests":
            return (f"{self.rate:.0f} requests in the last minute, usually {self.usual:.1f}/min "
                    f"(threshold {self.threshold:.0f})")
        return (f"${self.rate:.2f} spent in the last minute, usually ${self.usual:.2f}/min "
                f"(threshold ${self.threshold:.2f})")


class Detector:
    """The per-process patterns and the flag rule (no I/O: the runtime counts)."""

    def __init__(self, settings: RunawaySettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.clock = clock
        self.patterns: dict[tuple[str, str], Series] = {}

    def minute(self, now: float | None = None) -> tuple[int, float]:
        """This minute's number and how far into it we are (0..1), at ``now`` (default:
        the clock's)."""
        if now is None:
            now = self.clock()
        minute = math.floor(now / 60)
        return minute, (now - minute * 60) / 60

    def observe(self, subject: str, series: str, minute: int, fraction: float, total: float,
                alerted: bool = False) -> Flag | None:
        """Take ``total`` (the shared count of ``series`` this minute); a :class:`Flag` when
        the last 60 s are far above the subject's usual, unless it has ``alerted`` already
        (its episode lasts).

        The EWMA and the threshold change only when the minute turns; within a minute an
        observation is a ``max`` and a comparison."""
        pattern = self.patterns.get((subject, series))
        if pattern is None or pattern.minute != minute:
            pattern = self._turn(subject, series, pattern, minute, total)
        elif total > pattern.current:
            pattern.current = total
        rate = pattern.previous * (1 - fraction) + pattern.current
        if rate > pattern.threshold and not alerted:
            scale = 1 if series == "requests" else USD_UNIT
            return Flag(subject, series, rate / scale, pattern.ewma / scale, pattern.threshold / scale)
        return None

    def _turn(self, subject: str, series: str, pattern: Series | None, minute: int, total: float) -> Series:
        """A subject's first observation in a minute: fold the minutes that ended, set the
        threshold, and make it the most recently seen (the least recently seen go first
        when the patterns are full)."""
        key = (subject, series)
        if pattern is None:
            pattern = Series()
            if len(self.patterns) >= MAX_SUBJECTS:
                del self.patterns[next(iter(self.patterns))]
        else:
            del self.patterns[key]
        self.patterns[key] = pattern
        pattern.observe(minute, total, self.settings.alpha)
        floor = self.settings.floor_rpm if series == "requests" else self.settings.floor_usd_per_minute * USD_UNIT
        pattern.threshold = max(floor, self.settings.multiplier * pattern.ewma)
        return pattern

"""What this replica observed of each deployment: latency, errors, probes, checks.

Feeds the ``balanced`` strategy (recent latency and error rate) and the status page.
Exponentially weighted averages keep it O(1) per attempt. Error texts are redacted
and shortened before they are kept: they are shown on ``/health/providers``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from clasp_gateway import redact

ALPHA = 0.2
"""Weight of the newest observation in the moving averages (~ the last 10 attempts)."""

MAX_ERROR_TEXT = 240


# Where an upstream lives is not a secret, but a status page (possibly public, see
# ``health.public``) has no business showing internal addresses either.
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"()\[\]]+", re.IGNORECASE)
_HOST_PORT = re.compile(r"\bhost [\w.-]+:\d+")
_IP = re.compile(r"\(?'?\b\d{1,3}(?:\.\d{1,3}){3}'?(?:(?::|, )\d+)?\)?")


def safe_error_text(message: str) -> str:
    """An error message fit for a status page: secrets and addresses removed, one line,
    bounded."""
    text = redact(message)
    text = _URL.sub("<url>", text)
    text = _HOST_PORT.sub("host <upstream>", text)
    text = _IP.sub("<address>", text)
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"


@dataclass(slots=True)
class CheckResult:
    """The last active health check of one deployment."""

    ok: bool
    verdict: str
    ms: float
    at: float
    """Wall-clock time (``time.time()``)."""
    method: str


@dataclass(slots=True)
class DeploymentStats:
    """Moving averages and counters for one deployment."""

    ttfb_ms: float | None = None
    """Average time to first byte of successful attempts."""
    error_rate: float = 0.0
    """Moving average of failures (1) and successes (0) that count against the deployment."""
    attempts: int = 0
    failures: int = 0
    probes: int = 0
    """Attempts that were the half-open probe of an open breaker."""
    skipped: int = 0
    """Requests that skipped this deployment because its breaker was open."""
    limited: int = 0
    """Requests that skipped it because one of its own ``limits:`` was reached."""
    retries: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None
    check: CheckResult | None = None


@dataclass(slots=True)
class Stats:
    """Per-deployment statistics, keyed by deployment id."""

    deployments: dict[str, DeploymentStats] = field(default_factory=dict)

    def of(self, key: str) -> DeploymentStats:
        stats = self.deployments.get(key)
        if stats is None:
            stats = self.deployments[key] = DeploymentStats()
        return stats

    def attempt_ended(self, key: str, *, ok: bool, counts: bool, ttfb: float | None, error: str | None) -> None:
        """Record an attempt; ``counts`` is False for failures that are the request's fault."""
        s = self.of(key)
        s.attempts += 1
        if ok and ttfb is not None:
            ms = ttfb * 1000
            s.ttfb_ms = ms if s.ttfb_ms is None else s.ttfb_ms + ALPHA * (ms - s.ttfb_ms)
        if counts:
            s.error_rate += ALPHA * ((0.0 if ok else 1.0) - s.error_rate)
        if ok:
            s.last_success_at = time.time()
        else:
            s.failures += 1
            if error:
                s.last_error = safe_error_text(error)
                s.last_error_at = time.time()

"""What a shared backend does when its store fails: tell the caller, log once, pause.

Every request would otherwise log the same failure and wait for the same timeout, so:
the first failure is logged (once per outage) and raised as :class:`StateUnavailable`;
for ``retry_after`` seconds afterwards calls fail fast without touching the store; then
the next call tries again, and its success logs the recovery. Callers catch
:class:`StateUnavailable` and apply their own policy (local state, fail open...).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("clasp.state")

RETRY_AFTER = 2.0
"""Seconds a failed store is left alone before the next call tries it again."""


class StateUnavailable(Exception):
    """The shared state cannot be used now (outage, or the backend is closed).

    Raised by every :class:`~clasp_gateway.state.StateBackend` operation of a shared
    backend; the message names the store (never its password) and the reason.
    """


def safe_url(url: str) -> str:
    """``url`` without its password, for logs and status pages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


class Outage:
    """Outage bookkeeping for one store (``label`` at ``url``, both safe to log)."""

    def __init__(self, label: str, url: str, *, retry_after: float = RETRY_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.url = url
        self.retry_after = retry_after
        self.clock = clock
        """Seconds for the pause after a failure (tests move a fake one instead of sleeping)."""
        self.since: float | None = None
        """When the current outage began (monotonic), or None."""
        self._retry_at = 0.0
        self._reason = ""

    @property
    def down(self) -> bool:
        """True from a failure until the next successful call."""
        return self.since is not None

    def check(self) -> None:
        """Before a call: raise at once while the store is left alone after a failure."""
        if self.since is not None and self.clock() < self._retry_at:
            raise StateUnavailable(f"{self.label} at {self.url} is unavailable ({self._reason}); "
                                   f"retrying in {self._retry_at - self.clock():.1f}s")

    def failed(self, exc: BaseException, what: str) -> StateUnavailable:
        """A call failed: log it if this starts an outage; the exception to raise."""
        now = self.clock()
        self._reason = f"{type(exc).__name__}: {str(exc)[:200]}"
        if self.since is None:
            # Once per outage: every request would otherwise log the same thing.
            log.error(
                "%s at %s failed (%s) while %s; shared state is unavailable, callers use their local "
                "fallback until it answers again (retrying every %.0fs)",
                self.label, self.url, self._reason, what, self.retry_after,
            )
            self.since = now
        self._retry_at = now + self.retry_after
        return StateUnavailable(f"{self.label} at {self.url} failed while {what} ({self._reason})")

    def succeeded(self) -> None:
        """A call succeeded: end the outage (logged) if there was one."""
        if self.since is not None:
            log.warning("%s at %s is reachable again after %.1fs: state is shared again",
                        self.label, self.url, self.clock() - self.since)
            self.since = None

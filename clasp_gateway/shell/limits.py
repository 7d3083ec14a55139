"""Bounds on what one request may ask of the gateway, and a log that says when one is hit.

The HTTP-level limits (header size, timeouts, connections) live in ``server.py`` and
the failed-key throttle in ``guard.py``; this module holds what the routes of both
APIs check once a body is parsed, so the rule and its wording are the same on both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..errors import InvalidRequestError

__all__ = ["MAX_OUTPUT_TOKENS", "LimitLog", "check_message_count"]

MAX_OUTPUT_TOKENS = 1_000_000
"""The largest ``max_tokens`` accepted. No model writes more in one answer; a larger
value is a mistake or a probe (2^62 was once forwarded as is to a model the catalogue
did not know). Below it, the value is clamped to the deployment's output limit, since
Claude Code asks for 32k-128k on purpose."""


def check_message_count(body: Any, limit: int) -> None:
    """Refuse (400) a body with more than ``limit`` messages, before any work is done
    on them: the cost of translating, counting and trimming grows with the count."""
    if isinstance(body, dict):
        messages = body.get("messages")
        if isinstance(messages, list) and len(messages) > limit:
            raise InvalidRequestError(
                f"messages: {len(messages)} messages; this gateway accepts at most {limit} per request "
                "(server.max_messages)"
            )


class LimitLog:
    """Log that a limit was hit, at most once per ``interval`` seconds per kind, with
    how many times it was hit since the last line. An attack then costs a few log
    lines, not one per refused connection; the first hit is always logged."""

    __slots__ = ("_clock", "_interval", "_last", "_counts", "_logger")

    def __init__(
        self, logger: logging.Logger, interval: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def hit(self, kind: str, detail: str) -> bool:
        """Count one hit of limit ``kind`` (a fixed name: the table stays small);
        returns whether a line was logged."""
        count = self._counts.get(kind, 0) + 1
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._counts[kind] = count
            return False
        self._counts[kind] = 0
        self._last[kind] = now
        self._logger.warning("limit hit: %s: %s (%d time(s) since the last report)", kind, detail, count)
        return True

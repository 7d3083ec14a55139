"""Provider rate-limit headers, parsed into one structure.

Every provider reports its limits differently; the key pool
(:mod:`clasp_gateway.wire.credentials`) only needs to know, per API key, how many
requests and tokens are left and when they come back. :func:`parse_rate_limits`
reads every known header family into one :class:`RateLimitState`:

============================  =========================================================  ==========================
provider                      headers                                                    reset format
============================  =========================================================  ==========================
OpenAI, Groq, Together,       ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``  Go duration: ``1s``,
Fireworks, xAI, DeepSeek                                                                 ``6m0s``, ``2m59.56s``,
                                                                                         ``20ms``
Azure OpenAI                  ``x-ratelimit-remaining-{requests,tokens}`` (``-1`` means  seconds
                              unknown), ``retry-after-ms``, ``retry-after``
Anthropic                     ``anthropic-ratelimit-{requests,tokens,input-tokens,       RFC 3339 timestamp
                              output-tokens}-{limit,remaining,reset}``, ``retry-after``
Cerebras                      ``x-ratelimit-{limit,remaining,reset}-requests-day``,      seconds
                              ``x-ratelimit-{...}-tokens-minute``
Mistral (token-denominated)   ``ratelimitbysize-{limit,remaining,reset}``,               seconds
                              ``x-ratelimitbysize-{limit,remaining}-{minute,month}``
Cohere (trial keys)           ``x-trial-endpoint-call-{limit,remaining}``                (none: per minute)
OpenRouter, generic proxies   ``x-ratelimit-{limit,remaining,reset}``,                   seconds, epoch seconds
                              ``ratelimit-{limit,remaining,reset}`` (IETF draft)         or epoch milliseconds
any                           ``retry-after`` (seconds or HTTP date), ``retry-after-ms``
============================  =========================================================  ==========================

When a provider reports several windows of one kind (Anthropic's input and output
tokens, Mistral's minute and month), the state keeps the most constraining one:
the window with the fewest units left. Reset times become absolute
``time.monotonic()`` deadlines so they stay right however long the state is kept.
"""

from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

__all__ = ["RateLimitState", "parse_duration", "parse_rate_limits"]

UNTIMED_WINDOW = 60.0
"""Seconds a window without a reset time (Cohere, Mistral's per-minute counters) is
trusted after it was observed: after that its count is considered replenished."""

_Kind = Literal["requests", "tokens"]

# (kind, limit header, remaining header, reset header or None)
_WINDOWS: tuple[tuple[_Kind, str, str, str | None], ...] = (
    # OpenAI and everything that copies it (Azure, Groq, Together, Fireworks, xAI...)
    ("requests", "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
    ("tokens", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    # Anthropic: "tokens" is the most restrictive of input/output, which also come separately
    ("requests", "anthropic-ratelimit-requests-limit", "anthropic-ratelimit-requests-remaining",
     "anthropic-ratelimit-requests-reset"),
    ("tokens", "anthropic-ratelimit-tokens-limit", "anthropic-ratelimit-tokens-remaining",
     "anthropic-ratelimit-tokens-reset"),
    ("tokens", "anthropic-ratelimit-input-tokens-limit", "anthropic-ratelimit-input-tokens-remaining",
     "anthropic-ratelimit-input-tokens-reset"),
    ("tokens", "anthropic-ratelimit-output-tokens-limit", "anthropic-ratelimit-output-tokens-remaining",
     "anthropic-ratelimit-output-tokens-reset"),
    # Cerebras: requests per day, tokens per minute
    ("requests", "x-ratelimit-limit-requests-day", "x-ratelimit-remaining-requests-day",
     "x-ratelimit-reset-requests-day"),
    ("tokens", "x-ratelimit-limit-tokens-minute", "x-ratelimit-remaining-tokens-minute",
     "x-ratelimit-reset-tokens-minute"),
    # Mistral counts tokens ("by size"); the unsuffixed family carries the reset
    ("tokens", "ratelimitbysize-limit", "ratelimitbysize-remaining", "ratelimitbysize-reset"),
    ("tokens", "x-ratelimitbysize-limit-minute", "x-ratelimitbysize-remaining-minute", "ratelimitbysize-reset"),
    ("tokens", "x-ratelimitbysize-limit-month", "x-ratelimitbysize-remaining-month", None),
    # Cohere trial keys: calls per minute, no reset header
    ("requests", "x-trial-endpoint-call-limit", "x-trial-endpoint-call-remaining", None),
    # OpenRouter and generic proxies; the IETF draft's RateLimit-* fields
    ("requests", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"),
    ("requests", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"),
)

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_LEADING_INT = re.compile(r"\s*(-?\d+)")


@dataclass(slots=True)
class RateLimitState:
    """What a provider said about one API key's limits in one response.

    Counts are ``None`` when the provider did not say (or said ``-1``, as Azure
    does for "unknown"). ``*_reset_at`` and :attr:`retry_at` are
    ``time.monotonic()`` deadlines. ``retry_after`` is the wait the provider asked
    for, in seconds from :attr:`observed_at`.
    """

    requests_limit: int | None = None
    requests_remaining: int | None = None
    requests_reset_at: float | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset_at: float | None = None
    retry_after: float | None = None
    observed_at: float = 0.0

    @property
    def retry_at(self) -> float | None:
        """The deadline ``retry-after`` asked for, or ``None``."""
        return None if self.retry_after is None else self.observed_at + self.retry_after

    @property
    def empty(self) -> bool:
        """True when the response carried no rate-limit information at all."""
        return (
            self.requests_remaining is None and self.tokens_remaining is None
            and self.requests_limit is None and self.tokens_limit is None and self.retry_after is None
        )

    def remaining(self, kind: _Kind, now: float) -> int | None:
        """Units of ``kind`` left at ``now``; ``None`` once the window has reset
        (or the count is unknown), since the provider then refilled it."""
        if kind == "requests":
            count, reset = self.requests_remaining, self.requests_reset_at
        else:
            count, reset = self.tokens_remaining, self.tokens_reset_at
        if count is None:
            return None
        if reset is None:
            reset = self.observed_at + UNTIMED_WINDOW
        return count if now < reset else None

    def wait(self, now: float | None = None) -> float | None:
        """Seconds until a request may succeed again: ``retry-after`` when given,
        else the latest reset among the exhausted windows, else ``None``."""
        now = time.monotonic() if now is None else now
        if self.retry_after is not None:
            return max(0.0, self.observed_at + self.retry_after - now)
        waits: list[float] = []
        for count, reset in ((self.requests_remaining, self.requests_reset_at),
                             (self.tokens_remaining, self.tokens_reset_at)):
            if count is not None and count <= 0 and reset is not None:
                waits.append(max(0.0, reset - now))
        return max(waits) if waits else None

    def consume(self, requests: int = 1, tokens: int = 0) -> None:
        """Account locally for a request sent since the headers were read, so
        concurrent requests do not all pick the key with 1 request left."""
        if self.requests_remaining is not None:
            self.requests_remaining -= requests
        if self.tokens_remaining is not None and tokens:
            self.tokens_remaining -= tokens


def parse_duration(text: str) -> float | None:
    """A Go-style duration (``"1s"``, ``"6m0s"``, ``"2m59.56s"``, ``"20ms"``,
    ``"1h2m3s"``) in seconds, or ``None`` if ``text`` is not one."""
    text = text.strip()
    # Fast paths for the usual shapes ("20ms", "1s", "7.66s"): this runs per response.
    if text.endswith("ms") and text[:-2].replace(".", "", 1).isdigit():
        return float(text[:-2]) / 1000
    if text.endswith("s") and text[:-1].replace(".", "", 1).isdigit():
        return float(text[:-1])
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def _count(raw: str | None) -> int | None:
    """A count header; ``-1`` and garbage mean unknown. ``"100, 100;window=60"``
    (IETF draft lists) gives the first, governing value."""
    if raw is None:
        return None
    if raw.isdigit():
        return int(raw)
    match = _LEADING_INT.match(raw)
    if match is None:
        return None
    value = int(match.group(1))
    return value if value >= 0 else None


def _reset_deadline(raw: str | None, now: float, wall: float) -> float | None:
    """A reset header as a monotonic deadline. Accepts durations (``6m0s``),
    seconds from now, epoch seconds or milliseconds, RFC 3339 and HTTP dates."""
    if raw is None:
        return None
    text = raw.strip()
    if not text:
        return None
    number: float | None = None
    if not text[-1].isalpha():  # "6m0s", "20ms", dates ending in "Z"/"GMT" skip the float attempt
        try:
            number = float(text)
        except ValueError:
            pass
    if number is not None:
        if number < 0:
            return None
        if number > 1e12:  # epoch milliseconds (OpenRouter)
            return now + max(0.0, number / 1000 - wall)
        if number > 1e9:  # epoch seconds
            return now + max(0.0, number - wall)
        return now + number
    seconds = parse_duration(text)
    if seconds is not None:
        return now + seconds
    when = _timestamp(text)
    if when is not None:
        return now + max(0.0, when - wall)
    return None


def _timestamp(text: str) -> float | None:
    """Epoch seconds of an RFC 3339 timestamp or an HTTP date."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00")).timestamp()
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _retry_after(get: Any, wall: float) -> float | None:
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        raw = get(name)
        if raw:
            try:
                return max(0.0, float(raw) / 1000)
            except ValueError:
                pass
    raw = get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    when = _timestamp(raw.strip())
    return None if when is None else max(0.0, when - wall)


def parse_rate_limits(headers: Any, *, now: float | None = None, wall: float | None = None) -> RateLimitState:
    """Read every known rate-limit header of a response into one state.

    ``headers`` is any mapping; names are matched case-insensitively. ``now``
    (``time.monotonic()``) and ``wall`` (``time.time()``) can be fixed for tests.
    Never raises: a header it cannot read is ignored.
    """
    # One pass over the response's headers keeps only the candidates (usually a
    # handful), so the table lookups below hit a small dict: this runs per response.
    found: dict[str, str] = {}
    for name, value in (headers or {}).items():
        lowered = name.lower()
        if "rate" in lowered or "retry" in lowered or "trial" in lowered:
            found[lowered] = value
    now = time.monotonic() if now is None else now
    if not found:
        return RateLimitState(observed_at=now)
    get = found.get
    wall = time.time() if wall is None else wall
    state = RateLimitState(observed_at=now, retry_after=_retry_after(get, wall))
    for kind, limit_name, remaining_name, reset_name in _WINDOWS:
        if remaining_name not in found and limit_name not in found:
            continue
        remaining = _count(get(remaining_name))
        limit = _count(get(limit_name))
        if remaining is None and limit is None:
            continue
        reset = _reset_deadline(get(reset_name), now, wall) if reset_name else None
        if kind == "requests":
            current = state.requests_remaining
            if current is None or (remaining is not None and remaining < current):
                state.requests_remaining = remaining
                state.requests_limit = limit if limit is not None else state.requests_limit
                state.requests_reset_at = reset
            elif state.requests_limit is None:
                state.requests_limit = limit
        else:
            current = state.tokens_remaining
            if current is None or (remaining is not None and remaining < current):
                state.tokens_remaining = remaining
                state.tokens_limit = limit if limit is not None else state.tokens_limit
                state.tokens_reset_at = reset
            elif state.tokens_limit is None:
                state.tokens_limit = limit
    return state

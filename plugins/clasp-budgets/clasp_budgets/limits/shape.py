"""A limit hit as the client's API says it (429, ``retry-after``), and the headers that
tell a client its headroom on every answer.

Anthropic routes get ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}``
(reset as RFC 3339, like Anthropic's API); OpenAI routes get
``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (reset as ``"12s"``/``"1m30s"``,
like OpenAI's). The body is the route's error shape: Anthropic ``rate_limit_error``,
OpenAI ``code: rate_limit_exceeded``.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple

from clasp_gateway import RateLimitError

TOKEN_KINDS = frozenset({"tpm", "tpd"})


class Headroom(NamedTuple):
    """One limit's state after a refusal."""

    kind: str
    """``rpm``, ``rpd``, ``tpm`` or ``tpd``."""
    limit: float
    remaining: float
    reset: float
    """Seconds until the window frees (a refusal) or rolls over (an admission)."""


class LimitExceeded(RateLimitError):
    """A 429 a limit (or a runaway pause) refused; never reaches upstream."""

    def __init__(self, message: str, *, kind: str, headers: dict[str, str]) -> None:
        super().__init__(message, headers=headers, retryable=False)
        self.kind = kind

    def openai_body(self) -> dict[str, Any]:
        body = super().openai_body()
        body["error"]["type"] = "tokens" if self.kind in TOKEN_KINDS else "requests"
        body["error"]["code"] = "rate_limit_exceeded"
        return body


def _openai_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{math.ceil(seconds * 1000) / 1000:g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{rest}s"


_NAMES = {
    api: {noun: ((f"x-ratelimit-limit-{noun}", f"x-ratelimit-remaining-{noun}", f"x-ratelimit-reset-{noun}")
                 if api == "openai" else
                 (f"anthropic-ratelimit-{noun}-limit", f"anthropic-ratelimit-{noun}-remaining",
                  f"anthropic-ratelimit-{noun}-reset"))
          for noun in ("requests", "tokens")}
    for api in ("openai", "anthropic")
}
"""The header names of each API, per noun: limit, remaining, reset."""


@lru_cache(maxsize=256)
def _rfc3339(at: float) -> str:
    """``at`` (Unix time) as Anthropic's reset texts (an admission's is its window's end,
    the same for every request of that window: cached)."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def window_headers(out: dict[str, str], api: str, noun: str, limit: str, remaining: float, length: float,
                   wall: float) -> None:
    """Add to ``out`` the ``noun`` (``requests`` or ``tokens``) headers of ``api`` for a
    window of ``length`` seconds that admitted a request at ``wall`` (Unix time):
    ``limit`` (its text), what remains, and when the window rolls over."""
    limit_name, remaining_name, reset_name = _NAMES["openai" if api == "openai" else "anthropic"][noun]
    out[limit_name] = limit
    out[remaining_name] = str(int(remaining)) if remaining > 0 else "0"
    reset = length - wall % length
    out[reset_name] = _openai_duration(reset) if api == "openai" else _rfc3339(wall + reset)


def headroom_headers(api: str, requests: Headroom | None, tokens: Headroom | None,
                     now: float | None = None) -> dict[str, str]:
    """The ratelimit headers of ``api`` (``anthropic`` or ``openai``) for the tightest
    request and token limits (``None``: that kind has no limit)."""
    out: dict[str, str] = {}
    wall = time.time() if now is None else now
    openai = api == "openai"
    names = _NAMES["openai" if openai else "anthropic"]
    for noun, room in (("requests", requests), ("tokens", tokens)):
        if room is None:
            continue
        limit_name, remaining_name, reset_name = names[noun]
        out[limit_name] = str(int(room.limit))
        out[remaining_name] = str(max(0, int(room.remaining)))
        out[reset_name] = (_openai_duration(room.reset) if openai
                           else _rfc3339(wall + max(0.0, room.reset)))
    return out


def tightest(rooms: list[Headroom], kinds: frozenset[str]) -> Headroom | None:
    """The limit of ``kinds`` with the least remaining (ties: the shorter window's)."""
    best: Headroom | None = None
    for room in rooms:
        if room.kind in kinds and (best is None or room.remaining < best.remaining):
            best = room
    return best


def refusal(api: str, message: str, room: Headroom, rooms: list[Headroom]) -> LimitExceeded:
    """The 429 for a refused ``room``: ``retry-after`` in whole seconds (at least 1)."""
    headers = headroom_headers(
        api,
        room if room.kind not in TOKEN_KINDS else tightest(rooms, frozenset({"rpm", "rpd"})),
        room if room.kind in TOKEN_KINDS else tightest(rooms, TOKEN_KINDS),
    )
    headers["retry-after"] = str(max(1, math.ceil(room.reset)))
    return LimitExceeded(message, kind=room.kind, headers=headers)

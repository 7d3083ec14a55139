"""Quality signals read from what the gateway sees of an answer.

Per request, without asking anyone:

- ``error``: the request failed (status >= 400, or a stream cut mid-way);
- ``truncated``: the answer stopped at its token limit (``finish_reason: "length"``);
- ``invalid_tool_json``: a tool call whose arguments are not a JSON object (the client's
  agent then fails on it);
- ``retried``: the same conversation (same key, same messages) was sent again within
  ``analytics.quality.retry_window``: the user did not take the first answer.

The last is found by a conversation fingerprint (a hash of the key, the user and the
canonical messages and system prompt) kept in the gateway's shared state for the window,
so a retry that another worker or replica serves is still seen: one state operation per
request (:data:`SWAP_TURN`: note this request, answer the earlier one). With the memory
state, which only this process sees anyway, the fingerprints are kept by
:class:`RecentTurns` instead, the same thing without an awaited call per request. The
later request records ``retry_of`` (the earlier request's id); reports count the earlier
one as retried. Answers are read chunk by chunk (:class:`StreamInspector`, a few dict
lookups per chunk that is not plain text): streams as they go out, whole answers
through the chunks they are made of (the core hands both to ``on_stream_chunk``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from clasp_gateway import (
    CanonicalRequest,
    Chunk,
    RequestContext,
    Script,
    ScriptTx,
    hookimpl,
    invalid_tool_arguments,
    note_tool_arguments,
    request_fingerprint,
    skips_text_deltas,
)

STATE_KEY = "analytics.quality"
FINGERPRINT_PREFIX = "analytics:fp:"


@dataclass(slots=True)
class AnswerSeen:
    """What the stream showed of one answer (kept in ``ctx.state``)."""

    fingerprint: str | None = None
    finish_reason: str | None = None
    tool_args: dict[int, list[str]] = field(default_factory=dict)
    """Argument fragments per tool-call index, joined and parsed once at the end."""
    retry_of: str | None = None


def fingerprint(ctx: RequestContext, request: CanonicalRequest) -> str | None:
    """The conversation as sent: who (key, user) and what (the messages, system prompt
    included). Two requests with the same fingerprint are the same turn of the same
    conversation. The messages' digest is the core's (``request_fingerprint``, computed
    once per request: the ledger's prompt hash shares it); ``None`` when the request
    cannot be serialised."""
    found = request_fingerprint(ctx, request)
    if found is None:
        return None
    principal = ctx.principal
    return found.conversation(f"{principal.key_id if principal else ''}\x00{ctx.user or ''}")


def seen(ctx: RequestContext) -> AnswerSeen:
    """This request's record (created on first use)."""
    record = ctx.state.get(STATE_KEY)
    if record is None:
        record = ctx.state[STATE_KEY] = AnswerSeen()
    return record  # type: ignore[no-any-return]


def _swap_turn(tx: ScriptTx, keys: list[str], args: Sequence[Any]) -> bytes | None:
    previous = tx.get(keys[0])
    tx.set(keys[0], str(args[0]), ttl=int(args[1]) / 1000)
    return previous


def _reply_bytes(reply: Any) -> bytes | None:
    if reply is None or isinstance(reply, bytes):
        return reply
    return str(reply).encode()


SWAP_TURN: Script[bytes | None] = Script(
    "analytics.swap_turn",
    "local previous = redis.call('GET', KEYS[1])\n"
    "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
    "return previous",
    _swap_turn,
    _reply_bytes,
)
"""A conversation turn was sent: keep this request's id under the fingerprint's key
for the window (args: request id, window in ms) and answer the id kept there before
(``None``: a new turn). One atomic operation, whatever the backend."""


class RecentTurns:
    """The conversation fingerprints of the last ``window`` seconds, in this process:
    what :data:`SWAP_TURN` keeps in a shared state, for a gateway whose state is memory
    (seen by this process only, like this). Entries expire in the order they were made
    (one window for all), so expiring is a pop from the front of a queue."""

    __slots__ = ("window", "clock", "_last", "_expiries")

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._last: dict[str, tuple[str, float]] = {}
        """fingerprint -> (the last request id, when it expires)."""
        self._expiries: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return len(self._last)

    def swap(self, fingerprint: str, request_id: str) -> str | None:
        """Note ``request_id`` for ``fingerprint``; the id noted before within the window."""
        now = self.clock()
        last, expiries = self._last, self._expiries
        while expiries and expiries[0][0] <= now:
            _, old = expiries.popleft()
            entry = last.get(old)
            if entry is not None and entry[1] <= now:  # (not renewed since)
                del last[old]
        previous = last.get(fingerprint)
        expires = now + self.window
        last[fingerprint] = (request_id, expires)
        expiries.append((expires, fingerprint))
        return previous[0] if previous is not None else None


class StreamInspector:
    """``on_stream_chunk``: the finish reason and tool-call arguments of an answer.

    Registered only when ``analytics.quality.inspect_streams`` is on, since the core
    skips the per-chunk hook entirely when nobody implements it."""

    @hookimpl
    @skips_text_deltas  # finish reasons and tool calls only: text deltas need not come here
    def on_stream_chunk(self, ctx: RequestContext, chunk: Chunk) -> None:
        choices = chunk.get("choices")
        if not choices:
            return
        choice = choices[0]
        delta = choice.get("delta")
        calls = delta.get("tool_calls") if delta else None
        reason = choice.get("finish_reason")
        if not calls and not reason:
            return
        record = seen(ctx)
        if calls:
            note_tool_arguments(calls, record.tool_args)
        if reason:
            record.finish_reason = reason


def invalid_tool_json(record: AnswerSeen) -> bool:
    """Whether a tool call's arguments, put together, are not a JSON object."""
    return invalid_tool_arguments(record.tool_args)


def signals_of(event: dict[str, Any], record: AnswerSeen | None) -> list[str]:
    """The quality signals of a finished request (``retried`` is the earlier request's:
    see the module docstring; the later one carries ``retry_of``)."""
    out: list[str] = []
    status = event.get("status") or 0
    if status >= 400 or event.get("cut"):
        out.append("error")
    if record is not None:
        if record.finish_reason == "length":
            out.append("truncated")
        if record.tool_args and invalid_tool_json(record):
            out.append("invalid_tool_json")
    return out

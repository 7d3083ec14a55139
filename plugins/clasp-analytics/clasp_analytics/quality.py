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
so a retry that another worker or replica serves is still seen. The later request
records ``retry_of`` (the earlier request's id); reports count the earlier one as retried.
Answers are read chunk by chunk (:class:`StreamInspector`, a few dict lookups per
chunk): streams as they go out, whole answers through the chunks they are made of (the
core hands both to ``on_stream_chunk``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clasp_gateway import (
    CanonicalRequest,
    Chunk,
    RequestContext,
    collect_tool_arguments,
    hookimpl,
    invalid_tool_arguments,
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
        if choice.get("finish_reason") is None and not (delta and delta.get("tool_calls")):
            return
        record = seen(ctx)
        reason = collect_tool_arguments(chunk, record.tool_args)
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

"""What the gateway knows about one provider family's stream (:class:`StreamSpec`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...types import Chunk


def text_chunk(text: str, key: str = "content") -> Chunk:
    """A canonical chunk carrying ``text`` (``key``: ``content`` or ``reasoning_content``)."""
    return {"choices": [{"index": 0, "delta": {key: text}, "finish_reason": None}]}


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """How one provider's stream is framed and ended."""

    framing: str = "sse"
    """"sse" or "ndjson"."""
    is_final: Callable[[dict[str, Any]], bool] | None = None
    """True for the event that carries the real finish reason. LiteLLM's parsers set
    a finish reason on other events too (Gemini: ``stop`` on every text chunk); it
    is kept only on the final event. ``None``: trust the parser."""
    adapt: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
    """Rewrites an event into what LiteLLM's parser expects (``None``: skip it)."""
    extra: Callable[[dict[str, Any]], Chunk | None] | None = None
    """A canonical chunk the gateway makes itself from an event LiteLLM ignores."""
    always_stream: bool = False
    """Stream even when the caller wants a whole answer (the gateway aggregates):
    for providers whose whole-answer parsing in LiteLLM is much costlier."""
    fast: Callable[[dict[str, Any], Any], Chunk | None] | None = None
    """Reads the commonest events (plain text deltas) without LiteLLM's parser
    (``fast(event, parser)``; ``None``: let LiteLLM read it)."""
    whole: Callable[[dict[str, Any], dict[str, Any]], None] | None = None
    """Completes a whole (non-streamed) answer from the raw JSON: ``whole(raw,
    completion)`` edits the ``chat.completion`` dict in place."""

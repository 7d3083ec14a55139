"""Anthropic Messages (for OpenAI-format clients): its stream, read fast where it can be.

(Anthropic clients are passed through untouched by clasp-claude instead.)"""

from __future__ import annotations

from typing import Any

from ...types import Chunk
from .spec import StreamSpec, text_chunk


def _anthropic_fast(event: dict[str, Any], parser: Any) -> Chunk | None:
    """Text and thinking deltas (the bulk of a stream) without LiteLLM's parser."""
    if event.get("type") != "content_block_delta":
        return None
    delta = event.get("delta") or {}
    kind = delta.get("type")
    if kind == "text_delta" and isinstance(delta.get("text"), str) and not getattr(parser, "json_mode", False):
        return text_chunk(delta["text"]) if delta["text"] else None
    if kind == "thinking_delta" and isinstance(delta.get("thinking"), str):
        return text_chunk(delta["thinking"], "reasoning_content") if delta["thinking"] else None
    return None


ANTHROPIC = StreamSpec(is_final=lambda e: e.get("type") == "message_delta", fast=_anthropic_fast)
"""Anthropic's stream: the real finish reason arrives in ``message_delta``."""

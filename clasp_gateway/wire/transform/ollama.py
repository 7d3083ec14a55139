"""Ollama's native chat API (NDJSON): its stream, read fast where it can be."""

from __future__ import annotations

from typing import Any

from ...types import Chunk
from .spec import StreamSpec, text_chunk


def _ollama_fast(event: dict[str, Any], parser: Any) -> Chunk | None:
    """A content or thinking line that is not the last, without LiteLLM's parser.
    LiteLLM turns ``<think>`` tags in content into reasoning and tracks that state,
    so content goes the fast way only while no reasoning has started."""
    if event.get("done") is not False:
        return None
    message = event.get("message")
    if not isinstance(message, dict) or message.get("tool_calls") or message.get("images"):
        return None
    thinking = message.get("thinking")
    content = message.get("content")
    if thinking:
        if content or not isinstance(thinking, str):
            return None
        parser.started_reasoning_content = True  # what LiteLLM's parser would record
        return text_chunk(thinking, "reasoning_content")
    if not isinstance(content, str) or not content or getattr(parser, "started_reasoning_content", True):
        return None
    if "<think>" in content or "</think>" in content:
        return None
    return text_chunk(content)


# LiteLLM's whole-answer parser for Ollama tokenizes the conversation on every
# call (an eagerly evaluated default: ~4 ms on 20 KB); its stream parser reads
# Ollama's own counts.
OLLAMA = StreamSpec(framing="ndjson", is_final=lambda e: e.get("done") is True, fast=_ollama_fast, always_stream=True)
"""Ollama's stream: NDJSON, ``done: true`` last, always streamed (the gateway aggregates)."""

"""Cohere (v2 chat): where LiteLLM's parser misses the real wire, and the fixes."""

from __future__ import annotations

from typing import Any

from ...types import Chunk
from .spec import StreamSpec


def _cohere_event(event: dict[str, Any]) -> dict[str, Any] | None:
    """Cohere v2 events as LiteLLM's parser reads them.

    LiteLLM (1.110) looks for ``message-end`` and ``tool-plan-delta`` under
    ``{"event": ..., "data": {...}}``, while the real API sends them type-keyed like
    every other event (``{"type": "message-end", "delta": {...}}``): unadapted, the
    finish reason and the usage would be lost. A tool plan (the model's reasoning
    before it calls tools) becomes reasoning, shown to Anthropic clients as thinking.
    """
    kind = event.get("type")
    if kind == "message-end":
        return {"event": "message-end", "data": {"delta": event.get("delta") or {}}}
    if kind == "tool-plan-delta":
        return None  # handled by _cohere_extra
    return event


def _cohere_extra(event: dict[str, Any]) -> Chunk | None:
    """Reasoning LiteLLM's Cohere parser drops: the tool plan, and the ``thinking``
    content of reasoning models (``{"content": {"thinking": "..."}}`` deltas)."""
    kind = event.get("type")
    message = (event.get("delta") or {}).get("message") or {}
    if kind == "tool-plan-delta":
        text = message.get("tool_plan")
    elif kind == "content-delta":
        content = message.get("content")
        text = content.get("thinking") if isinstance(content, dict) else None
    else:
        return None
    if not text or not isinstance(text, str):
        return None
    return {"choices": [{"index": 0, "delta": {"reasoning_content": text}, "finish_reason": None}]}


def _cohere_reasoning(raw: dict[str, Any], completion: dict[str, Any]) -> None:
    """The same reasoning for a whole answer (``transform_response`` drops it too)."""
    found = raw.get("message")
    message: dict[str, Any] = found if isinstance(found, dict) else {}
    parts = [c.get("thinking") for c in message.get("content") or () if isinstance(c, dict) and c.get("type") == "thinking"]
    if message.get("tool_plan"):
        parts.append(message["tool_plan"])
    text = "".join(p for p in parts if isinstance(p, str))
    if text and completion.get("choices"):
        completion["choices"][0]["message"]["reasoning_content"] = text


COHERE = StreamSpec(
    is_final=lambda e: e.get("type") == "message-end", adapt=_cohere_event, extra=_cohere_extra,
    whole=_cohere_reasoning,
)
"""Cohere's stream: ``message-end`` is the last event; tool plans and thinking are reasoning."""

"""Anthropic stream events -> one complete Anthropic message (non-streaming answers).

The core sends non-streaming upstream answers through the same
:class:`~clasp_claude.stream.StreamTranslator` (via ``completion_to_chunk``), then
folds the events here, so both response modes share one translation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .stream import parse_tool_input

__all__ = ["MessageBuilder"]


class MessageBuilder:
    """Accumulate ``(event, payload)`` pairs into the body Anthropic returns.

    Usage: ``b = MessageBuilder(); b.add(t.start()); b.add(t.feed(c)); b.add(t.finish());
    b.result()``. An ``error`` event is kept in :attr:`error` (the caller answers with
    an error instead of :meth:`result`).
    """

    __slots__ = ("_message", "_blocks", "_json", "error")

    def __init__(self) -> None:
        self._message: dict[str, Any] | None = None
        self._blocks: list[dict[str, Any]] = []
        self._json: dict[int, list[str]] = {}  # tool block index -> partial_json pieces
        self.error: dict[str, Any] | None = None
        """The ``error`` object of an error event, if one arrived."""

    def add(self, events: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Fold more events into the message."""
        for name, payload in events:
            if name == "content_block_delta":
                index = payload["index"]
                delta = payload["delta"]
                dtype = delta.get("type")
                block = self._blocks[index]
                if dtype == "text_delta":
                    block["text"] += delta["text"]
                elif dtype == "input_json_delta":
                    self._json.setdefault(index, []).append(delta["partial_json"])
                elif dtype == "thinking_delta":
                    block["thinking"] += delta["thinking"]
                elif dtype == "signature_delta":
                    block["signature"] = delta["signature"]
            elif name == "content_block_start":
                self._blocks.append(dict(payload["content_block"]))
            elif name == "message_start":
                message = dict(payload["message"])
                message["usage"] = dict(message.get("usage") or {})
                self._message = message
                self._blocks = []
                self._json = {}
            elif name == "message_delta":
                message = self._require()
                delta = payload.get("delta") or {}
                message["stop_reason"] = delta.get("stop_reason")
                message["stop_sequence"] = delta.get("stop_sequence")
                for key, value in (payload.get("usage") or {}).items():
                    if value is not None:
                        message["usage"][key] = value  # cumulative totals overwrite
            elif name == "error":
                self.error = payload.get("error") or {}

    def _require(self) -> dict[str, Any]:
        if self._message is None:
            raise RuntimeError("message_start must come first")
        return self._message

    def result(self) -> dict[str, Any]:
        """The complete message: ``{id, type, role, model, content, stop_reason,
        stop_sequence, usage}`` with tool inputs parsed into objects."""
        message = dict(self._require())
        content = []
        for index, block in enumerate(self._blocks):
            if block.get("type") == "tool_use":
                pieces = self._json.get(index)
                if pieces:
                    block = {**block, "input": parse_tool_input("".join(pieces))}
            content.append(block)
        message["content"] = content
        usage = message["usage"]
        message["usage"] = {
            "input_tokens": usage.get("input_tokens", 0),
            "output_tokens": usage.get("output_tokens", 0),
            "cache_read_input_tokens": usage.get("cache_read_input_tokens", 0),
            "cache_creation_input_tokens": usage.get("cache_creation_input_tokens", 0),
        }
        return message

"""A cached answer: collected from the canonical chunks a client was sent, stored as a
compact record, replayed as canonical chunks any route turns into its own stream.

Collecting is cheap on purpose: ``on_stream_chunk`` runs for every chunk, so the
collector only appends the chunk to a list; the answer is assembled once, when the
request has ended (:func:`assemble`), and only if it may be stored.

What is stored is API-neutral (text, reasoning, tool calls, finish reason, the usage
the provider reported), with the pieces the text and tool arguments came in, so a
replayed stream has the original's shape (as many deltas, the same boundaries), so a hit replays on the OpenAI route as an OpenAI stream or
``chat.completion``, and on ``/v1/messages`` through clasp-claude's translator as a
proper Anthropic stream or message (:func:`replay_chunks`). A replayed answer reports
zero usage: no tokens were spent upstream, and the ledger must record a cost of 0 (the
saving is ``ctx.saved_usd``); the ``x-clasp-cache`` header says it was a hit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from clasp_gateway import Chunk

__all__ = ["Answer", "assemble", "replay_chunks"]


@dataclass(slots=True)
class Answer:
    """The parts of one complete answer (text and arguments as the pieces they came in)."""

    content_parts: list[str] = field(default_factory=list)
    reasoning_parts: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """``{"id", "type", "function": {"name", "arguments"}, "parts": [argument pieces]}``."""
    finish_reason: str | None = None
    """What the provider said ended it; ``None`` when it never said (cut)."""
    refusal: str = ""
    usage: dict[str, Any] | None = None

    @property
    def content(self) -> str:
        return "".join(self.content_parts)

    @property
    def reasoning(self) -> str:
        return "".join(self.reasoning_parts)

    def encode(self) -> bytes:
        return orjson.dumps({
            "c": self.content_parts, "r": self.reasoning_parts, "t": self.tool_calls, "f": self.finish_reason,
            "x": self.refusal, "u": self.usage,
        })

    @classmethod
    def decode(cls, data: bytes) -> Answer:
        raw = orjson.loads(data)
        return cls(list(raw.get("c") or []), list(raw.get("r") or []), list(raw.get("t") or []), raw.get("f"),
                   raw.get("x") or "", raw.get("u"))


def assemble(chunks: list[Chunk]) -> Answer:
    """The answer ``chunks`` make (the first choice; tool call fragments joined by index)."""
    answer = Answer()
    text, reasoning = answer.content_parts, answer.reasoning_parts
    refusal: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        usage = chunk.get("usage")
        if usage:
            answer.usage = usage
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or choice.get("message") or {}
            if delta.get("content"):
                text.append(delta["content"])
            if delta.get("reasoning_content"):
                reasoning.append(delta["reasoning_content"])
            if delta.get("refusal"):
                refusal.append(delta["refusal"])
            for call in delta.get("tool_calls") or ():
                slot = calls.setdefault(int(call.get("index", len(calls))), {
                    "id": "", "type": "function", "function": {"name": "", "arguments": ""}, "parts": []})
                if call.get("id"):
                    slot["id"] = call["id"]
                fn = call.get("function") or {}
                if fn.get("name"):
                    slot["function"]["name"] += fn["name"]
                if fn.get("arguments"):
                    slot["function"]["arguments"] += fn["arguments"]
                    slot["parts"].append(fn["arguments"])
            if choice.get("finish_reason"):
                answer.finish_reason = choice["finish_reason"]
    answer.refusal = "".join(refusal)
    answer.tool_calls = [calls[i] for i in sorted(calls)]
    if answer.tool_calls and answer.finish_reason == "stop":
        answer.finish_reason = "tool_calls"
    return answer


def replay_chunks(answer: Answer, *, ident: str, model: str, created: int) -> list[Chunk]:
    """Canonical chunks that replay ``answer`` piece by piece: the role, reasoning, text,
    each tool call (its header, then its argument pieces), then the finish reason with
    zero usage (a hit spends nothing upstream)."""
    base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
    out: list[Chunk] = []

    def emit(delta: dict[str, Any]) -> None:
        out.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})

    emit({"role": "assistant", "content": ""})
    for piece in answer.reasoning_parts:
        emit({"reasoning_content": piece})
    for piece in answer.content_parts:
        emit({"content": piece})
    for i, call in enumerate(answer.tool_calls):
        fn = call.get("function") or {}
        parts = call.get("parts") or ([fn["arguments"]] if fn.get("arguments") else [])
        emit({"tool_calls": [{"index": i, "id": call.get("id") or f"call_cached_{i}", "type": "function",
                              "function": {"name": fn.get("name", ""), "arguments": ""}}]})
        for piece in parts:
            emit({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
    out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": answer.finish_reason or "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})
    return out

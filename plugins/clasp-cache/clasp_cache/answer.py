"""A cached answer: collected from the canonical chunks a client was sent, stored as a
compact record, replayed as canonical chunks any route turns into its own stream.

Collecting is cheap on purpose: ``on_stream_chunk`` runs for every chunk, so the
collector only appends the chunk to a list; the answer is assembled once, when the
request has ended (:func:`assemble`), and only if it may be stored.

What is stored is API-neutral (text, reasoning, tool calls, finish reason, the usage
the provider reported), so a hit replays on the OpenAI route as an OpenAI stream or
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
    """The parts of one complete answer."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    """What the provider said ended it; ``None`` when it never said (cut)."""
    refusal: str = ""
    usage: dict[str, Any] | None = None

    def encode(self) -> bytes:
        return orjson.dumps({
            "c": self.content, "r": self.reasoning, "t": self.tool_calls, "f": self.finish_reason,
            "x": self.refusal, "u": self.usage,
        })

    @classmethod
    def decode(cls, data: bytes) -> Answer:
        raw = orjson.loads(data)
        return cls(raw.get("c") or "", raw.get("r") or "", list(raw.get("t") or []), raw.get("f"),
                   raw.get("x") or "", raw.get("u"))


def assemble(chunks: list[Chunk]) -> Answer:
    """The answer ``chunks`` make (the first choice; tool call fragments joined by index)."""
    text: list[str] = []
    reasoning: list[str] = []
    refusal: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    answer = Answer()
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
                slot = calls.setdefault(int(call.get("index", len(calls))),
                                        {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
                if call.get("id"):
                    slot["id"] = call["id"]
                fn = call.get("function") or {}
                if fn.get("name"):
                    slot["function"]["name"] += fn["name"]
                if fn.get("arguments"):
                    slot["function"]["arguments"] += fn["arguments"]
            if choice.get("finish_reason"):
                answer.finish_reason = choice["finish_reason"]
    answer.content = "".join(text)
    answer.reasoning = "".join(reasoning)
    answer.refusal = "".join(refusal)
    answer.tool_calls = [calls[i] for i in sorted(calls)]
    if answer.tool_calls and answer.finish_reason == "stop":
        answer.finish_reason = "tool_calls"
    return answer


def replay_chunks(answer: Answer, *, ident: str, model: str, created: int) -> list[Chunk]:
    """Canonical chunks that replay ``answer``: role and reasoning, the text, each tool
    call, then the finish reason with zero usage (a hit spends nothing upstream)."""
    base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
    out: list[Chunk] = []

    def emit(delta: dict[str, Any]) -> None:
        out.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})

    first: dict[str, Any] = {"role": "assistant"}
    if answer.reasoning:
        first["reasoning_content"] = answer.reasoning
        emit(first)
        first = {}
    if answer.content or not answer.tool_calls:
        emit({**first, "content": answer.content})
        first = {}
    for i, call in enumerate(answer.tool_calls):
        emit({**first, "tool_calls": [{"index": i, "id": call.get("id") or f"call_cached_{i}", "type": "function",
                                       "function": {"name": call["function"]["name"],
                                                    "arguments": call["function"]["arguments"]}}]})
        first = {}
    out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": answer.finish_reason or "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})
    return out

"""Helpers on the canonical format (OpenAI chat completions and chunks)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from .types import Chunk


def completion_to_chunk(completion: dict[str, Any]) -> Chunk:
    """Turn a non-streaming ``chat.completion`` into one equivalent chunk.

    Every consumer reads chunks only, so a JSON answer (asked for, or sent by a
    provider that ignores ``stream: true``) takes the same path as a stream, with the
    same fidelity. A choice without ``finish_reason`` ended anyway: it gets "stop".
    """
    out_choices = []
    choices = completion.get("choices") if isinstance(completion, dict) else None
    for choice in choices or ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": "assistant"}
        if isinstance(message, dict):
            for key in ("content", "reasoning_content", "reasoning", "reasoning_details", "refusal", "function_call"):
                if message.get(key) is not None:
                    delta[key] = message[key]
            calls = message.get("tool_calls")
            if isinstance(calls, list) and calls:
                delta["tool_calls"] = [
                    {**call, "index": call.get("index", i)} for i, call in enumerate(calls) if isinstance(call, dict)
                ]
        out_choices.append(
            {"index": choice.get("index", 0), "delta": delta, "finish_reason": choice.get("finish_reason") or "stop"}
        )
    chunk: Chunk = {
        "id": completion.get("id", ""),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
        "choices": out_choices,
    }
    if completion.get("usage"):
        chunk["usage"] = completion["usage"]
    return chunk


def chunks_to_completion(chunks: Iterable[Chunk], model: str) -> dict[str, Any]:
    """Aggregate canonical chunks into a ``chat.completion`` (for OpenAI clients)."""
    text: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish: str | None = None
    usage: dict[str, Any] | None = None
    ident = ""
    for chunk in chunks:
        ident = ident or chunk.get("id") or ""
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                text.append(delta["content"])
            if delta.get("reasoning_content"):
                reasoning.append(delta["reasoning_content"])
            for call in delta.get("tool_calls") or ():
                slot = calls.setdefault(
                    int(call.get("index", len(calls))),
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                fn = call.get("function") or {}
                if fn.get("name"):
                    slot["function"]["name"] += fn["name"]
                if fn.get("arguments"):
                    slot["function"]["arguments"] += fn["arguments"]
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
        if finish == "stop":
            finish = "tool_calls"
    return {
        "id": ident or "chatcmpl-clasp",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish or "stop"}],
        "usage": usage
        or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def collect_tool_arguments(chunk: Chunk, into: dict[int, list[str]]) -> str | None:
    """Note a streamed chunk's tool-call argument fragments in ``into`` (by tool-call
    index) and return its ``finish_reason`` (or None). What a plugin watching answers
    (quality signals, routing outcomes) needs to judge the tool calls at the end with
    :func:`invalid_tool_arguments`."""
    choices = chunk.get("choices")
    if not choices:
        return None
    choice = choices[0]
    delta = choice.get("delta")
    if delta:
        calls = delta.get("tool_calls")
        if calls:
            note_tool_arguments(calls, into)
    reason: str | None = choice.get("finish_reason")
    return reason


def note_tool_arguments(calls: Sequence[Mapping[str, Any]], into: dict[int, list[str]]) -> None:
    """Note the argument fragments of a delta's ``tool_calls`` in ``into`` (by tool-call
    index): :func:`collect_tool_arguments` for a caller that has taken the chunk apart
    already (an ``on_stream_chunk`` that reads its finish reason itself)."""
    for call in calls:
        arguments = (call.get("function") or {}).get("arguments")
        if arguments:
            into.setdefault(call.get("index", 0), []).append(arguments)


def invalid_tool_arguments(tool_args: Mapping[int, Sequence[str]]) -> bool:
    """Whether any tool call's argument fragments, put together, are not a JSON object
    (a client cannot run such a call: a failure even when the answer looks complete)."""
    for parts in tool_args.values():
        try:
            value = orjson.loads("".join(parts))
        except orjson.JSONDecodeError:
            return True
        if not isinstance(value, dict):
            return True
    return False

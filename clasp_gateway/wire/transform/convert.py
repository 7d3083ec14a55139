"""LiteLLM's answer objects -> canonical dicts, by attribute reads (no pydantic
serialisation: ``model_dump`` per chunk is where LiteLLM's own streaming time goes)."""

from __future__ import annotations

from typing import Any

import orjson

from ...types import Chunk


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _tool_call(call: Any, position: int) -> dict[str, Any]:
    fn = _get(call, "function")
    index = _get(call, "index")
    out: dict[str, Any] = {"index": index if isinstance(index, int) else position, "type": "function"}
    ident = _get(call, "id")
    if ident:
        out["id"] = ident
    name = _get(fn, "name")
    args = _get(fn, "arguments")
    function: dict[str, Any] = {}
    if name:
        function["name"] = name
    if args is not None:
        function["arguments"] = args if isinstance(args, str) else orjson.dumps(args).decode()
    out["function"] = function
    return out


def _usage_dict(usage: Any) -> dict[str, Any] | None:
    if usage is None:
        return None
    prompt = _get(usage, "prompt_tokens") or 0
    completion = _get(usage, "completion_tokens") or 0
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": _get(usage, "total_tokens") or prompt + completion,
    }
    cached = _get(_get(usage, "prompt_tokens_details"), "cached_tokens")
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    reasoning = _get(_get(usage, "completion_tokens_details"), "reasoning_tokens")
    if reasoning:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    created = _get(usage, "cache_creation_input_tokens")
    if created:
        out["cache_creation_input_tokens"] = created
    return out


def stream_object_to_chunk(obj: Any) -> Chunk:
    """A canonical chunk from what a LiteLLM ``chunk_parser`` returned: a
    ``ModelResponseStream`` (most providers) or a ``GenericStreamingChunk`` dict
    (Cohere)."""
    if isinstance(obj, dict):  # GenericStreamingChunk
        delta: dict[str, Any] = {}
        if obj.get("text"):
            delta["content"] = obj["text"]
        tool = obj.get("tool_use")
        if tool:
            delta["tool_calls"] = [_tool_call(tool, 0)]
        chunk: Chunk = {
            "choices": [{"index": 0, "delta": delta, "finish_reason": obj.get("finish_reason") or None}]
        }
        usage = _usage_dict(obj.get("usage"))
        if usage:
            chunk["usage"] = usage
        return chunk
    choices = []
    for choice in obj.choices or ():
        d = choice.delta
        delta = {}
        if d is not None:
            content = d.content
            if content:
                delta["content"] = content
            reasoning = getattr(d, "reasoning_content", None)
            if reasoning:
                delta["reasoning_content"] = reasoning
            calls = d.tool_calls
            if calls:
                delta["tool_calls"] = [_tool_call(c, i) for i, c in enumerate(calls)]
        choices.append({"index": 0, "delta": delta, "finish_reason": choice.finish_reason or None})
        break  # one choice: the gateway never asks for n > 1
    chunk = {"id": obj.id or "", "object": "chat.completion.chunk", "model": obj.model or "", "choices": choices}
    usage = _usage_dict(getattr(obj, "usage", None))
    if usage:
        chunk["usage"] = usage
    return chunk


def response_object_to_completion(obj: Any) -> dict[str, Any]:
    """A ``chat.completion`` dict from a LiteLLM ``ModelResponse`` (once per request)."""
    choices = []
    for choice in obj.choices[:1]:
        msg = choice.message
        message: dict[str, Any] = {"role": "assistant", "content": msg.content}
        reasoning = getattr(msg, "reasoning_content", None)
        if reasoning:
            message["reasoning_content"] = reasoning
        if msg.tool_calls:
            message["tool_calls"] = [{**_tool_call(c, i), "index": i} for i, c in enumerate(msg.tool_calls)]
        choices.append({"index": 0, "message": message, "finish_reason": choice.finish_reason or "stop"})
    out: dict[str, Any] = {"id": obj.id or "", "object": "chat.completion", "model": obj.model or "", "choices": choices}
    usage = _usage_dict(getattr(obj, "usage", None))
    if usage:
        out["usage"] = usage
    return out

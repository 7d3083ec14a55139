"""The Bedrock Converse API: canonical request -> Converse body, Converse answers ->
canonical chunks, AWS errors -> :class:`~clasp_gateway.errors.UpstreamError`.

The request is built with LiteLLM's ``AmazonConverseConfig`` (``map_openai_params``
then ``transform_request``): it knows Converse's shapes for system prompts, images,
tool definitions, tool calls and results, ``tool_choice``, stop sequences and cache
points, for Claude, Llama, Mistral and Nova alike. The answer is read here, not by
LiteLLM: a Converse stream is a handful of event types, and reading them directly
costs a dict lookup per event where LiteLLM builds pydantic objects.

ConverseStream events (``:event-type`` header, JSON payload)::

    messageStart       {"role": "assistant"}
    contentBlockStart  {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId", "name"}}}
    contentBlockDelta  {"contentBlockIndex": 0, "delta": {"text": "..."}}
                       {"contentBlockIndex": 1, "delta": {"toolUse": {"input": "<partial JSON>"}}}
                       {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "..."}}}
    contentBlockStop   {"contentBlockIndex": 0}
    messageStop        {"stopReason": "end_turn" | "tool_use" | "max_tokens" | "stop_sequence" | ...}
    metadata           {"usage": {"inputTokens", "outputTokens", "cacheReadInputTokens",
                                  "cacheWriteInputTokens"}, "metrics": {...}}

and exceptions (``:message-type: exception``, ``:exception-type`` header) such as
``throttlingException`` or ``modelStreamErrorException`` in the middle of a stream.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from clasp_gateway import CanonicalRequest, Chunk, UpstreamError, redact

__all__ = ["ConverseStream", "converse_body", "error_for", "exception_status", "stream_error", "whole_answer"]

# OpenAI parameters LiteLLM maps to Converse (inferenceConfig, toolConfig...).
OPENAI_PARAMS = (
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "tools", "tool_choice",
    "response_format", "reasoning_effort", "parallel_tool_calls",
)
# Body keys that are never model parameters.
NOT_PARAMS = frozenset({"model", "messages", "stream", "stream_options", "user", "n", "seed",
                        "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
                        *OPENAI_PARAMS})

STOP_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "tool_use": "tool_calls", "max_tokens": "length",
    "model_context_window_exceeded": "length", "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}

# AWS error and exception names (either case) -> the HTTP status they stand for.
_STATUS = {
    "throttlingexception": 429, "servicequotaexceededexception": 429, "toomanyrequestsexception": 429,
    "validationexception": 400, "accessdeniedexception": 403, "resourcenotfoundexception": 404,
    "modeltimeoutexception": 408, "modelnotreadyexception": 503, "serviceunavailableexception": 503,
    "internalserverexception": 500, "modelstreamerrorexception": 502, "modelerrorexception": 502,
    # The gateway's own credentials were refused: the client is not at fault (a 401
    # upstream becomes a 500 for the client, and the next deployment is tried).
    "expiredtokenexception": 401, "unrecognizedclientexception": 401, "invalidsignatureexception": 401,
    "incompletesignatureexception": 401, "missingauthenticationtokenexception": 401,
    "invalidclienttokenid": 401, "signaturedoesnotmatch": 401,
}
EXPIRED = frozenset({"expiredtokenexception", "expiredtoken"})


def exception_status(name: str, default: int = 502) -> int:
    """The HTTP status an AWS error or stream exception name stands for."""
    return _STATUS.get(name.split(":", 1)[0].strip().lower(), default)


# --- canonical -> Converse ---------------------------------------------------------------------


def converse_body(config: Any, model: str, body: CanonicalRequest, *, reasoning_effort: str | None = None) -> dict[str, Any]:
    """The Converse request body for a canonical body, built by LiteLLM's
    ``AmazonConverseConfig`` (``config``). Keys that are not OpenAI parameters (from
    ``extra_body:``) go to ``additionalModelRequestFields``, as LiteLLM does for them."""
    # LiteLLM edits messages in place; the canonical request may be reused by a fallback.
    messages = orjson.loads(orjson.dumps(body.get("messages") or []))
    params = {k: body[k] for k in OPENAI_PARAMS if body.get(k) is not None}
    if "max_completion_tokens" in params:
        params.setdefault("max_tokens", params.pop("max_completion_tokens"))
    if reasoning_effort:
        params["reasoning_effort"] = reasoning_effort
    optional: dict[str, Any] = config.map_openai_params(
        non_default_params=params, optional_params={}, model=model, drop_params=True)
    for key, value in body.items():
        if key not in NOT_PARAMS and value is not None:
            optional[key] = value
    data: dict[str, Any] = config.transform_request(
        model=model, messages=messages, optional_params=optional, litellm_params={}, headers={})
    return data


# --- Converse -> canonical ---------------------------------------------------------------------


def _usage(usage: Any) -> dict[str, Any] | None:
    """Converse usage in OpenAI's terms: prompt tokens include cache reads and writes
    (Converse's ``inputTokens`` excludes both, as Anthropic's does)."""
    if not isinstance(usage, dict):
        return None
    fresh = int(usage.get("inputTokens") or 0)
    read = int(usage.get("cacheReadInputTokens") or 0)
    written = int(usage.get("cacheWriteInputTokens") or 0)
    completion = int(usage.get("outputTokens") or 0)
    prompt = fresh + read + written
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if read:
        out["prompt_tokens_details"] = {"cached_tokens": read}
    if written:
        out["cache_creation_input_tokens"] = written
    return out


class ConverseStream:
    """One ConverseStream answer, event by event, as canonical chunks.

    The finish reason (``messageStop``) and the usage (``metadata``, after it) are sent
    together in one last chunk; :meth:`end` says whether the answer was complete.
    """

    __slots__ = ("label", "model", "id", "created", "_tools", "_stop", "_usage", "_done")

    def __init__(self, label: str, model: str) -> None:
        self.label = label
        self.model = model
        self.id = f"bedrock-{time.time_ns():x}"
        self.created = int(time.time())
        self._tools: dict[int, int] = {}
        """contentBlockIndex -> tool-call index (0, 1, ... in the order they start)."""
        self._stop: str | None = None
        self._usage: dict[str, Any] | None = None
        self._done = False

    @property
    def stopped(self) -> bool:
        """``messageStop`` arrived: the answer is complete."""
        return self._stop is not None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> Chunk:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def _final(self) -> Chunk:
        self._done = True
        calls = bool(self._tools)
        reason = STOP_REASONS.get(self._stop or "", "stop")
        chunk = self._chunk({}, "tool_calls" if calls and reason == "stop" else reason)
        if self._usage:
            chunk["usage"] = self._usage
        return chunk

    def event(self, kind: str, data: Any) -> Chunk | None:
        """The chunk for one event (``None`` when a client would see nothing)."""
        if not isinstance(data, dict):
            data = {}
        if kind == "contentBlockDelta":
            delta = data.get("delta") or {}
            text = delta.get("text")
            if isinstance(text, str):
                return self._chunk({"content": text}) if text else None
            tool = delta.get("toolUse")
            if isinstance(tool, dict):
                index = self._tools.get(int(data.get("contentBlockIndex") or 0))
                arguments = tool.get("input")
                if index is None or not isinstance(arguments, str) or not arguments:
                    return None
                return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})
            reasoning = delta.get("reasoningContent")
            if isinstance(reasoning, dict) and isinstance(reasoning.get("text"), str) and reasoning["text"]:
                return self._chunk({"reasoning_content": reasoning["text"]})
            return None  # signatures, redacted reasoning, citations: nothing the canonical format carries
        if kind == "contentBlockStart":
            tool = (data.get("start") or {}).get("toolUse")
            if not isinstance(tool, dict):
                return None
            index = self._tools[int(data.get("contentBlockIndex") or 0)] = len(self._tools)
            return self._chunk({"tool_calls": [{
                "index": index, "id": str(tool.get("toolUseId") or f"tooluse_{index}"), "type": "function",
                "function": {"name": str(tool.get("name") or ""), "arguments": ""}}]})
        if kind == "messageStop":
            self._stop = str(data.get("stopReason") or "end_turn")
            return self._final() if self._usage is not None else None
        if kind == "metadata":
            self._usage = _usage(data.get("usage")) or {}
            return self._final() if self._stop is not None and not self._done else None
        # messageStart makes no chunk: the first chunk commits the gateway to this
        # deployment, and an exception right after it (throttling) must still let the
        # request fall back. contentBlockStop, and event types added later: nothing.
        return None

    def end(self) -> Chunk | None:
        """The stream ended: the last chunk still owed (finish without usage), or an
        error when ``messageStop`` never came (a cut answer must not look whole)."""
        if self._stop is None:
            raise UpstreamError(f"{self.label}: the Bedrock stream ended before messageStop", upstream_status=0,
                                deployment=self.label, kind="protocol")
        return None if self._done else self._final()

    def exception(self, name: str, payload: bytes) -> UpstreamError:
        """The error for a stream exception (``throttlingException``...)."""
        return stream_error(self.label, name, payload)


def _message(payload: bytes) -> str:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return " ".join(payload[:300].decode("utf-8", "replace").split())
    if isinstance(data, dict):
        for key in ("message", "Message", "errorMessage"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return ""


def stream_error(label: str, name: str, payload: bytes) -> UpstreamError:
    """An exception event in a stream as an :class:`UpstreamError` with its status."""
    status = exception_status(name)
    return UpstreamError(
        f"{label}: Bedrock {name} mid-stream: {redact(_message(payload))[:300]}",
        upstream_status=status, deployment=label,
        kind="http" if status in (400, 403, 404, 429) else "protocol",
    )


def error_for(label: str, status: int, error_type: str, body: bytes, retry_after: float | None) -> UpstreamError:
    """The error for an HTTP error answer (``x-amzn-ErrorType`` names the AWS error)."""
    name = error_type.split(":", 1)[0].strip()
    if not name:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("__type"), str):
            name = data["__type"].rsplit("#", 1)[-1]
    mapped = exception_status(name, status) if name else status
    if status in (401, 403) and mapped == 401:
        hint = " (the gateway's AWS credentials were refused)"
    elif status == 403:
        hint = " (check the credential's IAM policy and the model access granted in this region)"
    else:
        hint = ""
    text = redact(_message(body)) or "(no message)"
    return UpstreamError(
        f"{label}: Bedrock answered {status} {name or ''}: {text[:300]}{hint}".replace("  ", " "),
        upstream_status=mapped, deployment=label, retry_after=retry_after,
    )


def whole_answer(data: Any, label: str, model: str) -> dict[str, Any]:
    """A ``chat.completion`` dict from a Converse (non-streamed) answer."""
    if not isinstance(data, dict) or not isinstance((data.get("output") or {}).get("message"), dict):
        raise UpstreamError(f"{label}: Bedrock answered without output.message", upstream_status=502,
                            deployment=label, kind="protocol")
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in data["output"]["message"].get("content") or ():
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            text.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            tool = block["toolUse"]
            calls.append({"index": len(calls), "id": str(tool.get("toolUseId") or f"tooluse_{len(calls)}"),
                          "type": "function", "function": {"name": str(tool.get("name") or ""),
                                                           "arguments": orjson.dumps(tool.get("input") or {}).decode()}})
        elif isinstance(block.get("reasoningContent"), dict):
            part = (block["reasoningContent"].get("reasoningText") or {}).get("text")
            if isinstance(part, str):
                reasoning.append(part)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    reason = STOP_REASONS.get(str(data.get("stopReason") or "end_turn"), "stop")
    completion: dict[str, Any] = {
        "id": f"bedrock-{time.time_ns():x}", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message,
                     "finish_reason": "tool_calls" if calls and reason == "stop" else reason}],
    }
    usage = _usage(data.get("usage"))
    if usage:
        completion["usage"] = usage
    return completion

"""The ``transform`` path: LiteLLM's provider knowledge, the gateway's own wire.

For providers that do not speak OpenAI chat completions (Gemini, Cohere, Ollama's
native API, Anthropic for OpenAI-format clients...), LiteLLM's *provider config*
knows how to build the URL, the headers (auth, signing) and the body, and how to
parse the answer. ``litellm.acompletion`` wraps that knowledge in layers that cost
~20x a raw call on long streams (``../shared/LITELLM.md``); this module calls the
config directly and keeps the rest for itself:

- one pooled aiohttp session (the one the direct path uses) sends the request;
- the gateway decodes the byte stream itself (SSE or NDJSON, split-safe), so a
  provider's events reach LiteLLM's parser as plain dicts, one ``chunk_parser``
  call per event, and come back as canonical OpenAI chunk dicts (no pydantic
  object survives past that call); plain text deltas, most of a stream, skip
  LiteLLM's parser altogether (it builds pydantic objects per chunk: ~10x the
  cost), and a contract test checks both readings agree;
- ``get_optional_params`` (which rewrites every tool schema) is memoised per
  provider: a client sends the same tools and settings turn after turn;
- errors become :class:`~clasp_gateway.errors.UpstreamError` with the provider's
  message, status and retry hints, exactly like the direct path.

Each provider is a :class:`Recipe`: the generic one drives any LiteLLM
``BaseConfig`` (``validate_environment`` → ``get_complete_url`` →
``transform_request`` → ``sign_request``; ``transform_response`` /
``get_model_response_iterator``), and Gemini has its own because LiteLLM builds
Gemini requests outside its config class. What each recipe needs to know about a
stream (its framing, which event is the last one, and where LiteLLM's parser falls
short of the real wire) is in :data:`_STREAMS`. ``tests/test_litellm_contract.py``
pins every LiteLLM behaviour used here, so an upgrade that changes one fails loudly.

LiteLLM is imported once, before the app serves (``Providers.start``); nothing in
this module imports it at module level.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from ..errors import ConfigurationError, UpstreamError
from ..redact import redact
from ..types import KEEPALIVE, CanonicalRequest, Chunk, Deployment
from .catalog import provider_profile
from .credentials import KEY_FAILURES, Credentials, KeySlot
from .params import EXTRA_PARAMS, OPENAI_PARAMS
from .providers import clean_error_text, error_code, error_message, parse_retry_after
from .ratelimits import parse_rate_limits
from .reads import FrameTooLarge, ReadLimits, network_reads, read_body, read_error_body, too_large
from .sse import SSEDecoder

log = logging.getLogger("clasp.transform")

__all__ = ["EventReader", "NDJSONDecoder", "Prepared", "Recipe", "TransformAdapter", "litellm_provider"]

# OpenAI chat parameters handed to ``litellm.get_optional_params``, which maps them to
# the provider's names (max_tokens -> maxOutputTokens, stop -> stop_sequences...).
_OPENAI_PARAMS = OPENAI_PARAMS
# Canonical keys that are provider parameters but not OpenAI ones (top_k).
_EXTRA_PARAMS = EXTRA_PARAMS


def litellm_provider(provider: str) -> str:
    """LiteLLM's name for a provider (``cohere`` is ``cohere_chat`` for the chat API)."""
    return provider_profile(provider).litellm_provider or provider


# --------------------------------------------------------------------------------------
# Byte-stream framing
# --------------------------------------------------------------------------------------


class NDJSONDecoder:
    """Feed bytes, get complete lines (newline-delimited JSON, Ollama's stream).

    Works on bytes and decodes only complete lines, so a read that splits a
    multi-byte UTF-8 character cannot corrupt it. Blank lines are skipped. Linear
    and bounded like :class:`~clasp_gateway.wire.sse.SSEDecoder`: an unfinished line is
    appended to, never re-scanned, and a line over ``max_line`` bytes (finished or
    not) raises :class:`~clasp_gateway.wire.reads.FrameTooLarge`.
    """

    __slots__ = ("_buf", "max_line")

    def __init__(self, max_line: int = ReadLimits().max_line_bytes) -> None:
        self._buf = bytearray()
        self.max_line = max_line

    def feed(self, raw: bytes) -> list[str]:
        end = raw.rfind(b"\n")
        pending = self._buf
        if end < 0:
            pending += raw
            if len(pending) > self.max_line:
                raise FrameTooLarge(self.max_line)
            return []
        if pending:
            pending += raw[:end]
            block = bytes(pending)
            pending.clear()
        else:
            block = raw[:end]
        if len(raw) - end - 1 > self.max_line:
            raise FrameTooLarge(self.max_line)
        pending += raw[end + 1 :]
        lines = block.split(b"\n")
        if len(block) > self.max_line and any(len(line) > self.max_line for line in lines):
            raise FrameTooLarge(self.max_line)
        return [line.decode("utf-8", "replace") for line in lines if line.strip()]

    def flush(self) -> list[str]:
        """End of input: a last line without a newline still counts."""
        tail = bytes(self._buf)
        self._buf.clear()
        return [tail.decode("utf-8", "replace")] if tail.strip() else []


# --------------------------------------------------------------------------------------
# What the gateway knows about each provider's stream
# --------------------------------------------------------------------------------------


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


def _gemini_final(event: dict[str, Any]) -> bool:
    return any(isinstance(c, dict) and c.get("finishReason") for c in event.get("candidates") or ())


def _gemini_event(event: dict[str, Any]) -> dict[str, Any]:
    """Usage only on the last event. Gemini repeats a running ``usageMetadata`` on
    every chunk and LiteLLM computes a usage object from each (a third of its
    per-chunk cost); the gateway reads only the final count."""
    if "usageMetadata" in event and not _gemini_final(event):
        return {k: v for k, v in event.items() if k != "usageMetadata"}
    return event


def _text_chunk(text: str, key: str = "content") -> Chunk:
    return {"choices": [{"index": 0, "delta": {key: text}, "finish_reason": None}]}


def _gemini_fast(event: dict[str, Any], parser: Any) -> Chunk | None:
    """A plain text (or thought) chunk, read without LiteLLM: the common case of a
    stream, and the costliest for LiteLLM's parser (pydantic objects per chunk).
    Anything else (calls, finish, usage, safety, grounding) goes to LiteLLM.
    ``tests/test_litellm_contract.py`` checks both readings agree."""
    candidates = event.get("candidates")
    if not candidates or len(candidates) != 1 or "promptFeedback" in event:
        return None  # (a running usageMetadata is ignored: only the final one counts)
    cand = candidates[0]
    if not isinstance(cand, dict) or len(cand) > 2 or set(cand) - {"content", "index"}:
        return None
    parts = (cand.get("content") or {}).get("parts")
    if not parts or len(parts) != 1:
        return None
    part = parts[0]
    text = part.get("text") if isinstance(part, dict) else None
    if not isinstance(text, str) or not text or set(part) - {"text", "thought"}:
        return None
    return _text_chunk(text, "reasoning_content" if part.get("thought") is True else "content")


def _anthropic_fast(event: dict[str, Any], parser: Any) -> Chunk | None:
    """Text and thinking deltas (the bulk of a stream) without LiteLLM's parser."""
    if event.get("type") != "content_block_delta":
        return None
    delta = event.get("delta") or {}
    kind = delta.get("type")
    if kind == "text_delta" and isinstance(delta.get("text"), str) and not getattr(parser, "json_mode", False):
        return _text_chunk(delta["text"]) if delta["text"] else None
    if kind == "thinking_delta" and isinstance(delta.get("thinking"), str):
        return _text_chunk(delta["thinking"], "reasoning_content") if delta["thinking"] else None
    return None


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
        return _text_chunk(thinking, "reasoning_content")
    if not isinstance(content, str) or not content or getattr(parser, "started_reasoning_content", True):
        return None
    if "<think>" in content or "</think>" in content:
        return None
    return _text_chunk(content)


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


_STREAMS: dict[str, StreamSpec] = {
    "gemini": StreamSpec(is_final=_gemini_final, adapt=_gemini_event, fast=_gemini_fast),
    "cohere_chat": StreamSpec(
        is_final=lambda e: e.get("type") == "message-end", adapt=_cohere_event, extra=_cohere_extra,
        whole=_cohere_reasoning,
    ),
    # LiteLLM's whole-answer parser for Ollama tokenizes the conversation on every
    # call (an eagerly evaluated default: ~4 ms on 20 KB); its stream parser reads
    # Ollama's own counts.
    "ollama_chat": StreamSpec(framing="ndjson", is_final=lambda e: e.get("done") is True, fast=_ollama_fast,
                              always_stream=True),
    "anthropic": StreamSpec(is_final=lambda e: e.get("type") == "message_delta", fast=_anthropic_fast),
}


# --------------------------------------------------------------------------------------
# LiteLLM objects -> canonical dicts (attribute reads, no pydantic serialisation)
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# LiteLLM's logging object, reduced to what transforms touch
# --------------------------------------------------------------------------------------


class LoggingStub:
    """The few members of ``litellm.Logging`` that provider transforms read.

    ``transform_response`` calls ``post_call``; the Gemini stream parser reads
    ``optional_params`` and ``litellm_params``. The gateway records calls itself
    (``record`` hook), so every logging call is a no-op.
    """

    __slots__ = ("optional_params", "litellm_params", "model_call_details")

    def __init__(self, optional_params: dict[str, Any], litellm_params: dict[str, Any]) -> None:
        self.optional_params = optional_params
        self.litellm_params = litellm_params
        self.model_call_details: dict[str, Any] = {}

    def pre_call(self, *args: Any, **kwargs: Any) -> None:
        """No-op: the gateway logs requests itself."""

    def post_call(self, *args: Any, **kwargs: Any) -> None:
        """No-op: the gateway logs answers itself."""


# --------------------------------------------------------------------------------------
# Recipes: one request, built and parsed with LiteLLM's provider knowledge
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Prepared:
    """One provider request, ready to send, and what parsing its answer needs."""

    url: str
    headers: dict[str, str]
    body: bytes
    stream: bool
    model: str
    messages: list[Any]
    optional_params: dict[str, Any]
    litellm_params: dict[str, Any]
    request_data: dict[str, Any]
    api_key: str | None
    config: Any
    recipe: Recipe
    spec: StreamSpec = field(default_factory=StreamSpec)


_WARM_UP: CanonicalRequest = {
    "model": "warm-up",
    "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "noop", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": "ok"}],
    "tools": [{"type": "function", "function": {"name": "noop", "parameters": {
        "type": "object", "properties": {"x": {"type": "string"}}}}}],
    "max_tokens": 16,
}
"""A tiny request built (never sent) at start-up to warm LiteLLM's lazy set-up."""

_MEMO_SIZE = 256
"""Distinct (model, settings, tool set) combinations remembered per provider."""


def _split_body(body: CanonicalRequest, deployment: Deployment) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """(a private copy of the messages, OpenAI params, provider-specific extras).

    Extras are the canonical ones (``top_k``) and the deployment's ``extra_body``:
    every other key is dropped (they become keyword arguments of LiteLLM's
    ``get_optional_params``, which must never see a client's ``api_base`` or
    ``extra_headers``; see :mod:`clasp_gateway.wire.params`)."""
    # LiteLLM transforms edit messages in place; the canonical request may be reused
    # for a fallback attempt, so they get their own copy.
    messages = orjson.loads(orjson.dumps(body.get("messages") or []))
    params = {k: body[k] for k in _OPENAI_PARAMS if body.get(k) is not None}
    extras = {k: body[k] for k in _EXTRA_PARAMS if body.get(k) is not None}
    for key, value in deployment.extra_body.items():
        if value is not None:
            extras[key] = value
    return messages, params, extras


def _ensure_route(base: str, route: str | None) -> str:
    """``base`` ending in ``/route`` (``https://api.cohere.com`` -> ``.../v2/chat``)."""
    base = base.rstrip("/")
    if not route or base.endswith("/" + route):
        return base
    return f"{base}/{route}"


class Recipe:
    """Builds and parses one provider's requests through a LiteLLM ``BaseConfig``."""

    def __init__(self, litellm: Any, provider: str) -> None:
        self.litellm = litellm
        self.provider = provider
        self.spec = _STREAMS.get(provider, StreamSpec())
        self._providers_enum = litellm.LlmProviders(provider)
        self._memo: dict[bytes, bytes] = {}

    def config(self, model: str) -> Any:
        """LiteLLM's config object for ``model`` (fresh: some keep per-request state)."""
        cfg = self.litellm.ProviderConfigManager.get_provider_chat_config(model=model, provider=self._providers_enum)
        if cfg is None:
            raise ConfigurationError(f"LiteLLM has no request builder for provider {self.provider!r}; use mode: litellm")
        return cfg

    def optional_params(self, model: str, params: dict[str, Any], extras: dict[str, Any], stream: bool) -> dict[str, Any]:
        """``litellm.get_optional_params`` for this request, memoised: it rewrites
        every tool schema (Gemini: ~0.6 ms per tool), and a client sends the same
        tools and settings turn after turn. Each caller gets its own copy."""
        try:
            key = orjson.dumps((model, stream, params, extras))
        except TypeError:
            key = None
        if key is not None:
            hit = self._memo.get(key)
            if hit is not None:
                cached: dict[str, Any] = orjson.loads(hit)
                return cached
        op: dict[str, Any] = self.litellm.get_optional_params(
            model=model, custom_llm_provider=self.provider, stream=stream, drop_params=True, **params, **extras
        )
        if key is not None:
            try:
                value = orjson.dumps(op)
            except TypeError:
                return op
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.pop(next(iter(self._memo)))  # oldest first
            self._memo[key] = value
        return op

    def prepare(self, deployment: Deployment, body: CanonicalRequest, stream: bool, key: str | None) -> Prepared:
        model = deployment.model
        messages, params, extras = _split_body(body, deployment)
        cfg = self.config(model)
        op = self.optional_params(model, params, extras, stream)
        lp: dict[str, Any] = {}
        profile = provider_profile(deployment.provider)
        base = deployment.api_base or profile.default_api_base
        api_base = _ensure_route(base, profile.api_route) if base else None
        headers = cfg.validate_environment(
            headers=dict(deployment.headers), model=model, messages=messages, optional_params=op,
            litellm_params=lp, api_key=key, api_base=api_base,
        )
        url = cfg.get_complete_url(
            api_base=api_base, api_key=key, model=model, optional_params=op, litellm_params=lp, stream=stream
        )
        data = cfg.transform_request(
            model=model, messages=messages, optional_params=dict(op), litellm_params=lp, headers=headers
        )
        if stream and cfg.supports_stream_param_in_request_body:
            data["stream"] = True
        headers, signed = cfg.sign_request(
            headers=headers, optional_params=op, request_data=data, api_base=url, api_key=key,
            stream=stream, fake_stream=False, model=model,
        )
        headers.update(deployment.headers)
        return Prepared(
            url=url, headers={str(k): str(v) for k, v in headers.items()},
            body=signed if signed is not None else orjson.dumps(data), stream=stream, model=model,
            messages=messages, optional_params=op, litellm_params=lp, request_data=data, api_key=key,
            config=cfg, recipe=self, spec=self.spec,
        )

    def stream_parser(self, prepared: Prepared) -> Any:
        """A fresh LiteLLM stream parser (has ``chunk_parser(dict)``)."""
        it = prepared.config.get_model_response_iterator(streaming_response=iter(()), sync_stream=False, json_mode=False)
        if it is None and self.provider == "anthropic":
            # AnthropicConfig streams through its handler's iterator.
            from litellm.llms.anthropic.chat.handler import ModelResponseIterator

            it = ModelResponseIterator(streaming_response=None, sync_stream=False, json_mode=False)
        if it is None:
            raise ConfigurationError(f"LiteLLM has no stream parser for provider {self.provider!r}; use mode: litellm")
        return it

    def parse_response(self, prepared: Prepared, status: int, headers: Any, raw: bytes) -> dict[str, Any]:
        """A ``chat.completion`` dict from a whole (non-streamed) answer."""
        import httpx  # LiteLLM's transforms read an httpx.Response; httpx is LiteLLM's dependency

        response = httpx.Response(
            status, content=raw, headers=dict(headers), request=httpx.Request("POST", prepared.url)
        )
        result = prepared.config.transform_response(
            model=prepared.model, raw_response=response, model_response=self.litellm.ModelResponse(),
            logging_obj=LoggingStub(prepared.optional_params, prepared.litellm_params),
            request_data=prepared.request_data, messages=prepared.messages,
            optional_params=prepared.optional_params, litellm_params=prepared.litellm_params,
            encoding=None, api_key=prepared.api_key, json_mode=False,
        )
        completion = response_object_to_completion(result)
        if self.spec.whole is not None:
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                data = None
            if isinstance(data, dict):
                self.spec.whole(data, completion)
        return completion


class GeminiRecipe(Recipe):
    """Google AI Studio (``generateContent`` / ``streamGenerateContent?alt=sse``).

    LiteLLM builds Gemini bodies outside the config class
    (``transform_request_body``) and the URL and ``x-goog-api-key`` header in
    ``VertexLLM._get_token_and_url``; both are called directly.
    """

    def __init__(self, litellm: Any, provider: str) -> None:
        super().__init__(litellm, provider)
        from litellm.llms.vertex_ai.gemini.transformation import transform_request_body
        from litellm.llms.vertex_ai.gemini.vertex_and_google_ai_studio_gemini import (
            ModelResponseIterator,
            VertexLLM,
        )

        self._transform_body = transform_request_body
        self._iterator = ModelResponseIterator
        self._vertex = VertexLLM()

    def prepare(self, deployment: Deployment, body: CanonicalRequest, stream: bool, key: str | None) -> Prepared:
        model = deployment.model
        messages, params, extras = _split_body(body, deployment)
        cfg = self.config(model)
        op = self.optional_params(model, params, extras, stream)
        op.pop("stream", None)
        lp: dict[str, Any] = {}
        if not key:
            raise ConfigurationError(f"deployment {deployment.label} has no API key (set GEMINI_API_KEY)")
        auth, url = self._vertex._get_token_and_url(
            model=model, auth_header=None, gemini_api_key=key, vertex_project=None, vertex_location=None,
            vertex_credentials=None, stream=stream, custom_llm_provider="gemini",
            api_base=deployment.api_base or None,
        )
        data = self._transform_body(
            messages=messages, model=model, optional_params=dict(op), custom_llm_provider="gemini",
            litellm_params=lp, cached_content=None,
        )
        headers = {"content-type": "application/json", **(auth if isinstance(auth, dict) else {}), **deployment.headers}
        return Prepared(
            url=url, headers=headers, body=orjson.dumps(data), stream=stream, model=model, messages=messages,
            optional_params=op, litellm_params=lp, request_data=dict(data), api_key=key, config=cfg, recipe=self,
            spec=self.spec,
        )

    def stream_parser(self, prepared: Prepared) -> Any:
        logging_obj: Any = LoggingStub(prepared.optional_params, prepared.litellm_params)
        return self._iterator(streaming_response=None, sync_stream=False, logging_obj=logging_obj)


_RECIPES: dict[str, type[Recipe]] = {"gemini": GeminiRecipe}


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------

_RETRY_DELAY = re.compile(rb'"retryDelay"\s*:\s*"(\d+(?:\.\d+)?)s"')


def _retry_after(headers: Any, status: int, body: bytes) -> float | None:
    """Seconds to wait: the usual headers, else Google's ``RetryInfo.retryDelay`` in
    the body (Gemini's 429 carries no ``retry-after`` header)."""
    wait = parse_retry_after(headers, status)
    if wait is None and status == 429:
        match = _RETRY_DELAY.search(body)
        if match:
            wait = float(match.group(1))
    return wait


def _status_error(response: aiohttp.ClientResponse, body: bytes, label: str) -> UpstreamError:
    """The error for an HTTP error status: the provider's message (redacted) and when
    to retry."""
    ctype = response.headers.get("content-type", "").lower()
    return UpstreamError(
        f"{label}: provider answered {response.status}: {redact(error_message(body, ctype))}",
        upstream_status=response.status, deployment=label,
        retry_after=_retry_after(response.headers, response.status, body),
    )


def _event_error(event: dict[str, Any]) -> tuple[str, int] | None:
    """(message, status) when a stream event is an error report (HTTP 200 streams
    may still fail: Anthropic ``event: error``, Gemini ``{"error": {...}}``)."""
    err = event.get("error")
    if event.get("type") == "error" or (isinstance(err, (dict, str)) and "candidates" not in event and "choices" not in event):
        if isinstance(err, dict):
            message = str(err.get("message") or err.get("type") or err)
            code = err.get("code")
            kind = err.get("type")
            status = code if isinstance(code, int) else {"overloaded_error": 529, "rate_limit_error": 429,
                                                         "api_error": 500}.get(str(kind), 502)
            return message, status
        return str(err), 502
    return None


# --------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------


class TransformAdapter:
    """The ``transform`` mode: LiteLLM builds and parses, the gateway sends and streams.

    ``session`` returns the gateway's pooled aiohttp session; ``load_litellm``
    returns the (already imported) ``litellm`` module.
    """

    def __init__(
        self, session: Callable[[], Any], load_litellm: Callable[[], Any], credentials: Credentials | None = None,
        *, fast_paths: bool = True, limits: ReadLimits | None = None,
    ) -> None:
        self._session = session
        self.limits = limits or ReadLimits()
        self._load = load_litellm
        self._credentials = credentials or Credentials()
        self.fast_paths = fast_paths
        """Read plain text deltas without LiteLLM's parser (``StreamSpec.fast``)."""
        self._recipes: dict[str, Recipe] = {}

    def recipe(self, provider: str) -> Recipe:
        """The recipe for a gateway provider name (built once per provider)."""
        name = litellm_provider(provider)
        recipe = self._recipes.get(name)
        if recipe is None:
            litellm = self._load()
            try:
                recipe = _RECIPES.get(name, Recipe)(litellm, name)
            except ValueError:
                raise ConfigurationError(
                    f"LiteLLM does not know provider {name!r}; check the deployment's `model: provider/name`"
                ) from None
            self._recipes[name] = recipe
        return recipe

    def check(self, deployment: Deployment) -> None:
        """Fail early (at start-up) when LiteLLM cannot build this deployment's calls,
        and build one request (not sent) so the first real one does not pay for
        LiteLLM's lazy set-up (its validators: 10-110 ms per provider here)."""
        recipe = self.recipe(deployment.provider)
        recipe.config(deployment.model)
        try:
            for stream in (True, False):
                recipe.prepare(deployment, _WARM_UP, stream, "warm-up-key")
        except Exception as exc:  # a warm-up must never stop the gateway; real calls will say why
            log.debug("warm-up of %s failed: %s", deployment.label, exc)

    async def open(self, deployment: Deployment, body: CanonicalRequest, *, stream: bool) -> AsyncIterator[Chunk]:
        label = deployment.id
        recipe = self.recipe(deployment.provider)
        stream = stream or recipe.spec.always_stream
        session = await self._session()
        t = deployment.timeouts
        timeout = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, connect=t.connect)
        pool = self._credentials.pool(deployment)
        # As on the direct path: a key the provider refuses (429/401/403) is benched
        # and the request goes at once to the next usable key of this deployment.
        tried: list[KeySlot] = []
        while True:
            slot = pool.pick(exclude=tried)
            try:
                prepared = recipe.prepare(deployment, body, stream, slot.value if slot else None)
            except (ConfigurationError, UpstreamError):
                raise
            except Exception as exc:  # LiteLLM refused the request (unsupported content...)
                log.info("%s: LiteLLM cannot build the request: %s: %s", label, type(exc).__name__, exc)
                raise UpstreamError(
                    f"{label}: cannot build the {deployment.provider} request: "
                    f"{clean_error_text(exc) or 'the request is not supported'}",
                    upstream_status=400, deployment=label, kind="http",
                ) from None
            try:
                response = await session.post(prepared.url, data=prepared.body, headers=prepared.headers, timeout=timeout)
            except TimeoutError:
                raise UpstreamError(f"{label}: timed out connecting", upstream_status=0, deployment=label, kind="timeout") from None
            except aiohttp.ClientError as exc:
                raise UpstreamError(
                    f"{label}: cannot reach the provider ({redact(str(exc)) or type(exc).__name__})",
                    upstream_status=0, deployment=label, kind="connect",
                ) from None
            if slot is not None and response.status in KEY_FAILURES:
                try:
                    error_body = await read_error_body(response, label, t.idle)
                finally:
                    response.release()
                pool.reject(slot, response.status, parse_rate_limits(response.headers), error_code=error_code(error_body))
                tried.append(slot)
                if pool.has_alternative(tried):
                    log.info("%s: API key %s refused (%d); retrying with the next key", label, slot.label, response.status)
                    continue
                raise _status_error(response, error_body, label)
            if slot is not None and pool.tracks_limits and response.status < 400:
                pool.observe(slot, parse_rate_limits(response.headers))
            break
        try:
            async for chunk in self._read(response, deployment, prepared):
                yield chunk
        finally:
            response.release()

    async def _read(self, response: aiohttp.ClientResponse, deployment: Deployment, prepared: Prepared) -> AsyncIterator[Chunk]:
        label = deployment.id
        idle = deployment.timeouts.idle
        ctype = response.headers.get("content-type", "").lower()
        if response.status >= 400:
            raise _status_error(response, await read_error_body(response, label, idle), label)
        streamed = "event-stream" in ctype or "ndjson" in ctype or (
            prepared.stream and prepared.spec.framing == "ndjson" and "json" in ctype
        )
        if streamed:  # (also when it streams a whole answer it was asked for: read the events)
            async for chunk in self._read_stream(response, label, idle, prepared):
                yield chunk
            return
        raw = await read_body(response, label, idle, self.limits.max_body_bytes)
        if "html" in ctype or raw.lstrip()[:1] == b"<":
            raise UpstreamError(
                f"{label}: provider answered HTML, not a chat answer (is api_base right?)",
                upstream_status=502, deployment=label, kind="protocol",
            )
        try:
            completion = prepared.recipe.parse_response(prepared, response.status, response.headers, raw)
        except Exception as exc:  # the body is not what the provider's format promises
            status = getattr(exc, "status_code", None)
            log.info("%s: cannot read the provider's answer: %s: %s", label, type(exc).__name__, exc)
            # An error report with a success status: the provider's own message;
            # anything else: no parser internals, no echo of the body.
            reported = error_message(raw, ctype) if b'"error"' in raw[:200] else ""
            raise UpstreamError(
                f"{label}: provider error: {redact(reported)[:300]}" if reported else
                f"{label}: the provider's answer is not a valid {prepared.recipe.provider} answer",
                upstream_status=status if isinstance(status, int) and status >= 400 else 502,
                deployment=label, kind="protocol",
            ) from None
        if not completion.get("choices"):
            raise UpstreamError(f"{label}: provider answered without a message", upstream_status=502,
                                deployment=label, kind="protocol")
        from ..canonical import completion_to_chunk

        yield completion_to_chunk(completion)

    async def _read_stream(
        self, response: aiohttp.ClientResponse, label: str, idle: float | None, prepared: Prepared
    ) -> AsyncIterator[Chunk]:
        max_line = self.limits.max_line_bytes
        decoder: SSEDecoder | NDJSONDecoder = (
            NDJSONDecoder(max_line) if prepared.spec.framing == "ndjson" else SSEDecoder(max_line))
        reader = EventReader(prepared, label, fast=self.fast_paths)
        read_event = reader.read
        loads = orjson.loads
        async for raw in network_reads(response, label, idle):
            if raw is None:
                yield KEEPALIVE
                continue
            try:
                events = decoder.feed(raw) if raw else decoder.flush()
            except FrameTooLarge:
                raise too_large(label, max_line, line=True) from None
            for data in events:
                if data == "[DONE]":
                    continue
                try:
                    event = loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamError(
                        f"{label}: malformed event in the stream", upstream_status=502, deployment=label, kind="protocol"
                    ) from None
                for chunk in read_event(event):
                    yield chunk
        if not reader.finished:
            raise UpstreamError(
                f"{label}: stream ended before the answer was complete",
                upstream_status=0, deployment=label, kind="protocol",
            )


class EventReader:
    """One stream's events (decoded JSON) -> canonical chunks, through LiteLLM's
    parser for the provider, corrected where :class:`StreamSpec` says it must be."""

    __slots__ = ("label", "finished", "_parser", "_parse", "_is_final", "_adapt", "_extra", "_fast", "_head")

    def __init__(self, prepared: Prepared, label: str, *, fast: bool = True) -> None:
        self.label = label
        self.finished = False
        # Every chunk of one stream carries the same id, model and creation time
        # (OpenAI clients read them; LiteLLM's Ollama parser invents an id per chunk).
        self._head = {"id": "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion.chunk",
                      "created": int(time.time()), "model": prepared.model}
        """The event carrying the real finish reason was read."""
        spec = prepared.spec
        self._parser = prepared.recipe.stream_parser(prepared)
        self._parse = self._parser.chunk_parser
        self._is_final, self._adapt, self._extra = spec.is_final, spec.adapt, spec.extra
        self._fast = spec.fast if fast else None

    def read(self, event: Any) -> list[Chunk]:
        """The chunks for one event (often none: block boundaries, pings)."""
        if not isinstance(event, dict):
            return []
        label = self.label
        failure = _event_error(event)
        if failure is not None:
            message, status = failure
            raise UpstreamError(
                f"{label}: provider error mid-stream: {redact(message)[:300]}",
                upstream_status=status, deployment=label, kind="protocol",
            )
        if self._fast is not None:
            quick = self._fast(event, self._parser)
            if quick is not None:
                quick.update(self._head)
                return [quick]
        out: list[Chunk] = []
        if self._extra is not None:
            made = self._extra(event)
            if made is not None:
                made.update(self._head)
                out.append(made)
        final = self._is_final(event) if self._is_final is not None else None
        parsed_event = self._adapt(event) if self._adapt is not None else event
        if parsed_event is None:
            return out
        try:
            obj = self._parse(parsed_event)
        except Exception as exc:  # LiteLLM parsers raise their own exception types
            code = getattr(exc, "status_code", None)
            log.info("%s: cannot read a stream event: %s: %s", label, type(exc).__name__, exc)
            raise UpstreamError(
                f"{label}: cannot read a stream event: {clean_error_text(exc) or 'not a valid event'}",
                upstream_status=code if isinstance(code, int) and code >= 400 else 502,
                deployment=label, kind="protocol",
            ) from None
        if obj is None:
            return out
        chunk = stream_object_to_chunk(obj)
        choices = chunk["choices"]
        for choice in choices:
            reason = choice.get("finish_reason")
            if reason:
                if final is False:
                    choice["finish_reason"] = None  # LiteLLM guessed; not the end yet
                else:
                    choice["finish_reason"] = _map_finish(reason)
                    self.finished = True
        if "usage" not in chunk and (not choices or (not choices[0]["delta"] and not choices[0]["finish_reason"])):
            return out  # nothing a client could see
        chunk.update(self._head)
        out.append(chunk)
        return out


# Provider finish reasons LiteLLM's stream parsers pass through unmapped (Cohere's).
_FINISH = {
    "COMPLETE": "stop", "STOP_SEQUENCE": "stop", "MAX_TOKENS": "length", "TOOL_CALL": "tool_calls",
    "ERROR": "stop", "ERROR_TOXIC": "content_filter", "ERROR_LIMIT": "length",
}


def _map_finish(reason: str) -> str:
    return _FINISH.get(reason, reason)

"""Anthropic as an upstream: an Anthropic client's request goes through untouched.

Translating Anthropic → OpenAI → Anthropic would lose what only Anthropic
understands: ``cache_control`` breakpoints, thinking blocks and their signatures,
betas, server tools. So for deployments with ``provider: anthropic``:

- :func:`remember` (called by the ``/v1/messages`` route) keeps the client's parsed
  body and headers in ``ctx.state``;
- :class:`AnthropicPassthrough`, registered for provider ``anthropic``, sends that
  body reduced to the Messages API's own parameters (:data:`ANTHROPIC_PARAMS`),
  with only ``model`` replaced (and thinking blocks this gateway signed itself
  removed: Anthropic would reject their signature), with the client's
  ``anthropic-version`` and ``anthropic-beta`` headers and the deployment's key,
  and yields each upstream SSE event as ``{"anthropic_event": (name,
  data_bytes)}`` (a whole JSON answer as ``{"anthropic_message": bytes}``), bytes
  untouched unless they quote one of the gateway's secrets (then redacted). An
  upstream ``error`` event is never relayed as is: it ends the stream with the
  provider's status and a clean, redacted message, like any upstream error;
- :func:`respond` (called by the route when :func:`active`) forwards those bytes to
  the client as they came, reading only ``message_start``/``message_delta`` for
  the usage it records.

Requests without a remembered body (OpenAI-format clients on
``/v1/chat/completions``) are served by the built-in path of the deployment
(LiteLLM's Anthropic transform, ``mode: transform``). A failure before the first
event is an ordinary upstream error, so fallback to other deployments still works.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from starlette.responses import Response

from clasp_gateway import (
    KEEPALIVE,
    REWRITTEN_KEY,
    CanonicalRequest,
    Chunk,
    Deployment,
    FrameTooLarge,
    GatewayError,
    ReadLimits,
    RequestContext,
    StreamEncoder,
    UpstreamError,
    UpstreamRequest,
    Usage,
    error_response,
    provider_profile,
    redact,
    redact_bytes,
    serve_stream,
)

from .message import MessageBuilder
from .sse import encode_event
from .stream import THINKING_SIGNATURE, error_event, ping_event

__all__ = ["ANTHROPIC_PARAMS", "AnthropicPassthrough", "RawRequest", "active", "remember", "respond"]

log = logging.getLogger("clasp.claude.passthrough")

STATE_KEY = "clasp_claude.raw_request"
ACTIVE_KEY = "clasp_claude.passthrough"
DEFAULT_VERSION = "2023-06-01"
FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")
"""Client headers that travel upstream (the client's own key never does)."""
ANTHROPIC_PARAMS = frozenset({
    "model", "messages", "system", "max_tokens", "metadata", "stop_sequences", "stream", "temperature", "top_p",
    "top_k", "tools", "tool_choice", "thinking", "context_management", "output_config", "output_format",
})
"""Top-level keys of a Messages request that travel upstream (what Claude Code and the
SDKs send). Anything else a client adds is dropped: the body is data, and a key the
gateway does not know may carry a cost or a behaviour the team did not choose
(``service_tier``, ``container``, ``mcp_servers``...)."""

_PING = encode_event(*ping_event())
_ERROR_BODY = re.compile(rb'\s*\{\s*"type"\s*:\s*"error"')
_SIGNATURE_MARK = THINKING_SIGNATURE.encode()


@dataclass(slots=True)
class RawRequest:
    """An Anthropic client's request as it arrived."""

    body: dict[str, Any]
    headers: dict[str, str]


def remember(ctx: RequestContext, body: dict[str, Any], headers: dict[str, str]) -> None:
    """Keep the client's request for a pass-through deployment (a reference, no copy)."""
    ctx.state[STATE_KEY] = RawRequest(body, headers)
    ctx.client_body = body


def active(ctx: RequestContext, upstream: Any) -> bool:
    """Whether ``upstream`` (the chosen attempt) is a pass-through of Anthropic events."""
    return ctx.state.get(ACTIVE_KEY) is not None and ctx.state.get(ACTIVE_KEY) == upstream.deployment.id


# --------------------------------------------------------------------------------------
# The provider adapter
# --------------------------------------------------------------------------------------


def _without_foreign_thinking(messages: Any) -> Any:
    """Messages without the thinking blocks this gateway signed (made from another
    provider's reasoning): Anthropic rejects their signature. Genuine ones stay."""
    out = []
    for msg in messages:
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "thinking" and b.get("signature") == THINKING_SIGNATURE
            for b in content
        ):
            kept = [b for b in content if not (isinstance(b, dict) and b.get("type") == "thinking"
                                                 and b.get("signature") == THINKING_SIGNATURE)]
            msg = {**msg, "content": kept or [{"type": "text", "text": "(thinking omitted)"}]}
        out.append(msg)
    return out


def upstream_body(raw: RawRequest, deployment: Deployment) -> bytes:
    """The client's body reduced to :data:`ANTHROPIC_PARAMS`, with the deployment's
    model (and foreign thinking removed)."""
    body = {k: v for k, v in raw.body.items() if k in ANTHROPIC_PARAMS}
    body["model"] = deployment.model
    metadata = body.pop("metadata", None)
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        body["metadata"] = {"user_id": metadata["user_id"]}  # the only field Anthropic defines
    messages = body.get("messages")
    if isinstance(messages, list) and _SIGNATURE_MARK in orjson.dumps(messages):
        body["messages"] = _without_foreign_thinking(messages)
    return orjson.dumps(body)


def _url(deployment: Deployment) -> str:
    profile = provider_profile(deployment.provider)
    base = (deployment.api_base or profile.default_api_base or "https://api.anthropic.com").rstrip("/")
    return base if base.endswith("/v1/messages") else base + "/v1/messages"


class _Frames:
    """Splits an SSE byte stream into ``(event name, data bytes)`` frames, bytes
    untouched (a read may end anywhere, even inside a UTF-8 character).

    Linear in the bytes fed (each read is scanned once; an unfinished frame is
    appended to, never re-copied) and bounded: an unfinished frame longer than
    ``max_frame`` bytes (or a whole one) raises :class:`~clasp_gateway.FrameTooLarge` (the
    gateway's ``server.max_line_bytes``, from ``upstream.limits``)."""

    __slots__ = ("_buf", "_cr", "max_frame")

    def __init__(self, max_frame: int = ReadLimits().max_line_bytes) -> None:
        self._buf = bytearray()
        self._cr = False
        """The last read ended with ``\\r`` (held back: it may start a ``\\r\\n``)."""
        self.max_frame = max_frame

    def feed(self, raw: bytes) -> list[tuple[str, bytes]]:
        if self._cr:
            raw = b"\r" + raw
        self._cr = raw.endswith(b"\r")
        if self._cr:
            raw = raw[:-1]
        if b"\r" in raw:
            raw = raw.replace(b"\r\n", b"\n")
        buf = self._buf
        scan = max(0, len(buf) - 1)  # a "\n\n" may straddle the previous read and this one
        buf += raw
        out = []
        start = 0
        while True:
            end = buf.find(b"\n\n", max(start, scan))
            if end < 0:
                break
            if end - start > self.max_frame:
                raise FrameTooLarge(self.max_frame)
            frame = self._parse(bytes(buf[start:end]))
            if frame is not None:
                out.append(frame)
            start = end + 2
        if start:
            del buf[:start]
        if len(buf) > self.max_frame:
            raise FrameTooLarge(self.max_frame)
        return out

    def flush(self) -> list[tuple[str, bytes]]:
        tail = bytes(self._buf)
        self._buf.clear()
        frame = self._parse(tail.strip(b"\n")) if tail.strip() else None
        return [frame] if frame is not None else []

    @staticmethod
    def _parse(block: bytes) -> tuple[str, bytes] | None:
        name = ""
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode("utf-8", "replace")
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
        if not data:
            return None
        return name, b"\n".join(data)


class AnthropicPassthrough:
    """Provider adapter for ``provider: anthropic`` (see the module doc)."""

    def __init__(self) -> None:
        self._providers: Any = None

    def bind(self, providers: Any) -> None:
        """Receive the gateway's providers: the pooled session, key pools, and the
        built-in path for requests that are not pass-through."""
        self._providers = providers

    async def open(
        self, deployment: Deployment, body: CanonicalRequest, *, stream: bool, ctx: RequestContext | None = None
    ) -> AsyncIterator[Chunk]:
        providers = self._providers
        raw = ctx.state.get(STATE_KEY) if ctx is not None else None
        if raw is not None and ctx is not None and ctx.state.get(REWRITTEN_KEY):
            raw = None  # the gateway wrote this body (a long answer's continuation): send it, not the client's
        if raw is None:
            async for chunk in providers.builtin_for(deployment).open(deployment, body, stream=stream):
                yield chunk
            return
        response = await self._send(deployment, raw)
        try:
            ctype = response.headers.get("content-type", "").lower()
            if "event-stream" in ctype:
                async for chunk in self._events(response, deployment, ctx):
                    yield chunk
                return
            data = await providers.upstream.read_body(response, deployment)
            if not data.lstrip().startswith(b"{"):
                raise UpstreamError(f"{deployment.id}: provider answered something that is not a message",
                                    upstream_status=502, deployment=deployment.id, kind="protocol")
            if _ERROR_BODY.match(data):  # {"type": "error", "error": {...}} with a success status
                message, status = _error_of(data)
                raise UpstreamError(f"{deployment.id}: provider error: {redact(message)}", upstream_status=status,
                                    deployment=deployment.id, kind="http")
            ctx.state[ACTIVE_KEY] = deployment.id  # type: ignore[union-attr]
            yield {"anthropic_message": redact_bytes(data)}
        finally:
            response.release()

    async def _send(self, deployment: Deployment, raw: RawRequest) -> aiohttp.ClientResponse:
        """Send the client's request with the deployment's key (the next one when a key
        is refused) over the gateway's wire; an error answer raises its status error."""
        data = upstream_body(raw, deployment)
        url = _url(deployment)
        headers = {"content-type": "application/json", "anthropic-version": DEFAULT_VERSION}
        for name in FORWARDED_HEADERS:
            value = raw.headers.get(name)
            if value:
                headers[name] = value
        headers.update(deployment.headers)

        def build(key: str | None) -> UpstreamRequest:
            return UpstreamRequest(url, data, {**headers, "x-api-key": key} if key else headers)

        response: aiohttp.ClientResponse = await self._providers.upstream.send(
            deployment, build, need_tokens=len(data) // 4)
        return response

    async def _events(self, response: aiohttp.ClientResponse, deployment: Deployment, ctx: Any) -> AsyncIterator[Chunk]:
        label = deployment.id
        upstream = self._providers.upstream
        started = False
        ended = False
        read_ahead = ctx.read_ahead
        async for batch in upstream.frames(response, deployment, _Frames(upstream.limits.max_line_bytes)):
            if batch is None:
                read_ahead.pending = 0
                if started:
                    yield KEEPALIVE
                continue
            remaining = len(batch)
            for name, data in batch:
                remaining -= 1
                read_ahead.pending = remaining  # the route writes once per network read
                if name == "error":
                    # Never relayed as it came (it may quote a key): the provider's status
                    # and a clean message. Before anything was said it is an ordinary
                    # upstream error (the pipeline may fall back to another deployment);
                    # after, the route ends the stream with an error event.
                    message, status = _error_of(data)
                    raise UpstreamError(
                        f"{label}: provider error{' mid-stream' if started else ''}: {redact(message)}",
                        upstream_status=status, deployment=label, kind="protocol" if started else "http",
                    )
                if not started:
                    started = True
                    ctx.state[ACTIVE_KEY] = deployment.id
                yield {"anthropic_event": (name, redact_bytes(data))}
                if name == "message_stop":
                    ended = True
                    break
            if ended:
                break
        if not ended:
            raise UpstreamError(f"{label}: stream ended before the answer was complete", upstream_status=0,
                                deployment=label, kind="protocol")


def _error_of(data: bytes) -> tuple[str, int]:
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return " ".join(data[:300].decode("utf-8", "replace").split()), 502
    err = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(err, dict):
        return "the provider reported an error", 502
    status = {"overloaded_error": 529, "rate_limit_error": 429, "api_error": 500, "invalid_request_error": 400,
              "authentication_error": 401, "permission_error": 403, "not_found_error": 404,
              "request_too_large": 413, "timeout_error": 504}.get(str(err.get("type")), 502)
    return str(err.get("message") or err.get("type"))[:300], status


# --------------------------------------------------------------------------------------
# The client side (called by routes.py)
# --------------------------------------------------------------------------------------


class PassthroughUsage:
    """Usage read from the two events that carry it, for the ``record`` hook."""

    __slots__ = ("usage",)

    def __init__(self) -> None:
        self.usage = Usage()

    def observe(self, name: str, data: bytes) -> None:
        if name == "message_start":
            try:
                usage = (orjson.loads(data).get("message") or {}).get("usage") or {}
            except (orjson.JSONDecodeError, AttributeError):
                return
            self._take(usage)
        elif name == "message_delta":
            try:
                usage = orjson.loads(data).get("usage") or {}
            except (orjson.JSONDecodeError, AttributeError):
                return
            self._take(usage)

    def take_message(self, data: bytes) -> None:
        try:
            self._take(orjson.loads(data).get("usage") or {})
        except (orjson.JSONDecodeError, AttributeError):
            pass

    def _take(self, usage: dict[str, Any]) -> None:
        u = self.usage
        for field in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
            value = usage.get(field)
            if isinstance(value, int):
                setattr(u, field, value)


_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
           "pause_turn": "stop", "refusal": "content_filter"}


def canonical_chunk(name: str, data: bytes) -> Chunk | None:
    """A canonical view of one Anthropic event, for ``on_stream_chunk`` (text, thinking,
    tool calls, the finish reason and usage; ``None`` for the others)."""
    if name not in ("content_block_delta", "content_block_start", "message_delta"):
        return None
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    index = event.get("index") if isinstance(event.get("index"), int) else 0
    delta: dict[str, Any]
    if name == "content_block_delta":
        raw = event.get("delta") or {}
        kind = raw.get("type")
        if kind == "text_delta":
            delta = {"content": raw.get("text") or ""}
        elif kind == "thinking_delta":
            delta = {"reasoning_content": raw.get("thinking") or ""}
        elif kind == "input_json_delta":
            delta = {"tool_calls": [{"index": index, "function": {"arguments": raw.get("partial_json") or ""}}]}
        else:
            return None
    elif name == "content_block_start":
        block = event.get("content_block") or {}
        if block.get("type") != "tool_use":
            return None
        delta = {"tool_calls": [{"index": index, "id": block.get("id"), "type": "function",
                                 "function": {"name": block.get("name"), "arguments": ""}}]}
    else:
        reason = (event.get("delta") or {}).get("stop_reason")
        finish = _FINISH.get(reason, reason) if isinstance(reason, str) else None
        chunk: Chunk = {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
        usage = event.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("output_tokens"), int):
            chunk["usage"] = {"completion_tokens": usage["output_tokens"]}
        return chunk
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def canonical_message(data: bytes) -> list[Chunk]:
    """A canonical view of a whole Anthropic message, for ``on_stream_chunk`` (text,
    thinking, tool calls, then the finish reason and output tokens)."""
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(message, dict):
        return []
    out: list[Chunk] = []
    for index, block in enumerate(message.get("content") or ()):
        if not isinstance(block, dict):
            continue
        delta: dict[str, Any] | None = None
        if block.get("type") == "text":
            delta = {"content": block.get("text") or ""}
        elif block.get("type") == "thinking":
            delta = {"reasoning_content": block.get("thinking") or ""}
        elif block.get("type") == "tool_use":
            delta = {"tool_calls": [{"index": index, "id": block.get("id"), "type": "function", "function": {
                "name": block.get("name"), "arguments": orjson.dumps(block.get("input") or {}).decode()}}]}
        if delta is not None:
            out.append({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    reason = message.get("stop_reason")
    finish: Chunk = {"choices": [{"index": 0, "delta": {},
                                  "finish_reason": _FINISH.get(reason, reason) if isinstance(reason, str) else None}]}
    usage = message.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("output_tokens"), int):
        finish["usage"] = {"completion_tokens": usage["output_tokens"]}
    out.append(finish)
    return out


class PassthroughEncoder(StreamEncoder):
    """Anthropic's events written as they came (only the usage is read, for the books),
    ``ping`` keep-alives, a clean ``error`` event when the stream is cut."""

    keepalive = _PING

    def __init__(self) -> None:
        self.seen = PassthroughUsage()

    @property
    def usage(self) -> Usage:
        """The usage ``message_start`` and ``message_delta`` reported."""
        return self.seen.usage

    def encode(self, chunk: Chunk) -> bytes:
        """The event's frame, bytes untouched."""
        event = chunk.get("anthropic_event")
        if event is None:
            return b""
        name, data = event
        self.seen.observe(name, data)
        return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"

    def canonical(self, chunk: Chunk) -> Chunk | None:
        """What plugins' ``on_stream_chunk`` sees of a pass-through event."""
        event = chunk.get("anthropic_event")
        return canonical_chunk(*event) if event is not None else None

    def error(self, error: GatewayError) -> bytes:
        """Anthropic's in-stream ``error`` event (never the provider's own, which may
        quote a key)."""
        return encode_event(*error_event(error.error_type, error.message))


async def respond(gateway: Any, ctx: RequestContext, upstream: Any) -> Any:
    """The client's response for a pass-through attempt (streamed or whole)."""
    if ctx.client_stream:
        return serve_stream(gateway, ctx, upstream, PassthroughEncoder())
    return await _complete(gateway, ctx, upstream)


async def _complete(gateway: Any, ctx: RequestContext, upstream: Any) -> Response:
    """A whole answer: the provider's message as it came, or, if it streamed anyway,
    the message its events make; a failure on the way is a clean error answer."""
    seen = PassthroughUsage()
    body = b""
    builder: MessageBuilder | None = None
    chunk_hook = gateway.on_stream_chunk if gateway.chunk_hook else None
    try:
        async for chunk in upstream:
            if chunk is KEEPALIVE:
                continue
            if chunk.get("anthropic_message") is not None:
                body = chunk["anthropic_message"]
                seen.take_message(body)
                if chunk_hook is not None:
                    for view in canonical_message(body):
                        chunk_hook(ctx, view)
            elif chunk.get("anthropic_event") is not None:
                name, data = chunk["anthropic_event"]
                seen.observe(name, data)
                if chunk_hook is not None:
                    seen_view = canonical_chunk(name, data)
                    if seen_view is not None:
                        chunk_hook(ctx, seen_view)
                builder = builder or MessageBuilder()
                builder.add([(name, orjson.loads(data))])
        if builder is not None:
            body = orjson.dumps(builder.result())
    except GatewayError as exc:
        await upstream.aclose()
        await gateway.finish(ctx, upstream, usage=seen.usage, status=exc.status, error=exc, cut=True)
        return error_response(exc, "anthropic", ctx.request_id)
    except (ValueError, KeyError, IndexError, TypeError, RuntimeError):  # events that make no message
        await upstream.aclose()
        error = UpstreamError(f"{upstream.deployment.id}: provider streamed events that make no message",
                              upstream_status=502, deployment=upstream.deployment.id, kind="protocol")
        await gateway.finish(ctx, upstream, usage=seen.usage, status=error.status, error=error, cut=True)
        return error_response(error, "anthropic", ctx.request_id)
    await upstream.aclose()
    await gateway.finish(ctx, upstream, usage=seen.usage, status=200)
    return Response(body, status_code=200, headers=ctx.response_headers, media_type="application/json")

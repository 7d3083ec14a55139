"""Anthropic as an upstream: an Anthropic client's request goes through untouched.

Translating Anthropic → OpenAI → Anthropic would lose what only Anthropic
understands: ``cache_control`` breakpoints, thinking blocks and their signatures,
betas, server tools. So for deployments with ``provider: anthropic``:

- :func:`remember` (called by the ``/v1/messages`` route) keeps the client's parsed
  body and headers in ``ctx.state``;
- :class:`AnthropicPassthrough`, registered for provider ``anthropic``, sends that
  body with only ``model`` replaced (and thinking blocks this gateway signed
  itself removed: Anthropic would reject their signature), with the client's
  ``anthropic-version`` and ``anthropic-beta`` headers and the deployment's key,
  and yields each upstream SSE event untouched as ``{"anthropic_event": (name,
  data_bytes)}`` (a whole JSON answer as ``{"anthropic_message": bytes}``);
- :func:`respond` (called by the route when :func:`active`) forwards those bytes to
  the client as they came, reading only ``message_start``/``message_delta`` for
  the usage it records.

Requests without a remembered body (OpenAI-format clients on
``/v1/chat/completions``) are served by the built-in path of the deployment
(LiteLLM's Anthropic transform, ``mode: transform``). A failure before the first
event is an ordinary upstream error, so fallback to other deployments still works.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from starlette.responses import Response

from clasp_gateway.catalog import provider_profile
from clasp_gateway.credentials import KEY_FAILURES, KeySlot
from clasp_gateway.errors import GatewayError, UpstreamError
from clasp_gateway.http import EventStreamResponse
from clasp_gateway.providers import OpenAICompatible, _error_code, _error_message, parse_retry_after
from clasp_gateway.ratelimits import parse_rate_limits
from clasp_gateway.reads import network_reads
from clasp_gateway.redact import redact
from clasp_gateway.types import KEEPALIVE, CanonicalRequest, Chunk, Deployment, RequestContext, Usage

from .sse import encode_event
from .stream import THINKING_SIGNATURE, error_event, ping_event

__all__ = ["AnthropicPassthrough", "RawRequest", "active", "remember", "respond"]

log = logging.getLogger("clasp.claude.passthrough")

STATE_KEY = "clasp_claude.raw_request"
ACTIVE_KEY = "clasp_claude.passthrough"
DEFAULT_VERSION = "2023-06-01"
FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")
"""Client headers that travel upstream (the client's own key never does)."""

_PING = encode_event(*ping_event())
_SIGNATURE_MARK = THINKING_SIGNATURE.encode()


@dataclass(slots=True)
class RawRequest:
    """An Anthropic client's request as it arrived."""

    body: dict[str, Any]
    headers: dict[str, str]


def remember(ctx: RequestContext, body: dict[str, Any], headers: dict[str, str]) -> None:
    """Keep the client's request for a pass-through deployment (a reference, no copy)."""
    ctx.state[STATE_KEY] = RawRequest(body, headers)


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
    """The client's body with the deployment's model (and foreign thinking removed)."""
    body = {**raw.body, "model": deployment.model}
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
    untouched (a read may end anywhere, even inside a UTF-8 character)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, raw: bytes) -> list[tuple[str, bytes]]:
        buf = self._buf + raw if self._buf else raw
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        out = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            frame = self._parse(buf[start:end])
            if frame is not None:
                out.append(frame)
            start = end + 2
        self._buf = buf[start:]
        return out

    def flush(self) -> list[tuple[str, bytes]]:
        tail, self._buf = self._buf, b""
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
            data = await OpenAICompatible._read_limited(response, deployment.timeouts.idle, deployment.id, limit=None)
            if not data.lstrip().startswith(b"{"):
                raise UpstreamError(f"{deployment.id}: provider answered something that is not a message",
                                    upstream_status=502, deployment=deployment.id, kind="protocol")
            ctx.state[ACTIVE_KEY] = deployment.id  # type: ignore[union-attr]
            yield {"anthropic_message": data}
        finally:
            response.release()

    async def _send(self, deployment: Deployment, raw: RawRequest) -> aiohttp.ClientResponse:
        providers = self._providers
        label = deployment.id
        session = await providers.pooled_session()
        t = deployment.timeouts
        timeout = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, connect=t.connect)
        data = upstream_body(raw, deployment)
        url = _url(deployment)
        headers = {"content-type": "application/json", "anthropic-version": DEFAULT_VERSION}
        for name in FORWARDED_HEADERS:
            value = raw.headers.get(name)
            if value:
                headers[name] = value
        headers.update(deployment.headers)
        pool = providers.credentials.pool(deployment)
        tried: list[KeySlot] = []
        while True:  # a refused key: the same request on the next key (as the core paths do)
            slot = pool.pick(len(data) // 4, tried)
            if slot is not None and slot.value:
                headers["x-api-key"] = slot.value
            try:
                response = await session.post(url, data=data, headers=headers, timeout=timeout)
            except TimeoutError:
                raise UpstreamError(f"{label}: timed out connecting", upstream_status=0, deployment=label,
                                    kind="timeout") from None
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"{label}: cannot reach the provider ({redact(str(exc)) or type(exc).__name__})",
                                    upstream_status=0, deployment=label, kind="connect") from None
            if response.status < 400:
                if slot is not None and pool.tracks_limits:
                    pool.observe(slot, parse_rate_limits(response.headers))
                return response
            try:
                body = await OpenAICompatible._read_limited(response, t.idle, label)
            finally:
                response.release()
            if slot is not None and response.status in KEY_FAILURES:
                pool.reject(slot, response.status, parse_rate_limits(response.headers), error_code=_error_code(body))
                tried.append(slot)
                if pool.has_alternative(tried):
                    log.info("%s: API key %s refused (%d); retrying with the next key", label, slot.label, response.status)
                    continue
            ctype = response.headers.get("content-type", "").lower()
            raise UpstreamError(
                f"{label}: provider answered {response.status}: {redact(_error_message(body, ctype))}",
                upstream_status=response.status, deployment=label,
                retry_after=parse_retry_after(response.headers, response.status),
            )

    @staticmethod
    async def _events(response: aiohttp.ClientResponse, deployment: Deployment, ctx: Any) -> AsyncIterator[Chunk]:
        label = deployment.id
        idle = deployment.timeouts.idle
        frames = _Frames()
        started = False
        ended = False
        async for raw in network_reads(response, label, idle):
            if raw is None:
                if started:
                    yield KEEPALIVE
                continue
            for name, data in frames.feed(raw) if raw else frames.flush():
                if not started:
                    if name == "error":
                        # Failed before anything was said: an ordinary upstream error
                        # (the pipeline may still fall back to another deployment).
                        message, status = _error_of(data)
                        raise UpstreamError(f"{label}: provider error: {redact(message)}", upstream_status=status,
                                            deployment=label, kind="http")
                    started = True
                    ctx.state[ACTIVE_KEY] = deployment.id
                yield {"anthropic_event": (name, data)}
                if name in ("message_stop", "error"):
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
        return data[:300].decode("utf-8", "replace"), 502
    err = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(err, dict):
        return str(payload)[:300], 502
    status = {"overloaded_error": 529, "rate_limit_error": 429, "api_error": 500, "invalid_request_error": 400,
              "authentication_error": 401, "permission_error": 403, "not_found_error": 404,
              "request_too_large": 413, "timeout_error": 504}.get(str(err.get("type")), 502)
    return str(err.get("message") or err.get("type")), status


# --------------------------------------------------------------------------------------
# The client side (called by routes.py)
# --------------------------------------------------------------------------------------


class PassthroughUsage:
    """Usage read from the two events that carry it, for the ``record`` hook."""

    __slots__ = ("usage", "error")

    def __init__(self) -> None:
        self.usage = Usage()
        self.error: tuple[str, int] | None = None

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
        elif name == "error":
            self.error = _error_of(data)

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


async def respond(gateway: Any, ctx: RequestContext, upstream: Any) -> Any:
    """The client's response for a pass-through attempt (streamed or whole)."""
    if ctx.client_stream:
        return EventStreamResponse(_stream(gateway, ctx, upstream), headers=ctx.response_headers)
    return await _complete(gateway, ctx, upstream)


async def _stream(gateway: Any, ctx: RequestContext, upstream: Any) -> AsyncIterator[bytes]:
    seen = PassthroughUsage()
    status, cut = 200, True
    error: GatewayError | None = None
    try:
        async for chunk in upstream:
            if chunk is KEEPALIVE:
                yield _PING
                continue
            event = chunk.get("anthropic_event")
            if event is None:
                continue
            name, data = event
            seen.observe(name, data)
            yield b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"
        if seen.error is not None:
            message, status = seen.error
            error = UpstreamError(f"{upstream.deployment.id}: provider error mid-stream: {message}",
                                  upstream_status=status, deployment=upstream.deployment.id, kind="protocol")
        else:
            cut = False
    except GatewayError as exc:
        # The answer already started: say so in-stream; never a clean message_stop.
        status, error = exc.status, exc
        yield encode_event(*error_event(exc.error_type, exc.message))
    except (asyncio.CancelledError, GeneratorExit):
        status = 499
        raise
    finally:
        await upstream.aclose()
        await gateway.finish(ctx, upstream, usage=seen.usage, status=status, error=error, cut=cut)


async def _complete(gateway: Any, ctx: RequestContext, upstream: Any) -> Response:
    seen = PassthroughUsage()
    body = b""
    try:
        async for chunk in upstream:
            if chunk is not KEEPALIVE and chunk.get("anthropic_message") is not None:
                body = chunk["anthropic_message"]
                seen.take_message(body)
    finally:
        await upstream.aclose()
    await gateway.finish(ctx, upstream, usage=seen.usage, status=200)
    return Response(body, status_code=200, headers=ctx.response_headers, media_type="application/json")

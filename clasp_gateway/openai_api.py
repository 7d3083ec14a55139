"""``POST /v1/chat/completions`` and ``GET /v1/models`` for OpenAI-format clients.

The body is already canonical, so it passes through the same pipeline as
Anthropic requests (routing, fallback, plugins) with only validation added.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from .canonical import chunks_to_completion
from .errors import GatewayError, InvalidRequestError
from .http import EventStreamResponse, error_response, json_response, read_json, request_headers
from .params import check_params
from .types import KEEPALIVE, RequestContext, RequestHints, UpstreamStream, Usage


def _validate(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequestError("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("model: required, a non-empty string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages: required, a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequestError(f"messages.{i}: expected an object with a role")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequestError("stream: expected true or false")
    for key in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidRequestError(f"{key}: expected a positive integer")
    if body.get("n", 1) != 1:
        raise InvalidRequestError("n: only 1 is supported")
    check_params(body)  # the parameters forwarded upstream (others are dropped: params.py)
    return body


async def chat_completions(request: Request) -> Response | EventStreamResponse:
    gateway = request.app.state.gateway
    request_id = request.scope["state"]["request_id"]
    try:
        headers = request_headers(request)
        principal = await gateway.authenticate(headers)
        body = _validate(await read_json(request, gateway.config.server.max_request_bytes))
        stream = bool(body.get("stream"))
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        ctx = RequestContext(
            request_id=request_id, api="openai", public_model=body["model"], client_stream=stream,
            principal=principal, headers=headers,
            hints=RequestHints(reasoning_effort=body.get("reasoning_effort")),
        )
        upstream = await gateway.open(ctx, body, stream=stream)
    except GatewayError as exc:
        return error_response(exc, "openai", request_id)
    if not stream:
        return await _complete(gateway, ctx, upstream)
    return EventStreamResponse(_stream(gateway, ctx, upstream, wants_usage), headers=ctx.response_headers)


async def _complete(gateway: Any, ctx: RequestContext, upstream: UpstreamStream) -> Response:
    chunks = []
    try:
        async for chunk in upstream:
            if chunk is not KEEPALIVE:
                chunks.append(chunk)
    except GatewayError as exc:
        await gateway.finish(ctx, upstream, usage=None, status=exc.status, error=exc)
        return error_response(exc, "openai", ctx.request_id)
    completion = chunks_to_completion(chunks, ctx.public_model)
    usage = Usage.from_openai(completion.get("usage"))
    await gateway.finish(ctx, upstream, usage=usage, status=200)
    return json_response(completion, headers=ctx.response_headers)


async def _stream(
    gateway: Any, ctx: RequestContext, upstream: UpstreamStream, wants_usage: bool
) -> AsyncIterator[bytes]:
    usage: Usage | None = None
    status, error, cut = 200, None, True
    model = ctx.public_model
    chunk_hook = gateway.pm.hook.on_stream_chunk if gateway.chunk_hook else None
    read_ahead = ctx.read_ahead
    out: list[bytes] = []
    try:
        async for chunk in upstream:
            if chunk is KEEPALIVE:
                out.append(b": keep-alive\n\n")
            else:
                if chunk.get("usage"):
                    usage = Usage.from_openai(chunk["usage"])
                    if not wants_usage:
                        chunk = {k: v for k, v in chunk.items() if k != "usage"}
                if chunk.get("choices") or "usage" in chunk:
                    chunk["model"] = model
                    if chunk_hook is not None:
                        chunk_hook(ctx=ctx, chunk=chunk)
                    out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
            # One write per upstream read: hold output while more decoded chunks wait.
            if out and not read_ahead.pending:
                yield b"".join(out)
                out = []
        out.append(b"data: [DONE]\n\n")
        cut = False
        yield b"".join(out)
    except GatewayError as exc:
        status, error = exc.status, exc
        yield b"".join(out) + b"data: " + orjson.dumps(exc.openai_body()) + b"\n\n"
    except (asyncio.CancelledError, GeneratorExit):
        status = 499  # the client went away
        raise
    finally:
        await upstream.aclose()
        await gateway.finish(ctx, upstream, usage=usage, status=status, error=error, cut=cut)


async def list_models(request: Request) -> Response:
    gateway = request.app.state.gateway
    try:
        await gateway.authenticate(request_headers(request))
    except GatewayError as exc:
        return error_response(exc, "openai", request.scope["state"]["request_id"])
    now = int(time.time())
    return json_response({
        "object": "list",
        "data": [{"id": name, "object": "model", "created": now, "owned_by": "clasp"} for name in gateway.public_models()],
    })

"""``POST /v1/chat/completions`` and ``GET /v1/models[/{id}]`` for OpenAI-format clients.

The body is already canonical, so it passes through the same pipeline as
Anthropic requests (routing, fallback, plugins) with only validation added.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..canonical import chunks_to_completion
from ..errors import ApiError, GatewayError, InvalidRequestError, NotFoundError
from ..types import KEEPALIVE, RequestContext, RequestHints, UpstreamStream, Usage
from ..wire.params import check_params
from .access import note
from .http import EventStreamResponse, authenticate, error_response, json_response, read_json, request_headers
from .limits import MAX_OUTPUT_TOKENS, check_message_count
from .served import created_timestamps, describe_model, served_models


def _validate(body: Any, *, max_messages: int | None = None) -> dict[str, Any]:
    """Check an OpenAI chat body at the edge (a 400 naming the field), bounding the
    work it can cause: at most ``max_messages`` messages, ``max_tokens`` and
    ``max_completion_tokens`` up to :data:`~.limits.MAX_OUTPUT_TOKENS` (below that the
    core clamps them to the deployment's output limit)."""
    if not isinstance(body, dict):
        raise InvalidRequestError("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("model: required, a non-empty string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages: required, a non-empty list")
    if max_messages is not None:
        check_message_count(body, max_messages)
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequestError(f"messages.{i}: expected an object with a role")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequestError("stream: expected true or false")
    for key in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidRequestError(f"{key}: expected a positive integer")
        if key != "n" and value is not None and value > MAX_OUTPUT_TOKENS:
            raise InvalidRequestError(f"{key}: must be at most {MAX_OUTPUT_TOKENS}, got {value}")
    if body.get("n", 1) != 1:
        raise InvalidRequestError("n: only 1 is supported")
    check_params(body)  # the parameters forwarded upstream (others are dropped: params.py)
    return body


log = logging.getLogger("clasp.openai")


def status_of(error: BaseException) -> int:
    """The status a failed request is recorded with (500 for an unexpected error)."""
    return error.status if isinstance(error, GatewayError) else 500


async def chat_completions(request: Request) -> Response | EventStreamResponse:
    gateway = request.app.state.gateway
    request_id = request.scope["state"]["request_id"]
    ctx: RequestContext | None = None
    try:
        headers = request_headers(request)
        principal = await authenticate(request)
        server = gateway.config.server
        body = _validate(await read_json(request, server.max_request_bytes), max_messages=server.max_messages)
        stream = bool(body.get("stream"))
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        ctx = RequestContext(
            request_id=request_id, api="openai", public_model=body["model"], client_stream=stream,
            principal=principal, headers=headers,
            hints=RequestHints(reasoning_effort=body.get("reasoning_effort")),
        )
        note(request, ctx=ctx)
        upstream = await gateway.open(ctx, body, stream=stream)
    except Exception as exc:
        if ctx is not None:  # it reached the pipeline: its request event is recorded
            await gateway.finish(ctx, None, usage=None, status=status_of(exc), error=exc)
        if isinstance(exc, GatewayError):
            return error_response(exc, "openai", request_id)
        raise  # the app's error boundary answers a shaped 500 and logs the traceback
    if not stream:
        return await _complete(gateway, ctx, upstream)
    return EventStreamResponse(_stream(gateway, ctx, upstream, wants_usage), headers=ctx.response_headers)


async def _complete(gateway: Any, ctx: RequestContext, upstream: UpstreamStream) -> Response:
    chunks = []
    try:
        async for chunk in upstream:
            if chunk is not KEEPALIVE:
                chunks.append(chunk)
        completion = chunks_to_completion(chunks, ctx.public_model)
        usage = Usage.from_openai(completion.get("usage"))
    except Exception as exc:
        await upstream.aclose()
        await gateway.finish(ctx, upstream, usage=None, status=status_of(exc), error=exc)
        if isinstance(exc, GatewayError):
            return error_response(exc, "openai", ctx.request_id)
        raise
    await upstream.aclose()
    await gateway.finish(ctx, upstream, usage=usage, status=200)  # never raises
    return json_response(completion, headers=ctx.response_headers)


async def _stream(
    gateway: Any, ctx: RequestContext, upstream: UpstreamStream, wants_usage: bool
) -> AsyncIterator[bytes]:
    usage: Usage | None = None
    status, cut = 200, True
    error: Exception | None = None
    model = ctx.public_model
    chunk_hook = gateway.on_stream_chunk if gateway.chunk_hook else None
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
                        chunk_hook(ctx, chunk)  # isolated: a failing plugin never cuts the stream
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
    except Exception as exc:  # a gateway bug: still an error event, never a silent cut
        log.error("%s unexpected error while streaming", ctx.request_id, exc_info=exc)
        status, error = 500, exc
        shaped = ApiError("internal gateway error; see the gateway log for request " + ctx.request_id)
        yield b"".join(out) + b"data: " + orjson.dumps(shaped.openai_body()) + b"\n\n"
    finally:
        await upstream.aclose()
        await gateway.finish(ctx, upstream, usage=usage, status=status, error=error, cut=cut)


async def list_models(request: Request) -> Response:
    """``GET /v1/models``: the concrete names the gateway serves (never a glob), each
    with a display name and a description naming the real model (``served.py``)."""
    gateway = request.app.state.gateway
    try:
        await authenticate(request)
    except GatewayError as exc:
        return error_response(exc, "openai", request.scope["state"]["request_id"])
    created, _ = created_timestamps()
    return json_response({"object": "list", "data": [m.openai(created) for m in served_models(gateway.config)]})


async def retrieve_model(request: Request) -> Response:
    """``GET /v1/models/{id}``: any name the gateway serves (a name a glob matches
    too); 404 otherwise."""
    gateway = request.app.state.gateway
    request_id = request.scope["state"]["request_id"]
    try:
        await authenticate(request)
        model = describe_model(gateway.config, request.path_params["model_id"])
        if model is None:
            raise NotFoundError(f"model {request.path_params['model_id']!r} is not served by this gateway")
    except GatewayError as exc:
        return error_response(exc, "openai", request_id)
    created, _ = created_timestamps()
    return json_response(model.openai(created))

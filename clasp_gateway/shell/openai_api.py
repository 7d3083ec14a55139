"""``POST /v1/chat/completions`` and ``GET /v1/models[/{id}]`` for OpenAI-format clients.

The body is already canonical, so it passes through the same pipeline as
Anthropic requests (routing, fallback, plugins) with only validation added.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..canonical import chunks_to_completion
from ..errors import GatewayError, InvalidRequestError, NotFoundError
from ..policy import may_use_model
from ..types import KEEPALIVE, Chunk, RequestContext, RequestHints, UpstreamStream, Usage
from ..wire.params import check_params
from .access import note
from .http import EventStreamResponse, authenticate, error_response, json_response, read_json, request_headers
from .limits import MAX_OUTPUT_TOKENS, check_message_count
from .served import created_timestamps, describe_model, served_models
from .streaming import StreamEncoder, serve_stream


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
    return serve_stream(gateway, ctx, upstream, OpenAIEncoder(ctx.public_model, wants_usage))


async def _complete(gateway: Any, ctx: RequestContext, upstream: UpstreamStream) -> Response:
    chunks = []
    chunk_hook = gateway.chunk_notifier(ctx) if gateway.chunk_hook else None
    try:
        async for chunk in upstream:
            if chunk is not KEEPALIVE:
                chunks.append(chunk)
                if chunk_hook is not None:  # a whole answer's chunks too (a cache stores them)
                    chunk_hook(ctx, chunk)
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


OUTPUT_CHARS_PER_TOKEN = 4.0
"""Characters per output token for a cut stream's partial usage (the Anthropic route's)."""


def output_chars(choices: Any) -> int:
    """Characters of output text (content, reasoning, tool-call arguments) in one
    chunk's choices: a few dictionary reads for the common text delta."""
    size = 0
    for choice in choices:
        delta = choice.get("delta") if type(choice) is dict else None
        if type(delta) is not dict:
            continue
        text = delta.get("content")
        if type(text) is str:
            size += len(text)
        if text is None or len(delta) > 2 or (len(delta) == 2 and "role" not in delta):  # more than text
            text = delta.get("reasoning_content")
            if type(text) is str:
                size += len(text)
            for call in delta.get("tool_calls") or ():
                fn = call.get("function") if type(call) is dict else None
                if type(fn) is dict:
                    size += len(str(fn.get("name") or "")) + len(str(fn.get("arguments") or ""))
    return size


class OpenAIEncoder(StreamEncoder):
    """OpenAI's chat completion stream: ``data: {chunk}`` events with the public model
    name, usage only when the client asked for it (``stream_options.include_usage``),
    ``data: [DONE]`` at the end, an OpenAI-shaped error object when it is cut."""

    __slots__ = ("model", "wants_usage", "_usage", "_out_chars")

    def __init__(self, model: str, wants_usage: bool) -> None:
        self.model = model
        self.wants_usage = wants_usage
        self._usage: Usage | None = None
        self._out_chars = 0

    @property
    def usage(self) -> Usage | None:
        """The usage the upstream reported (whether or not the client gets it); for a
        stream that ended before any usage came (cut), the partial usage: the output it
        sent, estimated from its characters (as the Anthropic route does), so a cut
        stream is recorded and charged what it showed."""
        if self._usage is None and self._out_chars:
            return Usage(output_tokens=math.ceil(self._out_chars / OUTPUT_CHARS_PER_TOKEN))
        return self._usage

    def prepare(self, chunk: Chunk) -> Chunk | None:
        """Record the usage (kept from the client unless asked for) and the output's
        size; the public model name; nothing for a chunk without choices or usage."""
        if chunk.get("usage"):
            self._usage = Usage.from_openai(chunk["usage"])
            if not self.wants_usage:
                chunk = {k: v for k, v in chunk.items() if k != "usage"}
        choices = chunk.get("choices")
        if choices:
            if self._usage is None:
                self._out_chars += output_chars(choices)
            chunk["model"] = self.model
            return chunk
        if "usage" in chunk:
            chunk["model"] = self.model
            return chunk
        return None

    def encode(self, chunk: Chunk) -> bytes:
        """One ``data:`` event."""
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def finish(self) -> bytes:
        """OpenAI's end marker."""
        return b"data: [DONE]\n\n"

    def error(self, error: GatewayError) -> bytes:
        """The error object OpenAI's SDKs raise from mid-stream."""
        return b"data: " + orjson.dumps(error.openai_body()) + b"\n\n"


async def list_models(request: Request) -> Response:
    """``GET /v1/models``: the concrete names the gateway serves (never a glob), each
    with a display name and a description naming the real model (``served.py``)."""
    gateway = request.app.state.gateway
    try:
        principal = await authenticate(request)
    except GatewayError as exc:
        return error_response(exc, "openai", request.scope["state"]["request_id"])
    created, _ = created_timestamps()
    served = [m for m in served_models(gateway.config) if may_use_model(principal, m.id)]  # the key's own
    return json_response({"object": "list", "data": [m.openai(created) for m in served]})


async def retrieve_model(request: Request) -> Response:
    """``GET /v1/models/{id}``: any name the gateway serves (a name a glob matches
    too); 404 otherwise."""
    gateway = request.app.state.gateway
    request_id = request.scope["state"]["request_id"]
    try:
        principal = await authenticate(request)
        model = describe_model(gateway.config, request.path_params["model_id"])
        if model is None or not may_use_model(principal, model.id):
            raise NotFoundError(f"model {request.path_params['model_id']!r} is not served by this gateway")
    except GatewayError as exc:
        return error_response(exc, "openai", request_id)
    created, _ = created_timestamps()
    return json_response(model.openai(created))

"""The Anthropic endpoints: authenticate, translate, call the pipeline, translate back."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from clasp_gateway import (
    KEEPALIVE,
    Chunk,
    EventStreamResponse,
    Gateway,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    RequestContext,
    StreamEncoder,
    UpstreamStream,
    Usage,
    authenticate,
    check_message_count,
    check_model_access,
    created_timestamps,
    describe_model,
    error_response,
    json_response,
    list_openai_models,
    may_use_model,
    note_access,
    read_json,
    request_headers,
    retrieve_openai_model,
    serve_stream,
    served_models,
    status_of,
)

from . import passthrough
from .message import MessageBuilder
from .request import estimate_input_tokens, to_canonical
from .sse import encode_event, encode_events
from .stream import StreamTranslator, error_event, ping_event
from .tokens import count_tokens, encoding_for_model

PING = encode_event(*ping_event())

log = logging.getLogger("clasp.claude")


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


def _client_user(raw: Any) -> str | None:
    """The client's ``metadata.user_id`` (for ``ctx.user``; checked by ``to_canonical``)."""
    metadata = raw.get("metadata") if isinstance(raw, dict) else None
    user = metadata.get("user_id") if isinstance(metadata, dict) else None
    return user if isinstance(user, str) and user else None


async def messages_endpoint(request: Request) -> Response | EventStreamResponse:
    """``POST /v1/messages``."""
    gateway = _gateway(request)
    request_id = request.scope["state"]["request_id"]
    ctx: RequestContext | None = None
    try:
        headers = request_headers(request)
        principal = await authenticate(request)
        raw = await read_json(request, gateway.config.server.max_request_bytes)
        check_message_count(raw, gateway.config.server.max_messages)
        translated = to_canonical(raw)
        ctx = RequestContext(
            request_id=request_id, api="anthropic", public_model=raw["model"],
            client_stream=bool(raw.get("stream")), principal=principal, headers=headers,
            hints=translated.hints, user=_client_user(raw),  # the core's x-clasp-user wins
        )
        note_access(request, ctx=ctx)
        # An Anthropic deployment gets the client's own request (passthrough.py).
        passthrough.remember(ctx, raw, headers)
        # Stop sequences are matched by the gateway, so it reads a stream to stop early.
        upstream = await gateway.open(
            ctx, translated.body, stream=ctx.client_stream or bool(translated.stop_sequences)
        )
    except Exception as exc:
        if ctx is not None:  # it reached the pipeline: its request event is recorded
            await gateway.finish(ctx, None, usage=None, status=status_of(exc), error=exc)
        if isinstance(exc, GatewayError):
            return error_response(exc, "anthropic", request_id)
        raise  # the app's error boundary answers a shaped 500 and logs the traceback
    if passthrough.active(ctx, upstream):
        # Anthropic answered: its events go to the client as they came.
        try:
            return await passthrough.respond(gateway, ctx, upstream)
        except Exception as exc:  # (finish records the request once, whoever calls it first)
            await gateway.finish(ctx, upstream, usage=None, status=status_of(exc), error=exc)
            if isinstance(exc, GatewayError):
                return error_response(exc, "anthropic", request_id)
            raise
    translator = StreamTranslator(
        ctx.public_model,
        message_id="msg_" + request_id[4:],
        input_tokens=estimate_input_tokens(raw),
        stop_sequences=translated.stop_sequences,
        tool_names=translated.tool_names,
    )
    translator.prime(upstream.first_chunks)  # usage reported up front: message_start shows it
    if ctx.client_stream:
        return serve_stream(gateway, ctx, upstream, AnthropicEncoder(translator))
    return await _complete(gateway, ctx, upstream, translator)


class AnthropicEncoder(StreamEncoder):
    """Anthropic's Messages stream: the translator's events (``message_start`` and a
    ``ping`` first, ``message_stop`` last), ``ping`` keep-alives, an ``error`` event
    when the answer is cut."""

    keepalive = PING

    def __init__(self, translator: StreamTranslator) -> None:
        self.translator = translator
        self._feed = translator.feed

    @property
    def usage(self) -> Usage:
        """The upstream's usage (estimated where it gave none)."""
        return self.translator.usage

    def start(self) -> bytes:
        """``message_start``, then a ping (the client hears from the gateway at once)."""
        return encode_events(self.translator.start()) + PING

    def encode(self, chunk: Chunk) -> bytes:
        """The events one canonical chunk makes (often one, sometimes none); ``done``
        once a stop sequence matched, or the finish and the usage both arrived."""
        events = self._feed(chunk)
        self.done = self.translator.done
        if len(events) == 1:  # the common case: no join, no generator
            name, payload = events[0]
            return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
        return encode_events(events)

    def report_text_deltas(self) -> StreamTranslator:
        """The translator: it works out whether each chunk is a text delta while it
        translates it (:attr:`StreamTranslator.text_delta`), once asked to."""
        self.translator.reports_text_deltas = True
        return self.translator

    def finish(self) -> bytes:
        """The closing blocks, ``message_delta`` and ``message_stop``."""
        return encode_events(self.translator.finish())

    def error(self, error: GatewayError) -> bytes:
        """Anthropic's in-stream ``error`` event."""
        return encode_event(*error_event(error.error_type, error.message))


async def _complete(
    gateway: Gateway, ctx: RequestContext, upstream: UpstreamStream, translator: StreamTranslator
) -> Response:
    builder = MessageBuilder()
    chunk_hook = gateway.on_stream_chunk if gateway.chunk_hook else None
    try:
        builder.add(translator.start())
        async for chunk in upstream:
            if chunk is KEEPALIVE:
                continue
            if chunk_hook is not None:  # plugins see a whole answer's chunks too (a cache)
                chunk_hook(ctx, chunk)
            builder.add(translator.feed(chunk))
            if translator.done:
                break
        builder.add(translator.finish())
        message = builder.result()
    except Exception as exc:
        await upstream.aclose()
        await gateway.finish(ctx, upstream, usage=translator.usage, status=status_of(exc), error=exc, cut=True)
        if isinstance(exc, GatewayError):
            return error_response(exc, "anthropic", ctx.request_id)
        raise  # the app's error boundary answers a shaped 500 and logs the traceback
    await upstream.aclose()
    await gateway.finish(ctx, upstream, usage=translator.usage, status=200)  # never raises
    return json_response(message, headers=ctx.response_headers)


async def count_tokens_endpoint(request: Request) -> Response:
    """``POST /v1/messages/count_tokens`` with the target model's tokenizer."""
    gateway = _gateway(request)
    request_id = request.scope["state"]["request_id"]
    try:
        principal = await authenticate(request)
        raw = await read_json(request, gateway.config.server.max_request_bytes)
        check_message_count(raw, gateway.config.server.max_messages)
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), str):
            raise InvalidRequestError("model: required, a non-empty string")
        check_model_access(principal, raw["model"])  # the key's models: allowlist
        route = gateway.resolve_model(raw["model"])
        target = route.deployments[0].model if route.deployments else raw["model"]
        # Tokenizing a long conversation takes milliseconds: keep it off the event loop.
        tokens = await asyncio.to_thread(count_tokens, raw, encoding_for_model(target))
    except GatewayError as exc:
        return error_response(exc, "anthropic", request_id)
    return json_response({"input_tokens": tokens})


async def list_models_endpoint(request: Request) -> Response:
    """``GET /v1/models``: Anthropic's shape for Anthropic clients, OpenAI's otherwise.

    Concrete names only (``clasp_gateway.shell.served``): Claude Code's model discovery
    keeps ids containing "claude" and shows ``display_name`` and ``description``.
    """
    if "anthropic-version" not in request.headers:
        return await list_openai_models(request)
    gateway = _gateway(request)
    try:
        principal = await authenticate(request)
    except GatewayError as exc:
        return error_response(exc, "anthropic", request.scope["state"]["request_id"])
    _, created_at = created_timestamps()
    data = [m.anthropic(created_at) for m in served_models(gateway.config) if may_use_model(principal, m.id)]
    return json_response({
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    })


async def model_endpoint(request: Request) -> Response:
    """``GET /v1/models/{id}``: Anthropic's shape for Anthropic clients, OpenAI's
    otherwise; any name the gateway serves, a shaped 404 for others."""
    if "anthropic-version" not in request.headers:
        return await retrieve_openai_model(request)
    gateway = _gateway(request)
    request_id = request.scope["state"]["request_id"]
    try:
        principal = await authenticate(request)
        name = request.path_params["model_id"]
        model = describe_model(gateway.config, name)
        if model is None or not may_use_model(principal, model.id):
            raise NotFoundError(f"model {name!r} is not served by this gateway")
    except GatewayError as exc:
        return error_response(exc, "anthropic", request_id)
    _, created_at = created_timestamps()
    return json_response(model.anthropic(created_at))

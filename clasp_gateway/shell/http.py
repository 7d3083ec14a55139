"""HTTP helpers shared by every route: bounded JSON bodies, shaped errors, SSE."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ..errors import GatewayError, InvalidRequestError, RequestTooLargeError
from ..types import Principal

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}

_LIST_HEADERS = ("x-forwarded-for",)
"""Headers whose repeated lines are one comma-separated list (RFC 9110 5.3): a
client's own line must not hide the one its proxy added."""


def request_headers(request: Request) -> dict[str, str]:
    """The request headers as a plain dict with lower-case names."""
    raw = request.scope["headers"]
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw}
    if len(headers) != len(raw):  # a name was repeated (rare): keep every X-Forwarded-For hop
        for name in _LIST_HEADERS:
            values = [v.decode("latin-1") for k, v in raw if k == name.encode()]
            if len(values) > 1:
                headers[name] = ", ".join(values)
    return headers


def peer_address(request: Request) -> str | None:
    """The address of the connection's other end (a client or a proxy), or None."""
    client = request.scope.get("client")
    return str(client[0]) if client else None


def is_https(request: Request) -> bool:
    """Whether the client reached the gateway over https: directly (``server.tls``),
    through a TLS-terminating proxy declared with ``server.behind_https: true``, or
    through one of ``server.trusted_proxies`` that says so in ``X-Forwarded-Proto``
    (from anyone else that header is ignored). Decides cookies' ``Secure`` flag."""
    if request.url.scheme == "https":
        return True
    gateway = request.app.state.gateway
    if gateway.config.server.behind_https:
        return True
    proto = request.headers.get("x-forwarded-proto")
    if proto and gateway.guard.trusts(peer_address(request)):
        return proto.rsplit(",", 1)[-1].strip().lower() == "https"  # the nearest proxy's word
    return False


async def authenticate(request: Request) -> Principal:
    """Authenticate an HTTP request: the gateway's ``authenticate`` with the client's
    address (failed-key throttling), and the caller noted for the access log. Every
    route that needs a key calls this, so none can forget either part."""
    from .access import note

    principal: Principal = await request.app.state.gateway.authenticate(
        request_headers(request), client=peer_address(request), path=request.url.path)
    note(request, principal=principal)
    return principal


async def read_json(request: Request, limit: int) -> Any:
    """The request body parsed as JSON, refusing bodies over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidRequestError("invalid content-length header") from None
        if size > limit:
            raise RequestTooLargeError(f"request body is {size} bytes; this gateway accepts at most {limit}")
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise RequestTooLargeError(f"request body exceeds {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # The client left, or the server dropped it (server.timeouts.body): nobody
        # reads this answer, but it ends the request without a traceback.
        raise InvalidRequestError("the client closed the connection before sending the whole body") from None
    body = b"".join(chunks)
    if not body.strip():
        raise InvalidRequestError("request body is empty; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from None


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``data`` as a JSON response (orjson: several times faster than the standard library)."""
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type="application/json")


def error_body(error: GatewayError, shape: str = "anthropic", request_id: str | None = None) -> bytes:
    """``error`` as Anthropic- or OpenAI-shaped JSON bytes."""
    body = error.openai_body() if shape == "openai" else error.anthropic_body()
    if request_id and shape == "anthropic":
        body["request_id"] = request_id
    return orjson.dumps(body)


def error_response(error: GatewayError, shape: str = "anthropic", request_id: str | None = None) -> Response:
    """``error`` as an Anthropic- or OpenAI-shaped JSON response with its headers."""
    headers = dict(error.headers)
    # The request-id header itself is added to every response by the ErrorBoundary.
    if error.error_type == "overloaded_error" or error.status == 429:
        headers.setdefault("retry-after", "1")
    return Response(error_body(error, shape, request_id), status_code=error.status, headers=headers,
                    media_type="application/json")


def sse_event(name: str, payload: dict[str, Any]) -> bytes:
    """One SSE event in Anthropic's framing."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class EventStreamResponse:
    """Stream ``body`` (an async generator of bytes) as ``text/event-stream``.

    Unlike Starlette's StreamingResponse it always closes the generator
    (``aclose``) when the client goes away, so the generator's ``finally`` stops the
    upstream call and records what was spent. A disconnect is acted on at once, even
    while the generator waits for the upstream (a model thinking for a minute): the
    task is cancelled, the generator sees ``CancelledError`` where it waits, and the
    response then ends normally. That covers a client the server drops for not
    reading (``server.timeouts.send``): its pending write returns and it is cancelled.
    """

    __slots__ = ("body", "status", "headers")

    def __init__(self, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.body = body
        self.status = status
        raw = [(b"content-type", b"text/event-stream; charset=utf-8")]
        for name, value in {**SSE_HEADERS, **(headers or {})}.items():
            raw.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        self.headers = raw

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        watch = _DisconnectWatch(receive, asyncio.current_task())
        watch.arm()
        body = self.body
        try:
            await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
            async for data in body:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            if watch.task is not None:
                watch.task.uncancel()  # our own cancellation: the client left, a normal end
        finally:
            watch.end()
            await body.aclose()


class _DisconnectWatch:
    """Waits for the client's ``http.disconnect`` beside a streamed response and
    cancels the response's task when it comes.

    No reference cycle: the pending ``receive`` future points here through its done
    callback, this object drops the future when it ends, and nothing here points
    back at itself. A cycle here (two closures calling each other, as this was
    written before) kept each finished request's whole object graph (its context,
    the parsed request, the answer's state; ~165 objects with claude and fallback)
    alive until the cyclic collector found it: under load each young collection
    then freed thousands of objects, a pause of milliseconds in some request
    (``tests/test_request_garbage.py``)."""

    __slots__ = ("receive", "task", "future", "gone", "ended")

    def __init__(self, receive: Any, task: asyncio.Task[Any] | None) -> None:
        self.receive = receive
        self.task = task
        self.future: asyncio.Future[Any] | None = None
        self.gone = False
        """The client left (its disconnect, or ``receive`` failed): the task was cancelled."""
        self.ended = False

    def arm(self) -> None:
        self.future = asyncio.ensure_future(self.receive())
        self.future.add_done_callback(self.on_message)

    def on_message(self, done: asyncio.Future[Any]) -> None:
        if done.cancelled() or self.ended:
            return
        if done.exception() is not None or done.result().get("type") == "http.disconnect":
            self.gone = True
            if self.task is not None:
                self.task.cancel()
        else:  # request-body messages (already read by the route): keep watching
            self.arm()

    def end(self) -> None:
        """The response is over: stop watching (the pending ``receive`` is cancelled)."""
        self.ended = True
        future, self.future = self.future, None
        if future is not None and not future.done():
            future.cancel()

"""HTTP helpers shared by every route: bounded JSON bodies, shaped errors, SSE."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from .errors import GatewayError, InvalidRequestError, RequestTooLargeError

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def request_headers(request: Request) -> dict[str, str]:
    """The request headers as a plain dict with lower-case names."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}


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
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise RequestTooLargeError(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        raise InvalidRequestError("request body is empty; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from None


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type="application/json")


def error_response(error: GatewayError, shape: str = "anthropic", request_id: str | None = None) -> Response:
    """``error`` as an Anthropic- or OpenAI-shaped JSON response with its headers."""
    body = error.openai_body() if shape == "openai" else error.anthropic_body()
    headers = dict(error.headers)
    # The request-id header itself is added to every response by the ErrorBoundary.
    if request_id and shape == "anthropic":
        body["request_id"] = request_id
    if error.error_type == "overloaded_error" or error.status == 429:
        headers.setdefault("retry-after", "1")
    return Response(orjson.dumps(body), status_code=error.status, headers=headers, media_type="application/json")


def sse_event(name: str, payload: dict[str, Any]) -> bytes:
    """One SSE event in Anthropic's framing."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class EventStreamResponse:
    """Stream ``body`` (an async generator of bytes) as ``text/event-stream``.

    Unlike Starlette's StreamingResponse it always closes the generator
    (``aclose``) when the client goes away, so the generator's ``finally`` stops the
    upstream call and records what was spent, right away, not at garbage collection.
    A client disconnect is noticed at the next chunk.
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
        import asyncio

        watcher = asyncio.ensure_future(receive())
        body = self.body
        try:
            await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
            async for data in body:
                if watcher.done():
                    message = watcher.result()
                    if message["type"] == "http.disconnect":
                        break
                    watcher = asyncio.ensure_future(receive())
                await send({"type": "http.response.body", "body": data, "more_body": True})
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await body.aclose()
            if not watcher.done():
                watcher.cancel()

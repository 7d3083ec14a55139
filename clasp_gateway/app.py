"""The Starlette shell: routes, one ASGI middleware, start-up and shutdown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import openai_api
from .config import Config
from .errors import ApiError, GatewayError, NotFoundError
from .http import error_response, json_response, request_headers
from .pipeline import Gateway, new_request_id
from .plugins import PluginManager, await_me_maybe
from .served import claude_code_endpoint

log = logging.getLogger("clasp.app")

_OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def error_shape(path: str) -> str:
    """Which API's error shape a path answers with."""
    return "openai" if path.startswith(_OPENAI_PATHS) else "anthropic"


class ErrorBoundary:
    """Give every request an id, and turn any unexpected exception into a shaped 500.

    Nothing from the exception (it may hold request data) reaches the client; the
    traceback goes to the log under the request id.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", []).append((b"request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if started:
                log.exception("%s failed after the answer started", request_id)
                return
            if isinstance(exc, GatewayError):
                error = exc
            else:
                log.exception("%s unexpected error", request_id)
                error = ApiError("internal gateway error; see the gateway log for request " + request_id)
            response = error_response(error, error_shape(scope.get("path", "")), request_id)
            await response(scope, receive, send)


async def health(request: Request) -> Response:
    return json_response({"status": "ok"})


async def ready(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    if gateway.ready:
        return json_response({"status": "ready"})
    return json_response({"status": "starting"}, status=503)


async def list_plugins(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    await gateway.authenticate(request_headers(request))
    return json_response([info.as_dict() for info in gateway.pm.describe()])


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    shape = error_shape(request.url.path)
    if exc.status_code == 404:
        error: GatewayError = NotFoundError(f"no route {request.method} {request.url.path}")
    elif exc.status_code == 405:
        error = GatewayError(f"method {request.method} not allowed on {request.url.path}", status=405,
                             error_type="invalid_request_error")
    else:
        error = GatewayError(str(exc.detail), status=exc.status_code, error_type="invalid_request_error")
    return error_response(error, shape, request.scope.get("state", {}).get("request_id"))


def create_app(config: Config, pm: PluginManager | None = None, *, load_plugins: bool = True) -> Starlette:
    """Build the ASGI app for ``config``. Plugins load here, once per app."""
    if pm is None:
        pm = PluginManager()
        pm.load(config.plugin_paths, entry_points=load_plugins)
    gateway = Gateway(config, pm)

    routes: list[Route] = []
    for args, kwargs in pm.collect("register_routes"):
        path, endpoint = args[0], args[1]
        methods = kwargs.get("methods") or (args[2] if len(args) > 2 else ["POST"])
        routes.append(Route(path, endpoint, methods=list(methods), name=kwargs.get("name")))
    routes += [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/-/plugins", list_plugins, methods=["GET"]),
        Route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route("/v1/models", openai_api.list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", openai_api.retrieve_model, methods=["GET"]),
        Route("/-/claude-code", claude_code_endpoint, methods=["GET"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for warning in config.warnings:
            log.warning("%s", warning)
        for result in pm.hook.startup(app=app, config=config):
            await await_me_maybe(result)
        await gateway.start()
        log.info(
            "clasp gateway ready: %d model route(s), %d deployment(s), plugins: %s",
            len(config.models), len(config.deployments()),
            ", ".join(i.name for i in pm.describe() if i.source != "built-in") or "none",
        )
        try:
            yield
        finally:
            await gateway.close()
            for result in pm.hook.shutdown(app=app):
                await await_me_maybe(result)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_exception},
    )
    app.state.gateway = gateway
    app.state.config = config
    app.state.pm = pm
    asgi: Any = ErrorBoundary(app)
    for wrapper in pm.hook.asgi_wrapper(config=config):
        if wrapper is not None:
            asgi = wrapper(asgi)
    # Keep the Starlette app reachable (tests, lifespan) from the outermost wrapper.
    asgi.starlette_app = app  # type: ignore[attr-defined]
    return asgi  # type: ignore[no-any-return]

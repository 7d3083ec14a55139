"""The Starlette shell: routes, the error boundary, start-up and shutdown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import content_log, registrations, retention
from ..config import Config, ConfigError, plugin_problems, section_problems
from ..errors import ApiError, GatewayError, NotFoundError
from ..logs import request_id_var
from ..pipeline import Gateway, new_request_id
from ..plugins import PluginManager, call_each
from . import access, openai_api
from .admin import ADMIN_PREFIX, openapi_endpoint
from .cors import cors_middleware
from .http import authenticate, error_response, json_response
from .reload import reload_endpoint
from .served import claude_code_endpoint

log = logging.getLogger("clasp.app")

_OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


async def _stop(gateway: Gateway, pm: PluginManager, app: Starlette) -> None:
    """Every plugin's ``shutdown``, then close the gateway: plugins flush (the ledger,
    analytics' rows, budget settlements) while the database and the shared state are
    still open. Each step runs whatever the others do, so one failing (logged) never
    keeps the rest from closing. Also what a failed start-up undoes: closing what
    never started is a no-op for the gateway and for plugins' ``shutdown``."""

    def failed(plugin: str, exc: Exception) -> None:
        log.error("shutdown of plugin %s failed: %s: %s", plugin, type(exc).__name__, exc, exc_info=exc)

    await call_each(pm.hook.shutdown, app=app, on_failure=failed)
    try:
        await gateway.close()
    except Exception:
        log.exception("closing the gateway failed")


def error_shape(path: str) -> str:
    """Which API's error shape a path answers with."""
    return "openai" if path.startswith(_OPENAI_PATHS) else "anthropic"


async def _answer_exception(exc: Exception, scope: Scope, receive: Receive, send: Send, *, started: bool) -> None:
    """Answer an exception that escaped a route: a :class:`GatewayError` as itself,
    anything else as a shaped 500 naming the request id. The traceback goes to the log
    only (it may hold request data); an answer already started cannot be replaced."""
    request_id = scope.get("state", {}).get("request_id") or "-"
    if isinstance(exc, GatewayError):
        error: GatewayError = exc
    else:
        log.error("%s unexpected error on %s %s", request_id, scope.get("method"), scope.get("path"), exc_info=exc)
        error = ApiError("internal gateway error; see the gateway log for request " + request_id)
    if started:
        if isinstance(exc, GatewayError):
            log.warning("%s failed after the answer started: %s", request_id, exc.message)
        return
    response = error_response(error, error_shape(scope.get("path", "")), request_id)
    await response(scope, receive, send)


class ErrorBoundary:
    """The outermost layer: give every request an id (``request-id`` header), write its
    access line when it ends (:mod:`clasp_gateway.shell.access`), and answer anything that
    escaped everything inside (plugins' ASGI wrappers included) with a shaped error.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        path = scope.get("path", "")
        record = access.AccessRecord(
            request_id, scope.get("method", "-"), path, api=error_shape(path) if path.startswith("/v1/") else "-"
        )
        state[access.STATE_KEY] = record
        bound = request_id_var.set(request_id)  # every log line of this request names it (logs.py)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message.setdefault("headers", []).append((b"request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            await _answer_exception(exc, scope, receive, send_wrapper, started=record.status is not None)
        finally:
            access.write(record)
            request_id_var.reset(bound)


class ShapedErrors:
    """Inside Starlette's own ``ServerErrorMiddleware`` (which would answer a plain-text
    500 and re-raise): turn any exception a route raised into a shaped answer first."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            await _answer_exception(exc, scope, receive, send, started=started)


async def health(request: Request) -> Response:
    return json_response({"status": "ok"})


async def ready(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    if gateway.ready:
        return json_response({"status": "ready"})
    return json_response({"status": "starting"}, status=503)


async def list_plugins(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    try:
        await authenticate(request)
    except GatewayError as exc:
        return error_response(exc, "anthropic", request.scope["state"]["request_id"])
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


def build_gateway(config: Config, pm: PluginManager) -> Gateway:
    """Check everything that can be checked without serving, and build the Gateway
    (not started): top-level sections nobody reads, the core's own section checks
    (context, text tool calls, server tools: run while the Gateway is built) and every
    plugin's ``validate_config``. ``clasp check`` and ``clasp serve`` both come here
    (through :func:`create_app`), so a file one accepts, the other serves."""
    problems = section_problems(config, pm)
    try:
        gateway = Gateway(config, pm)
    except ConfigError as exc:
        if problems:
            raise ConfigError(config.source, problems + exc.problems) from None
        raise
    problems += plugin_problems(config, pm, gateway)
    if problems:
        raise ConfigError(config.source, problems)
    return gateway


def api_first(plugin_routes: list[Route], core_routes: list[Route]) -> list[Route]:
    """The router's order: every non-admin route (plugins' then the core's) before every
    ``/admin`` route (plugins' then the core's). Starlette tries routes in order, so
    ``/v1/messages`` would otherwise be matched against the dozens of admin routes the
    team plugins register first, on every request; a plugin's route still wins over the
    core's of the same path (admin and non-admin paths never overlap)."""
    def admin(route: Route) -> bool:
        return route.path.startswith(ADMIN_PREFIX) or route.path == ADMIN_PREFIX.rstrip("/")

    return ([r for r in plugin_routes if not admin(r)] + [r for r in core_routes if not admin(r)]
            + [r for r in plugin_routes if admin(r)] + [r for r in core_routes if admin(r)])


def create_app(config: Config, pm: PluginManager | None = None, *, load_plugins: bool = True) -> Starlette:
    """Build the ASGI app for ``config`` (validated: :func:`build_gateway`). Plugins
    load here, once per app."""
    if pm is None:
        pm = PluginManager()
        pm.load(config.plugin_paths, entry_points=load_plugins)
    content_log.register(pm, config.raw.get("logging"), "logging" in config.raw)  # prompts stay out of logs
    retention.register(pm, config.raw.get("retention"))  # the retention job, POST /admin/data/delete
    gateway = build_gateway(config, pm)

    plugin_routes = [Route(r.path, r.endpoint, methods=list(r.methods), name=r.name)
                     for r in registrations.routes(pm)]  # before the core's: a plugin's route wins
    core_routes = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/-/plugins", list_plugins, methods=["GET"]),
        Route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route("/v1/models", openai_api.list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", openai_api.retrieve_model, methods=["GET"]),
        Route("/-/claude-code", claude_code_endpoint, methods=["GET"]),
        # The admin API's document, from the docstrings of plugins' /admin/ routes (admin.py).
        Route("/admin/openapi.json", openapi_endpoint, methods=["GET"]),
        # Reload clasp.yaml in place (admin role; under `clasp serve`: reload.py).
        Route("/admin/reload", reload_endpoint, methods=["POST"]),
    ]
    routes = api_first(plugin_routes, core_routes)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for warning in config.warnings:
            log.warning("%s", warning)
        try:
            await call_each(pm.hook.startup, app=app, config=config)
            await gateway.start()
        except BaseException:
            # A start-up that fails part-way (a plugin, the database) would otherwise leave
            # what had started running: the plugins before it (tasks, connections) and,
            # on a reload that is refused, beside the configuration that goes on serving.
            await _stop(gateway, pm, app)
            raise
        log.info(
            "clasp gateway ready: %d model route(s), %d deployment(s), plugins: %s",
            len(config.models), len(config.deployments()),
            ", ".join(i.name for i in pm.describe() if i.source != "built-in") or "none",
        )
        try:
            yield
        finally:
            await _stop(gateway, pm, app)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[*cors_middleware(config.server), Middleware(ShapedErrors)],  # CORS (server.cors) outermost
        exception_handlers={HTTPException: _http_exception},
    )
    app.state.gateway = gateway
    app.state.config = config
    app.state.pm = pm
    asgi: Any = app
    for wrapper in pm.hook.asgi_wrapper(config=config):
        if wrapper is not None:
            asgi = wrapper(asgi)
    # Outermost, so plugins' wrappers see the request id and their answers are logged.
    boundary: Any = ErrorBoundary(asgi)
    # Keep the Starlette app reachable (tests, lifespan) from the outermost layer.
    boundary.starlette_app = app
    return boundary  # type: ignore[no-any-return]

"""The ``budgets_limits`` entry point: rate and concurrency limits per key, team and
user, and runaway-agent detection (see the package docstring for the pieces).

The per-request hooks live on a :class:`~.runtime.LimitsRuntime` registered in each
app's plugin manager at ``startup`` (it holds that app's state backend), like the
fallback plugin's runtime; this module holds the app-level hooks and the admin routes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from clasp_gateway import Config, ConfigError, InvalidRequestError, hookimpl, json_response, read_json, require_role

from .runtime import LimitsRuntime
from .settings import parse_settings

RUNTIME_PLUGIN = "limits.runtime"
MAX_ADMIN_BODY = 4096


@hookimpl
def register_config_sections(register: Callable[..., None]) -> None:
    """``limits:`` is this plugin's section."""
    register("limits")


@hookimpl
def validate_config(config: Config, gateway: Any) -> list[str] | None:
    """Check ``limits:`` for ``clasp check`` and before ``clasp serve`` binds."""
    try:
        parse_settings(config)
    except ConfigError as exc:
        return exc.problems
    return None


@hookimpl
def register_routes(register: Callable[..., None]) -> None:
    """``POST /admin/limits/unpause`` and ``GET /admin/limits/alerts`` (admin keys only)."""
    register("/admin/limits/unpause", unpause, methods=["POST"])
    register("/admin/limits/alerts", alerts, methods=["GET"])


@hookimpl
def startup(app: Starlette, config: Config) -> Any:
    """Build this app's runtime over ``gateway.state`` and register its hooks."""
    return _start(app, config)


async def _start(app: Starlette, config: Config) -> None:
    pm = app.state.pm
    previous = pm.get_plugin(RUNTIME_PLUGIN)
    if previous is not None:  # a restarted lifespan: replace the old runtime
        pm.unregister(previous)
        await previous.close()
    runtime = LimitsRuntime(app.state.gateway.state, parse_settings(config))
    await runtime.start()
    app.state.limits = runtime
    pm.register(runtime, name=RUNTIME_PLUGIN)


@hookimpl
def shutdown(app: Starlette) -> Any:
    """Unregister and close the runtime."""
    return _stop(app)


async def _stop(app: Starlette) -> None:
    runtime = getattr(app.state, "limits", None)
    if runtime is None:
        return
    pm = app.state.pm
    if pm.get_plugin(RUNTIME_PLUGIN) is runtime:
        pm.unregister(runtime)
    app.state.limits = None
    await runtime.close()


def _runtime(request: Request) -> LimitsRuntime:
    runtime = getattr(request.app.state, "limits", None)
    if runtime is None:
        raise InvalidRequestError("limits are not running in this gateway", status=503)
    return runtime  # type: ignore[no-any-return]


async def unpause(request: Request) -> Response:
    """Lift a runaway pause (every replica honours it at once).
    ---
    summary: Lift a runaway agent's pause
    requestBody:
      content:
        application/json:
          schema:
            type: object
            properties:
              key_id: {type: string, description: "the paused key's id"}
              user: {type: string, description: "the paused user (behind a shared key)"}
    responses:
      200: {description: "{\\"unpaused\\": true} when a pause was lifted, false when there was none"}
      400: {description: give exactly one of key_id and user}
      401: {description: no or wrong key}
      403: {description: not an admin key}
    """
    await require_role(request, "admin")
    body = await read_json(request, MAX_ADMIN_BODY)
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object with key_id or user")
    given = [(name, body.get(name)) for name in ("key_id", "user") if body.get(name) is not None]
    if len(given) != 1 or not isinstance(given[0][1], str) or not given[0][1] or len(given[0][1]) > 256:
        raise InvalidRequestError("give exactly one of key_id and user (a non-empty string)")
    name, value = given[0]
    subject = f"{'key' if name == 'key_id' else 'user'}:{value}"
    return json_response({"unpaused": await _runtime(request).unpause(subject), name: value})


async def alerts(request: Request) -> Response:
    """Runaway alerts this replica raised (the newest 100).
    ---
    summary: Recent runaway-agent alerts of this replica
    responses:
      200: {description: "{\\"alerts\\": [...]}"}
      401: {description: no or wrong key}
      403: {description: not an admin key}
    """
    await require_role(request, "admin")
    return json_response({"alerts": _runtime(request).alerts})

"""What every admin route of this plugin shares: the runtime it works on, refusals as
shaped errors (a database outage as a 503, never a 500), bounded paging and query
parameters, and the rule that a team_admin acts on its own team only."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response

from clasp_gateway import (
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    Principal,
    error_response,
)

from . import inputs
from .auth import KeyAuthenticator

log = logging.getLogger("clasp.keys")

MAX_BODY = 65536
RUNTIME = "budgets_keys.runtime"
Endpoint = Callable[[Request], Awaitable[Response]]


def runtime_of(request: Request) -> KeyAuthenticator:
    runtime = request.app.state.gateway.pm.get_plugin(RUNTIME)
    if runtime is None:
        raise GatewayError("virtual keys are turned off on this gateway (virtual_keys.enabled: false)", status=404,
                           error_type="not_found_error")
    assert isinstance(runtime, KeyAuthenticator)
    return runtime


def shaped(endpoint: Endpoint) -> Endpoint:
    """Every refusal as an Anthropic-shaped error (the admin API speaks one shape)."""

    @functools.wraps(endpoint)
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except GatewayError as exc:
            return error_response(exc)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:  # the database is down: retry later, not a 500
            log.warning("admin API: the key store is unavailable (%s)", type(exc).__name__)
            return error_response(GatewayError("the key store is unavailable; retry shortly", status=503,
                                               headers={"retry-after": "2"}))

    return run


def page(request: Request) -> tuple[int, int]:
    limit = int_param(request, "limit", inputs.PAGE_DEFAULT, 1, inputs.PAGE_MAX)
    offset = int_param(request, "offset", 0, 0, 10_000_000)
    return limit, offset


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidRequestError(f"{name}: expected an integer between {low} and {high}, got {raw[:40]!r}")
    return value


def text_param(request: Request, name: str, choices: tuple[str, ...] | None = None) -> str | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if len(raw) > 160 or (choices is not None and raw not in choices):
        expected = f"one of {', '.join(choices)}" if choices else "at most 160 characters"
        raise InvalidRequestError(f"{name}: expected {expected}")
    return raw


def own_team(principal: Principal, team: str | None) -> str | None:
    """The team a team_admin acts on (its own), refusing another."""
    if principal.role == "admin":
        return team
    if principal.team is None:
        raise PermissionDeniedError("this team_admin key belongs to no team, so it manages no keys")
    if team is not None and team != principal.team:
        raise PermissionDeniedError(f"a team_admin key manages its own team's keys only ({principal.team!r})")
    return principal.team


async def key_for(request: Request, principal: Principal) -> Any:
    """The key named by the path, if this caller may see it (else 404, as if absent)."""
    key_id = request.path_params["key_id"]
    row = await runtime_of(request).store.get_key(key_id)
    if principal.role != "admin" and (row["team"] != principal.team or principal.team is None):
        raise NotFoundError(f"no key with id {key_id!r}")
    return row



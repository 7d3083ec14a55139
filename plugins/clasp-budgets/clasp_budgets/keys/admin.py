"""The admin REST API for keys, teams and the audit log (``/admin/...``).

Who may do what: ``admin`` everything; ``team_admin`` its own team's keys (never an
``admin`` key, never another team's: another team's key reads as not found) and reading
its own team; ``member`` only ``GET /admin/me``. Every change writes an audit row in the
same transaction and announces itself so every replica's lookup cache drops it.

A created key is in exactly one answer (``201``, ``cache-control: no-store``); lists and
reads show its display prefix only. Bodies are bounded (64 KiB), pages too
(``limit`` up to 500). Each endpoint's docstring carries its OpenAPI description (after
``---``), which the core serves as ``/admin/openapi.json``.
"""

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
    json_response,
    read_json,
    require_role,
)

from . import inputs
from .auth import KeyAuthenticator
from .store import Actor, describe_audit, describe_key, describe_team

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


def _page(request: Request) -> tuple[int, int]:
    limit = _int_param(request, "limit", inputs.PAGE_DEFAULT, 1, inputs.PAGE_MAX)
    offset = _int_param(request, "offset", 0, 0, 10_000_000)
    return limit, offset


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
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


def _text_param(request: Request, name: str, choices: tuple[str, ...] | None = None) -> str | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if len(raw) > 160 or (choices is not None and raw not in choices):
        expected = f"one of {', '.join(choices)}" if choices else "at most 160 characters"
        raise InvalidRequestError(f"{name}: expected {expected}")
    return raw


def _own_team(principal: Principal, team: str | None) -> str | None:
    """The team a team_admin acts on (its own), refusing another."""
    if principal.role == "admin":
        return team
    if principal.team is None:
        raise PermissionDeniedError("this team_admin key belongs to no team, so it manages no keys")
    if team is not None and team != principal.team:
        raise PermissionDeniedError(f"a team_admin key manages its own team's keys only ({principal.team!r})")
    return principal.team


async def _key_for(request: Request, principal: Principal) -> Any:
    """The key named by the path, if this caller may see it (else 404, as if absent)."""
    key_id = request.path_params["key_id"]
    row = await runtime_of(request).store.get_key(key_id)
    if principal.role != "admin" and (row["team"] != principal.team or principal.team is None):
        raise NotFoundError(f"no key with id {key_id!r}")
    return row


# --- keys ---------------------------------------------------------------------------------------


@shaped
async def create_key(request: Request) -> Response:
    """Create a virtual key; the answer is the only place the key ever appears.
    ---
    summary: Create a virtual key
    tags: [keys]
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [name]
            properties:
              name: {type: string, maxLength: 128}
              team: {type: string, nullable: true}
              role: {type: string, enum: [member, team_admin, admin]}
              user_id: {type: string, nullable: true}
              project: {type: string, nullable: true}
              tags: {type: object, additionalProperties: {type: string}}
              metadata: {type: object}
              models: {type: array, items: {type: string}, nullable: true}
              rpm: {type: integer, minimum: 1, nullable: true}
              tpm: {type: integer, minimum: 1, nullable: true}
              rpd: {type: integer, minimum: 1, nullable: true}
              tpd: {type: integer, minimum: 1, nullable: true}
              max_concurrency: {type: integer, minimum: 1, nullable: true}
              max_budget_usd: {type: number, minimum: 0, nullable: true}
              budget_period: {type: string, enum: [daily, weekly, monthly, total], nullable: true}
              expires_at: {description: "unix seconds, ISO 8601, or a duration such as 30d", nullable: true}
              regions: {type: array, items: {type: string}, nullable: true}
    responses:
      201: {description: "The key (shown once) and its record"}
      400: {description: "Invalid field (the message names its path)"}
      401: {description: "No or invalid admin key"}
      403: {description: "The caller may not create this key"}
    """
    principal = await require_role(request, "admin", "team_admin")
    runtime = runtime_of(request)
    values = inputs.parse_body(inputs.key_create(runtime.clock()), await read_json(request, MAX_BODY), partial=False)
    values["team"] = _own_team(principal, values.get("team"))
    if principal.role != "admin" and values.get("role") == "admin":
        raise PermissionDeniedError("a team_admin key cannot create admin keys")
    key, row = await runtime.store.create_key(values, Actor.of(principal))
    await runtime.announce(key_id=row["id"])
    return json_response({"key": key, **describe_key(row, runtime.clock())}, status=201,
                         headers={"cache-control": "no-store"})


@shaped
async def list_keys(request: Request) -> Response:
    """List keys (never the keys themselves), newest first.
    ---
    summary: List virtual keys
    tags: [keys]
    parameters:
      - {name: team, in: query, schema: {type: string}}
      - {name: name, in: query, schema: {type: string}}
      - {name: user_id, in: query, schema: {type: string}}
      - {name: project, in: query, schema: {type: string}}
      - {name: role, in: query, schema: {type: string, enum: [member, team_admin, admin]}}
      - {name: status, in: query, schema: {type: string, enum: [active, revoked, expired]}}
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 500, default: 50}}
      - {name: offset, in: query, schema: {type: integer, minimum: 0, default: 0}}
    responses:
      200: {description: "data (keys), total, limit, offset"}
      400: {description: "Invalid filter"}
      401: {description: "No or invalid admin key"}
      403: {description: "Not an admin or team_admin key, or another team"}
    """
    principal = await require_role(request, "admin", "team_admin")
    runtime = runtime_of(request)
    limit, offset = _page(request)
    team = _own_team(principal, _text_param(request, "team"))
    rows, total = await runtime.store.list_keys(
        team=team, name=_text_param(request, "name"), user_id=_text_param(request, "user_id"),
        project=_text_param(request, "project"), role=_text_param(request, "role", inputs.ROLES),
        status=_text_param(request, "status", ("active", "revoked", "expired")), limit=limit, offset=offset)
    now = runtime.clock()
    return json_response({"data": [describe_key(r, now) for r in rows], "total": total, "limit": limit,
                          "offset": offset})


@shaped
async def get_key(request: Request) -> Response:
    """One key's record.
    ---
    summary: Get a virtual key
    tags: [keys]
    parameters:
      - {name: key_id, in: path, required: true, schema: {type: string}}
    responses:
      200: {description: "The key's record (no key)"}
      401: {description: "No or invalid admin key"}
      403: {description: "Not an admin or team_admin key"}
      404: {description: "No such key (or another team's)"}
    """
    principal = await require_role(request, "admin", "team_admin")
    row = await _key_for(request, principal)
    return json_response(describe_key(row, runtime_of(request).clock()))


@shaped
async def update_key(request: Request) -> Response:
    """Change a key's policy, metadata, name, owner, project or tags (not its team or role).
    ---
    summary: Update a virtual key
    tags: [keys]
    parameters:
      - {name: key_id, in: path, required: true, schema: {type: string}}
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            description: "Any of the fields of a new key except team and role; null clears a limit"
    responses:
      200: {description: "The updated record"}
      400: {description: "Invalid field"}
      401: {description: "No or invalid admin key"}
      403: {description: "Not an admin or team_admin key"}
      404: {description: "No such key (or another team's)"}
    """
    principal = await require_role(request, "admin", "team_admin")
    runtime = runtime_of(request)
    values = inputs.parse_body(inputs.key_update(runtime.clock()), await read_json(request, MAX_BODY), partial=True)
    row = await _key_for(request, principal)
    if principal.role != "admin" and row["role"] == "admin":
        raise PermissionDeniedError("a team_admin key cannot change admin keys")
    updated = await runtime.store.update_key(row["id"], values, Actor.of(principal))
    await runtime.announce(key_id=row["id"])
    return json_response(describe_key(updated, runtime.clock()))


@shaped
async def revoke_key(request: Request) -> Response:
    """Revoke a key: refused on every replica within a second (shared state), or within
    the cache TTL without one.
    ---
    summary: Revoke a virtual key
    tags: [keys]
    parameters:
      - {name: key_id, in: path, required: true, schema: {type: string}}
    responses:
      200: {description: "The revoked key's record"}
      401: {description: "No or invalid admin key"}
      403: {description: "Not an admin or team_admin key"}
      404: {description: "No such key (or another team's)"}
    """
    principal = await require_role(request, "admin", "team_admin")
    runtime = runtime_of(request)
    row = await _key_for(request, principal)
    if principal.role != "admin" and row["role"] == "admin":
        raise PermissionDeniedError("a team_admin key cannot revoke admin keys")
    revoked = await runtime.store.revoke_key(row["id"], Actor.of(principal))
    await runtime.announce(key_id=row["id"])
    return json_response(describe_key(revoked, runtime.clock()))


# --- teams --------------------------------------------------------------------------------------


@shaped
async def create_team(request: Request) -> Response:
    """Create a team; its limits are ceilings for each of its keys.
    ---
    summary: Create a team
    tags: [teams]
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [name]
            properties:
              name: {type: string, maxLength: 64}
              metadata: {type: object}
              models: {type: array, items: {type: string}, nullable: true}
              rpm: {type: integer, minimum: 1, nullable: true}
              max_budget_usd: {type: number, minimum: 0, nullable: true}
              budget_period: {type: string, enum: [daily, weekly, monthly, total], nullable: true}
    responses:
      201: {description: "The team"}
      400: {description: "Invalid field"}
      401: {description: "No or invalid admin key"}
      403: {description: "Not an admin key"}
      409: {description: "The team exists"}
    """
    principal = await require_role(request, "admin")
    runtime = runtime_of(request)
    values = inputs.parse_body(inputs.team_create(runtime.clock()), await read_json(request, MAX_BODY), partial=False)
    row = await runtime.store.create_team(values, Actor.of(principal))
    return json_response(describe_team(row, 0), status=201)


@shaped
async def list_teams(request: Request) -> Response:
    """List teams (a team_admin sees its own).
    ---
    summary: List teams
    tags: [teams]
    parameters:
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 500, default: 50}}
      - {name: offset, in: query, schema: {type: integer, minimum: 0, default: 0}}
    responses:
      200: {description: "data (teams), total, limit, offset"}
      401: {description: "No or invalid admin key"}
      403: {description: "Not an admin or team_admin key"}
    """
    principal = await require_role(request, "admin", "team_admin")
    limit, offset = _page(request)
    names = None if principal.role == "admin" else [principal.team] if principal.team else []
    rows, total = await runtime_of(request).store.list_teams(limit=limit, offset=offset, names=names)
    return json_response({"data": [describe_team(r, n) for r, n in rows], "total": total, "limit": limit,
                          "offset": offset})


@shaped
async def get_team(request: Request) -> Response:
    """One team, with its count of active keys.
    ---
    summary: Get a team
    tags: [teams]
    parameters:
      - {name: name, in: path, required: true, schema: {type: string}}
    responses:
      200: {description: "The team"}
      401: {description: "No or invalid admin key"}
      403: {description: "Not an admin key, or another team's team_admin"}
      404: {description: "No such team"}
    """
    principal = await require_role(request, "admin", "team_admin")
    name = inputs.check_team_name(request.path_params["name"])
    _own_team(principal, name)
    row, count = await runtime_of(request).store.get_team(name)
    return json_response(describe_team(row, count))


@shaped
async def update_team(request: Request) -> Response:
    """Change a team's limits or metadata (its keys' lookups are refreshed everywhere).
    ---
    summary: Update a team
    tags: [teams]
    parameters:
      - {name: name, in: path, required: true, schema: {type: string}}
    requestBody:
      required: true
      content:
        application/json:
          schema: {type: object, description: "metadata and policy fields; null clears a limit"}
    responses:
      200: {description: "The team"}
      400: {description: "Invalid field"}
      401: {description: "No or invalid admin key"}
      403: {description: "Not an admin key"}
      404: {description: "No such team"}
    """
    principal = await require_role(request, "admin")
    runtime = runtime_of(request)
    name = inputs.check_team_name(request.path_params["name"])
    values = inputs.parse_body(inputs.team_update(runtime.clock()), await read_json(request, MAX_BODY), partial=True)
    row = await runtime.store.update_team(name, values, Actor.of(principal))
    await runtime.announce(team=name)
    _, count = await runtime.store.get_team(name)
    return json_response(describe_team(row, count))


@shaped
async def delete_team(request: Request) -> Response:
    """Delete a team without active keys.
    ---
    summary: Delete a team
    tags: [teams]
    parameters:
      - {name: name, in: path, required: true, schema: {type: string}}
    responses:
      200: {description: "Deleted"}
      401: {description: "No or invalid admin key"}
      403: {description: "Not an admin key"}
      404: {description: "No such team"}
      409: {description: "The team still has active keys"}
    """
    principal = await require_role(request, "admin")
    runtime = runtime_of(request)
    name = inputs.check_team_name(request.path_params["name"])
    await runtime.store.delete_team(name, Actor.of(principal))
    await runtime.announce(team=name)
    return json_response({"deleted": name})


# --- audit log and the caller ------------------------------------------------------------------


@shaped
async def list_audit(request: Request) -> Response:
    """The audit log, newest first: who changed what (never a key).
    ---
    summary: List the audit log
    tags: [audit]
    parameters:
      - {name: action, in: query, schema: {type: string}}
      - {name: actor, in: query, schema: {type: string}, description: "an actor's key id or name"}
      - {name: target, in: query, schema: {type: string}}
      - {name: since, in: query, schema: {type: string}, description: "unix seconds or ISO 8601"}
      - {name: until, in: query, schema: {type: string}, description: "unix seconds or ISO 8601"}
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 500, default: 50}}
      - {name: offset, in: query, schema: {type: integer, minimum: 0, default: 0}}
    responses:
      200: {description: "data (audit rows), total, limit, offset"}
      400: {description: "Invalid filter"}
      401: {description: "No or invalid admin key"}
      403: {description: "Not an admin key"}
    """
    await require_role(request, "admin")
    runtime = runtime_of(request)
    limit, offset = _page(request)
    times: dict[str, float | None] = {}
    for name in ("since", "until"):
        raw = _text_param(request, name)
        times[name] = None
        if raw is not None:
            try:
                times[name] = inputs.parse_time(float(raw) if raw.replace(".", "", 1).isdigit() else raw,
                                                runtime.clock())
            except ValueError:
                raise InvalidRequestError(f"{name}: expected unix seconds or an ISO 8601 time") from None
    rows, total = await runtime.store.list_audit(
        action=_text_param(request, "action"), actor=_text_param(request, "actor"),
        target=_text_param(request, "target"), since=times["since"], until=times["until"], limit=limit, offset=offset)
    return json_response({"data": [describe_audit(r) for r in rows], "total": total, "limit": limit,
                          "offset": offset})


@shaped
async def me(request: Request) -> Response:
    """The caller's own key: who it is, its effective limits (its team's included).
    ---
    summary: The calling key
    tags: [keys]
    responses:
      200: {description: "The caller's key information (never the key)"}
      401: {description: "No or invalid key"}
    """
    principal = await require_role(request, "admin", "team_admin", "member")
    runtime = request.app.state.gateway.pm.get_plugin(RUNTIME)
    answer: dict[str, Any] = {
        "id": principal.key_id, "name": principal.name, "team": principal.team, "role": principal.role,
        "project": principal.project, "tags": dict(principal.tags), "kind": "static",
    }
    policy = {k: (list(v) if isinstance(v, tuple) else v) for k, v in _policy_items(principal)}
    policy["expires_at"] = inputs.iso(principal.policy.expires_at)
    answer["effective_policy"] = policy
    if isinstance(runtime, KeyAuthenticator) and principal.key_id.startswith("key_"):
        try:
            row = await runtime.store.get_key(principal.key_id)
        except NotFoundError:
            row = None
        if row is not None:
            answer.update(kind="virtual", key=describe_key(row, runtime.clock()))
    return json_response(answer)


def _policy_items(principal: Principal) -> list[tuple[str, Any]]:
    from .tables import POLICY_FIELDS

    return [(name, getattr(principal.policy, name)) for name in POLICY_FIELDS]


ROUTES: list[tuple[str, Endpoint, list[str]]] = [
    ("/admin/keys", create_key, ["POST"]),
    ("/admin/keys", list_keys, ["GET"]),
    ("/admin/keys/{key_id}", get_key, ["GET"]),
    ("/admin/keys/{key_id}", update_key, ["PATCH"]),
    ("/admin/keys/{key_id}/revoke", revoke_key, ["POST"]),
    ("/admin/teams", create_team, ["POST"]),
    ("/admin/teams", list_teams, ["GET"]),
    ("/admin/teams/{name}", get_team, ["GET"]),
    ("/admin/teams/{name}", update_team, ["PATCH"]),
    ("/admin/teams/{name}", delete_team, ["DELETE"]),
    ("/admin/audit", list_audit, ["GET"]),
    ("/admin/me", me, ["GET"]),
]

"""The admin API's key routes: create (the key in that one answer), list, read, update,
revoke, and ``GET /admin/me``. Each docstring's YAML after ``---`` is its OpenAPI entry."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from clasp_gateway import (
    NotFoundError,
    PermissionDeniedError,
    Principal,
    json_response,
    read_json,
    require_role,
)

from . import inputs
from .auth import KeyAuthenticator
from .store import Actor, describe_key
from .web import MAX_BODY, RUNTIME, key_for, own_team, page, runtime_of, shaped, text_param

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
    values["team"] = own_team(principal, values.get("team"))
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
    limit, offset = page(request)
    team = own_team(principal, text_param(request, "team"))
    rows, total = await runtime.store.list_keys(
        team=team, name=text_param(request, "name"), user_id=text_param(request, "user_id"),
        project=text_param(request, "project"), role=text_param(request, "role", inputs.ROLES),
        status=text_param(request, "status", ("active", "revoked", "expired")), limit=limit, offset=offset)
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
    row = await key_for(request, principal)
    return json_response(describe_key(row, runtime_of(request).clock()))


@shaped
async def update_key(request: Request) -> Response:
    """Change any of a key's fields in place, its team and role included: the key keeps
    working, and every replica sees the change on its next request (its lookup cache
    drops the key). One audit row (``key.update``: the changes, and the team and role
    before when they change). A team_admin changes its own team's keys only, keeps them
    in its team and cannot grant ``admin``.
    ---
    summary: Update a virtual key (team and role included)
    tags: [keys]
    parameters:
      - {name: key_id, in: path, required: true, schema: {type: string}}
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            description: "Only the fields to change; null clears a limit, the expiry or the team"
            properties:
              name: {type: string, maxLength: 128}
              team: {type: string, nullable: true, description: "an existing team, or null for none"}
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
      200: {description: "The updated record"}
      400: {description: "Invalid field (the message names its path), or the key is revoked"}
      401: {description: "No or invalid admin key"}
      403: {description: "Not an admin or team_admin key; a team_admin moving a key out of its team or granting admin"}
      404: {description: "No such key (or another team's), or no such team"}
    """
    principal = await require_role(request, "admin", "team_admin")
    runtime = runtime_of(request)
    values = inputs.parse_body(inputs.key_update(runtime.clock()), await read_json(request, MAX_BODY), partial=True)
    row = await key_for(request, principal)
    if principal.role != "admin":
        if row["role"] == "admin" or values.get("role") == "admin":
            raise PermissionDeniedError("a team_admin key cannot grant or change the admin role")
        if "team" in values and values["team"] != principal.team:
            raise PermissionDeniedError(f"a team_admin key keeps keys in its own team ({principal.team!r})")
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
    row = await key_for(request, principal)
    if principal.role != "admin" and row["role"] == "admin":
        raise PermissionDeniedError("a team_admin key cannot revoke admin keys")
    revoked = await runtime.store.revoke_key(row["id"], Actor.of(principal))
    await runtime.announce(key_id=row["id"])
    return json_response(describe_key(revoked, runtime.clock()))


@shaped
async def assign_key(request: Request) -> Response:
    """Move a key to another team and/or change its role (audited as ``key.assign``).
    ---
    summary: Change a virtual key's team or role
    tags: [keys]
    parameters:
      - {name: key_id, in: path, required: true, schema: {type: string}}
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            properties:
              team: {type: string, nullable: true, description: "an existing team, or null for none (admin only)"}
              role: {type: string, enum: [member, team_admin, admin]}
    responses:
      200: {description: "The updated record"}
      400: {description: "Invalid field, or nothing to change"}
      401: {description: "No or invalid admin key"}
      403: {description: "A team_admin moving a key out of its team, or granting admin"}
      404: {description: "No such key (or another team's), or no such team"}
    """
    principal = await require_role(request, "admin", "team_admin")
    runtime = runtime_of(request)
    body = await read_json(request, MAX_BODY)
    changes = inputs.assignment(body)
    row = await key_for(request, principal)
    if principal.role != "admin":
        if row["role"] == "admin" or changes.get("role") == "admin":
            raise PermissionDeniedError("a team_admin key cannot grant or change the admin role")
        if "team" in changes and changes["team"] != principal.team:
            raise PermissionDeniedError(f"a team_admin key keeps keys in its own team ({principal.team!r})")
    updated = await runtime.store.assign_key(row["id"], changes, Actor.of(principal))
    await runtime.announce(key_id=row["id"])
    return json_response(describe_key(updated, runtime.clock()))


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


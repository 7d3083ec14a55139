"""The admin API's team routes and the audit log. Each docstring's YAML after ``---`` is
its OpenAPI entry."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from clasp_gateway import (
    InvalidRequestError,
    json_response,
    read_json,
    require_role,
)

from . import inputs
from .store import Actor, describe_audit, describe_team
from .web import MAX_BODY, own_team, page, runtime_of, shaped, text_param

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
    limit, offset = page(request)
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
    own_team(principal, name)
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
    limit, offset = page(request)
    times: dict[str, float | None] = {}
    for name in ("since", "until"):
        raw = text_param(request, name)
        times[name] = None
        if raw is not None:
            try:
                times[name] = inputs.parse_time(float(raw) if raw.replace(".", "", 1).isdigit() else raw,
                                                runtime.clock())
            except ValueError:
                raise InvalidRequestError(f"{name}: expected unix seconds or an ISO 8601 time") from None
    rows, total = await runtime.store.list_audit(
        action=text_param(request, "action"), actor=text_param(request, "actor"),
        target=text_param(request, "target"), since=times["since"], until=times["until"], limit=limit, offset=offset)
    return json_response({"data": [describe_audit(r) for r in rows], "total": total, "limit": limit,
                          "offset": offset})



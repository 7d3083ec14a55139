"""``/admin/budgets``: every budget with its current spend, reservations, what is left
and when it resets (``GET``); budgets stored in the database created, changed and
removed (``POST``, ``PUT /admin/budgets/{name}``, ``DELETE /admin/budgets/{name}``).

Who may look: ``admin`` sees every budget; ``team_admin`` sees its own team's budgets
(and the global ones, read-only context for its own), and may create, change and
remove only budgets of scope ``team`` matching its own team; anyone else gets a 403.
Budgets of clasp.yaml and of keys' policies are listed but not editable here. A budget
per subject (every team, every user...) is listed for the subjects named in the query
(``?team=platform&user=alice``), those this process served this period, and every
subject the records know (spend in the ledger this period, teams and keys in the key
store: :mod:`.subjects`), so each team's, key's, project's and user's budget is listed
with its spend on any replica; ``?subjects=seen`` skips the records.
"""

from __future__ import annotations

import time
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

from .reservations import Slot
from .runtime import BudgetRuntime
from .settings import LIMIT, BudgetSpec, spec_from
from .subjects import recorded_subjects

ROLES = ("admin", "team_admin")


async def require_admin(request: Request) -> Principal:
    """The caller, if it may use the budgets API (raises a shaped 401/403 otherwise)."""
    return await require_role(request, *ROLES)


def visible(principal: Principal, slot: Slot) -> bool:
    if principal.role == "admin":
        return True
    return slot.spec.scope == "global" or (slot.spec.scope == "team" and slot.subject == principal.team)


async def list_budgets(request: Request) -> Response:
    """List budgets with their spend.
    ---
    summary: Budgets with current spend, reservations, remaining and reset time
    parameters:
      - {name: team, in: query, schema: {type: string}}
      - {name: key, in: query, schema: {type: string}}
      - {name: project, in: query, schema: {type: string}}
      - {name: user, in: query, schema: {type: string}}
      - {name: subjects, in: query, schema: {type: string, enum: [all, seen]},
         description: "all (default): every subject with records; seen: only those named or served here"}
    responses:
      200: {description: "{budgets: [{name, scope, subject, period, limit_usd, spent_usd, reserved_usd, remaining_usd, resets_at, mode, source}], truncated}"}
      401: {description: no or invalid key}
      403: {description: not an admin or team_admin key}
    """
    try:
        principal = await require_admin(request)
    except GatewayError as exc:
        return error_response(exc)
    runtime: BudgetRuntime = request.app.state.clasp_budgets
    await runtime.wait_ready()
    asked = {scope: request.query_params.get(scope) for scope in ("team", "key", "project", "user")}
    known = runtime.known_slots(asked)
    truncated = False
    gateway = request.app.state.gateway
    per_subject = [s for s in (*runtime.settings.limits, *runtime.stored.specs) if s.scope != "global" and s.match is None]
    if per_subject and gateway.has_database and request.query_params.get("subjects") != "seen":
        now_at = runtime.clock()
        wanted = [(spec, runtime.slot(spec, "*", now_at).period.start) for spec in per_subject]
        try:
            recorded, truncated = await recorded_subjects(gateway.database, wanted)
        except (OSError, TimeoutError, SQLAlchemyError) as exc:
            return error_response(GatewayError(f"the records are unavailable ({type(exc).__name__}); retry, or "
                                               "ask ?subjects=seen", status=503, headers={"retry-after": "2"}))
        have = {slot.key for slot in known}
        for spec in per_subject:
            for subject in recorded.get(spec.name, []):
                slot = runtime.slot(spec, subject, now_at)
                if slot.key not in have:
                    have.add(slot.key)
                    known.append(slot)
    slots = [s for s in known if visible(principal, s)]
    standings = await runtime.reservations.status(slots)
    now = time.time()
    out: list[dict[str, Any]] = []
    for slot, (spent, reserved) in zip(slots, standings, strict=True):
        spec = slot.spec
        out.append({
            "name": spec.name, "scope": spec.scope, "subject": slot.subject, "period": spec.period,
            "period_start": slot.period.label, "resets_at": slot.period.resets_at(), "mode": spec.mode,
            "limit_usd": spec.usd, "spent_usd": round(spent, 6), "reserved_usd": round(reserved, 6),
            "remaining_usd": round(max(0.0, spec.usd - spent - reserved), 6), "source": spec.source,
            "lower_max_tokens": spec.lower_max_tokens, "on_outage": spec.on_outage,
            "seconds_to_reset": None if slot.period.end is None else round(slot.period.end - now),
        })
    return json_response({"budgets": out, "truncated": truncated})


def _may_edit(principal: Principal, spec: BudgetSpec) -> None:
    if principal.role == "admin":
        return
    if spec.scope != "team" or spec.match != principal.team:
        raise PermissionDeniedError(
            f"a team_admin may only manage budgets with scope: team and match: {principal.team!r}")


async def _parse(request: Request, name: str | None) -> BudgetSpec:
    body = await read_json(request, 65536)
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object describing a budget")
    if name is not None:
        body = {**body, "name": name}
    problems: list[str] = []
    parsed = LIMIT.parse(body, "budget", problems)
    if problems:
        raise InvalidRequestError("; ".join(problems))
    if parsed.get("scope") == "global" and parsed.get("match") is not None:
        raise InvalidRequestError("budget.match: a global budget applies to every request; remove match")
    return spec_from(parsed, source="database")


async def create_budget(request: Request) -> Response:
    """Create a budget stored in the database.
    ---
    summary: Create a budget (body as a clasp.yaml budgets.limits entry)
    responses:
      201: {description: "the budget"}
      400: {description: "invalid budget"}
      409: {description: "a budget of that name exists"}
    """
    try:
        principal = await require_admin(request)
        runtime: BudgetRuntime = request.app.state.clasp_budgets
        spec = await _parse(request, None)
        _may_edit(principal, spec)
        if any(s.name == spec.name for s in runtime.settings.limits) or not await runtime.stored.upsert(
                spec, principal.name or principal.key_id, create=True):
            raise GatewayError(f"a budget named {spec.name!r} exists", status=409, error_type="invalid_request_error")
    except GatewayError as exc:
        return error_response(exc)
    return json_response({"budget": {**_public(spec)}}, status=201)


async def update_budget(request: Request) -> Response:
    """Change a budget stored in the database.
    ---
    summary: Replace a stored budget's settings
    responses:
      200: {description: "the budget"}
      404: {description: "no stored budget of that name"}
    """
    try:
        principal = await require_admin(request)
        runtime: BudgetRuntime = request.app.state.clasp_budgets
        spec = await _parse(request, request.path_params["name"])
        _may_edit(principal, spec)
        current = next((s for s in runtime.stored.specs if s.name == spec.name), None)
        if current is None:
            raise NotFoundError(f"no budget named {spec.name!r} is stored (budgets of clasp.yaml are edited there)")
        _may_edit(principal, current)
        await runtime.stored.upsert(spec, principal.name or principal.key_id, create=False)
    except GatewayError as exc:
        return error_response(exc)
    return json_response({"budget": _public(spec)})


async def delete_budget(request: Request) -> Response:
    """Remove a budget stored in the database.
    ---
    summary: Remove a stored budget
    responses:
      200: {description: "removed"}
      404: {description: "no stored budget of that name"}
    """
    try:
        principal = await require_admin(request)
        runtime: BudgetRuntime = request.app.state.clasp_budgets
        name = request.path_params["name"]
        current = next((s for s in runtime.stored.specs if s.name == name), None)
        if current is None:
            raise NotFoundError(f"no budget named {name!r} is stored")
        _may_edit(principal, current)
        await runtime.stored.remove(name)
    except GatewayError as exc:
        return error_response(exc)
    return json_response({"deleted": name})


def _public(spec: BudgetSpec) -> dict[str, Any]:
    return {"name": spec.name, "scope": spec.scope, "match": spec.match, "usd": spec.usd, "period": spec.period,
            "mode": spec.mode, "lower_max_tokens": spec.lower_max_tokens, "min_tokens": spec.min_tokens,
            "on_outage": spec.on_outage, "local_cap_usd": spec.local_cap_usd, "thresholds": list(spec.thresholds),
            "max_wait": spec.max_wait, "source": spec.source}

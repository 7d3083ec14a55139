"""``GET /admin/budgets``: every budget with its current spend, reservations, what is
left and when it resets.

Who may look: ``admin`` sees every budget; ``team_admin`` sees its own team's budgets
(and the global ones, read-only context for its own); anyone else gets a 403. A budget
per subject (every team, every user...) is listed for the subjects named in the query
(``?team=platform&user=alice``) and those this process served this period.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from clasp_gateway import GatewayError, PermissionDeniedError, Principal, authenticate, error_response, json_response

from .reservations import Slot
from .runtime import BudgetRuntime

ROLES = ("admin", "team_admin")


async def require_admin(request: Request) -> Principal:
    """The caller, if it may read budgets (raises a shaped 401/403 otherwise)."""
    principal = await authenticate(request)
    if principal.role not in ROLES:
        raise PermissionDeniedError("the admin API needs a key with the admin or team_admin role")
    return principal


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
    responses:
      200: {description: "{budgets: [{name, scope, subject, period, limit_usd, spent_usd, reserved_usd, remaining_usd, resets_at, mode, source}]}"}
      401: {description: no or invalid key}
      403: {description: not an admin or team_admin key}
    """
    try:
        principal = await require_admin(request)
    except GatewayError as exc:
        return error_response(exc)
    runtime: BudgetRuntime = request.app.state.clasp_budgets
    asked = {scope: request.query_params.get(scope) for scope in ("team", "key", "project", "user")}
    slots = [s for s in runtime.known_slots(asked) if visible(principal, s)]
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
    return json_response({"budgets": out})

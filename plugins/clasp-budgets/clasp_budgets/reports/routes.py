"""The admin API's spend reports: ``/admin/usage``, ``/admin/reports/spend``,
``/admin/reports/projection`` and ``/admin/reports/savings``.

Every route takes an ``admin``, ``team_admin`` or ``member`` key
(:func:`clasp_gateway.require_role`): an admin sees everything, a team admin its
team's usage, a member its own key's; the filter comes from the caller's key, never
from the request, so a member cannot widen it (a ``key=`` or ``team=`` parameter
only narrows within it).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from clasp_gateway import Config, InvalidRequestError, Principal, json_response, require_role

from .filters import ReportError, Scope
from .projection import PERIODS, projection
from .savings import savings
from .spend import spend

_OWN = ("period", "min_requests")
"""Query parameters some routes read themselves (not dimensions)."""


def scope_for(request: Request, principal: Principal) -> Scope:
    """The report's scope from the query string, narrowed to what ``principal`` may see."""
    params = {k: v for k, v in request.query_params.items() if k not in _OWN}
    try:
        scope = Scope.parse(params)
    except ReportError as exc:
        raise InvalidRequestError(str(exc)) from None
    if principal.role == "admin":
        return scope
    if principal.role == "team_admin" and principal.team:
        return scope.restricted(team=principal.team)
    return scope.restricted(key=principal.key_id)


async def _caller(request: Request) -> Principal:
    return await require_role(request, "admin", "team_admin", "member")


async def usage(request: Request) -> Response:
    """Spend by dimension and time bucket.
    ---
    summary: Spend, tokens, errors and cache savings, grouped and bucketed
    description: >
      An admin sees every request, a team admin its team's, a member its own key's.
      Dimensions for `by` and as filters: provider, model, deployment, public_model,
      key, team, project, user, request_class, region, tag:NAME.
    parameters:
      - {name: by, in: query, schema: {type: string}, description: "comma list of dimensions, e.g. provider,model"}
      - {name: bucket, in: query, schema: {type: string, enum: [hour, day, week, month]}}
      - {name: since, in: query, schema: {type: string}, description: unix seconds or an ISO date (UTC)}
      - {name: until, in: query, schema: {type: string}}
      - {name: team, in: query, schema: {type: string}, description: "a filter; any dimension works the same"}
    responses:
      200: {description: "{total: {...}, groups: [{<dimensions>, requests, errors, cost_usd, ...}]}"}
      400: {description: "an unknown dimension, bucket or date"}
      401: {description: "no key, or a wrong one"}
    """
    principal = await _caller(request)
    scope = scope_for(request, principal)
    async with request.app.state.gateway.database.connect() as conn:
        return json_response(await spend(conn, scope))


def static_budgets(config: Config) -> dict[tuple[str, str, str], float]:
    """``("key", key_id, period) -> USD`` for clasp.yaml keys with a budget."""
    found: dict[tuple[str, str, str], float] = {}
    for key in config.keys:
        policy = key.policy
        if policy.max_budget_usd is None or policy.budget_period not in PERIODS or not key.secret.value:
            continue
        key_id = hashlib.sha256(key.secret.value.encode()).hexdigest()[:12]  # the core's key id
        found[("key", key_id, policy.budget_period)] = policy.max_budget_usd
    return found


async def projection_endpoint(request: Request) -> Response:
    """Projected spend at the end of each budget period.
    ---
    summary: Spend so far and projected to the end of the day, week and month
    description: >
      Linear on the period's run rate: spend since the period started divided by the
      time elapsed, times the period's length (UTC calendar periods). Rows of keys
      with a budget in clasp.yaml carry it and whether the projection exceeds it.
    parameters:
      - {name: period, in: query, schema: {type: string, enum: [daily, weekly, monthly]}}
      - {name: by, in: query, schema: {type: string}, description: "e.g. key or team"}
    responses:
      200: {description: "{method, now, periods: [{period, start, end, spent_usd, projected_usd, groups}]}"}
      400: {description: an unknown period or dimension}
    """
    principal = await _caller(request)
    scope = scope_for(request, principal)
    period = request.query_params.get("period")
    if period is not None and period not in PERIODS:
        raise InvalidRequestError(f"period: expected one of {', '.join(PERIODS)}, got {period!r}")
    gateway = request.app.state.gateway
    async with gateway.database.connect() as conn:
        result = await projection(conn, scope, time.time(), (period,) if period else PERIODS,
                                  static_budgets(gateway.config))
    return json_response(result)


async def savings_endpoint(request: Request) -> Response:
    """Savings suggestions from the ledger.
    ---
    summary: Traffic a cheaper model served as well, and repeated prompts a cache would have served
    parameters:
      - {name: since, in: query, schema: {type: string}}
      - {name: until, in: query, schema: {type: string}}
      - {name: min_requests, in: query, schema: {type: integer, minimum: 1, default: 20}}
    responses:
      200: {description: "{cheaper_models: [...], cache: {...}, saving_usd}"}
    """
    principal = await _caller(request)
    scope = scope_for(request, principal)
    raw = request.query_params.get("min_requests", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 1_000_000:
        raise InvalidRequestError(f"min_requests: expected a whole number from 1 to 1000000, got {raw!r}")
    async with request.app.state.gateway.database.connect() as conn:
        return json_response(await savings(conn, scope, min_requests=int(raw)))


ROUTES: list[tuple[str, Any]] = [
    ("/admin/usage", usage),
    ("/admin/reports/spend", usage),
    ("/admin/reports/projection", projection_endpoint),
    ("/admin/reports/savings", savings_endpoint),
]

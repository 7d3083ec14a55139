"""``/admin/cache``: statistics, listing and explicit invalidation of the response cache.

``GET /admin/cache`` answers the backend's statistics and the entries a selector picks
(``team``, ``key``, ``model`` (a glob), ``scope``, ``older_than`` (``90s``, ``1h``),
``limit``); ``DELETE /admin/cache`` (or ``POST /admin/cache/clear`` with the same fields
as a JSON body) removes them and answers how many went. An empty selector on DELETE
clears everything. Admins see every team; a ``team_admin`` only its own team (the team
filter is forced to it). Entries list metadata only, never the cached answers.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from clasp_gateway import (
    Duration,
    GatewayError,
    InvalidRequestError,
    PermissionDeniedError,
    Principal,
    error_response,
    json_response,
    read_json,
    require_role,
)

from .backends.base import CacheUnavailable, EntryMeta, Selector

__all__ = ["cache_endpoint", "clear_endpoint", "selector_from"]

RUNTIME_KEY = "clasp_cache.runtime"
"""``app.state`` attribute holding this app's :class:`~clasp_cache.runtime.CacheRuntime`."""
_FIELDS = ("team", "key", "model", "scope", "older_than", "limit")


def selector_from(values: dict[str, Any], principal: Principal) -> tuple[Selector, int]:
    """A :class:`Selector` (and a listing limit) from query or body fields; a team admin's
    selector is confined to its team."""
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise InvalidRequestError(f"unknown field(s) {', '.join(unknown)}; expected some of {', '.join(_FIELDS)}")
    for name, value in values.items():
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise InvalidRequestError(f"{name}: expected a string, got {type(value).__name__}")
    older: float | None = None
    if values.get("older_than") not in (None, ""):
        problems: list[str] = []
        older = Duration(minimum=0).parse(values["older_than"], "older_than", problems)
        if problems:
            raise InvalidRequestError(problems[0])
    try:
        limit = int(values.get("limit") or 100)
    except ValueError:
        raise InvalidRequestError("limit: expected an integer") from None
    team = str(values["team"]) if values.get("team") not in (None, "") else None
    if principal.role != "admin":
        if team not in (None, principal.team) or not principal.team:
            raise PermissionDeniedError("a team admin may only see and clear its own team's cache")
        team = principal.team
    selector = Selector(
        team=team, key_id=str(values["key"]) if values.get("key") else None,
        model=str(values["model"]) if values.get("model") else None,
        scope=str(values["scope"]) if values.get("scope") else None, older_than=older,
    )
    return selector, max(1, min(limit, 1000))


def _entry(meta: EntryMeta, now: float) -> dict[str, Any]:
    return {"id": meta.id, "scope": meta.scope, "tenant": meta.tenant, "team": meta.team, "key_id": meta.key_id,
            "model": meta.model, "region": meta.region, "kind": meta.kind, "bytes": meta.size,
            "cost_usd": meta.cost_usd, "age_s": round(meta.age(now), 3), "fresh": meta.fresh(now)}


def _runtime(request: Request) -> Any:
    runtime = getattr(request.app.state, RUNTIME_KEY.replace(".", "_"), None)
    if runtime is None:
        raise InvalidRequestError("the response cache is off on this gateway (no cache: section in clasp.yaml)")
    return runtime


async def cache_endpoint(request: Request) -> Response:
    """``GET /admin/cache``: statistics and entries; ``DELETE /admin/cache``: clear them.
    ---
    description: The response cache (admin or team_admin key).
    parameters:
      - {name: team, in: query, schema: {type: string}}
      - {name: key, in: query, schema: {type: string}, description: a key id}
      - {name: model, in: query, schema: {type: string}, description: a public model glob}
      - {name: scope, in: query, schema: {type: string}}
      - {name: older_than, in: query, schema: {type: string}, description: "an age: 90s, 10m, 1h"}
      - {name: limit, in: query, schema: {type: integer, maximum: 1000}}
    responses:
      200: {description: "GET: {stats, entries}; DELETE: {deleted}"}
      403: {description: not an admin key}
    """
    request_id = request.scope["state"]["request_id"]
    try:
        principal = await require_role(request, "admin", "team_admin")
        runtime = _runtime(request)
        selector, limit = selector_from(dict(request.query_params), principal)
        return await _answer(request.method, runtime, selector, limit)
    except GatewayError as exc:
        return error_response(exc, "anthropic", request_id)


async def clear_endpoint(request: Request) -> Response:
    """``POST /admin/cache/clear``: clear the entries a JSON body selects (``clasp cache clear``).
    ---
    description: Clear response-cache entries (admin or team_admin key).
    requestBody:
      content:
        application/json:
          schema:
            type: object
            properties: {team: {type: string}, key: {type: string}, model: {type: string},
                         scope: {type: string}, older_than: {type: string}}
    responses:
      200: {description: "{deleted: n}"}
    """
    request_id = request.scope["state"]["request_id"]
    try:
        principal = await require_role(request, "admin", "team_admin")
        runtime = _runtime(request)
        body = await read_json(request, 65536) if request.headers.get("content-length") not in (None, "0") else {}
        if not isinstance(body, dict):
            raise InvalidRequestError("body: expected a JSON object")
        selector, limit = selector_from(body, principal)
        return await _answer("DELETE", runtime, selector, limit)
    except GatewayError as exc:
        return error_response(exc, "anthropic", request_id)


async def _answer(method: str, runtime: Any, selector: Selector, limit: int) -> Response:
    try:
        if method == "DELETE":
            return json_response({"deleted": await runtime.backend.purge(selector)})
        now = runtime.clock()
        stats = await runtime.backend.stats()
        entries = await runtime.backend.entries(selector, limit)
    except CacheUnavailable as exc:
        return json_response({"type": "error", "error": {"type": "api_error", "message": str(exc)}}, status=503)
    return json_response({
        "stats": {"backend": stats.backend, "entries": stats.entries, "bytes": stats.bytes,
                  "evictions": stats.evictions, "shared": stats.shared, "outage": stats.outage,
                  "hits": runtime.counts.hits, "misses": runtime.counts.misses, "stored": runtime.counts.stored},
        "entries": [_entry(m, now) for m in entries],
    })

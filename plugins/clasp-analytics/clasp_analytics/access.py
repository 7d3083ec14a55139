"""Who may read analytics: admin keys (everything: the dashboard, its API, exports,
metrics by default), team_admin keys (the dashboard, its API and exports, always
narrowed to their own team: :func:`scoped`), and a scraper's bearer token
(``analytics.metrics.auth: token``). Member keys see their own usage through
``/admin/usage`` (clasp-budgets), not here.

The role check is the core's :func:`clasp_gateway.require_role` (a shaped 401/403, the
role from the key's configuration only); this module adds the dashboard's cookie as a
way to present the key, and the scrape token.
"""

from __future__ import annotations

import dataclasses
import hmac

from starlette.requests import Request

from clasp_gateway import AuthenticationError, PermissionDeniedError, Principal, require_role

from .filters import Filters

ADMIN = "admin"
SESSION_COOKIE = "clasp_admin"
"""The dashboard's HttpOnly cookie: the admin key a person typed into its login form.
``SameSite=Strict``, ``Path=/admin``: script cannot read it, other sites cannot send it,
and it never appears in a URL."""


def with_cookie_key(request: Request) -> Request:
    """``request`` as if the dashboard's cookie had come as ``x-api-key`` (when no key
    header came), so the core authenticates it exactly like any key: the failed-key
    throttle, revocation and expiry apply at once."""
    if "x-api-key" in request.headers or "authorization" in request.headers:
        return request
    key = request.cookies.get(SESSION_COOKIE)
    if not key:
        return request
    scope = dict(request.scope)
    scope["headers"] = [*request.scope["headers"], (b"x-api-key", key.encode("latin-1", "replace"))]
    return Request(scope, request.receive)


async def require_admin(request: Request) -> Principal:
    """The caller's principal when it is an admin key (a header, or the dashboard's
    cookie); else a shaped 401 (no or a wrong key) or 403 (a key without the admin role)."""
    return await require_role(with_cookie_key(request), ADMIN)


async def require_viewer(request: Request) -> Principal:
    """The caller's principal when it may read analytics (an admin, or a team_admin
    whose answers :func:`scoped` narrows to its team); else a shaped 401/403."""
    return await require_role(with_cookie_key(request), ADMIN, "team_admin")


def scoped(filters: Filters, principal: Principal) -> Filters:
    """``filters`` as ``principal`` may apply them: unchanged for an admin; for a
    team_admin, forced to its own team (asking for another team is a 403, so a
    filter cannot widen what it sees, and a team_admin without a team sees nothing)."""
    if principal.role == ADMIN:
        return filters
    team = principal.team
    if team is None:
        raise PermissionDeniedError("this team_admin key belongs to no team, so it has no analytics to see")
    asked = filters.equals.get("team")
    if asked is not None and asked != team:
        raise PermissionDeniedError(f"a team_admin sees its own team's analytics only ({team!r})")
    return dataclasses.replace(filters, equals={**filters.equals, "team": team})


def check_bearer(request: Request, token: str) -> None:
    """A scraper's bearer token, compared in constant time; a shaped 401 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented or not hmac.compare_digest(presented.strip().encode(), token.encode()):
        raise AuthenticationError("a valid bearer token is required for this endpoint")

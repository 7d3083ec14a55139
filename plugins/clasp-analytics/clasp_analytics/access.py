"""Who may read analytics: admin keys (the dashboard, its API, exports, metrics by
default) and a scraper's bearer token (``analytics.metrics.auth: token``).

The role check is the core's :func:`clasp_gateway.require_role` (a shaped 401/403, the
role from the key's configuration only); this module adds the dashboard's cookie as a
way to present the key, and the scrape token.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request

from clasp_gateway import AuthenticationError, Principal, require_role

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


def check_bearer(request: Request, token: str) -> None:
    """A scraper's bearer token, compared in constant time; a shaped 401 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented or not hmac.compare_digest(presented.strip().encode(), token.encode()):
        raise AuthenticationError("a valid bearer token is required for this endpoint")

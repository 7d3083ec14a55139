"""``/admin/dashboard``: the admin page, its login and its assets.

The page is one static HTML file with no inline script or style, served under a strict
Content-Security-Policy (scripts, styles and data only from this origin, no frames, no
inline code). Admins see every team, team admins their own (the API it reads is scoped,
:func:`.access.scoped`). Without such a key it answers 401 with the same page in its
signed-out state (the login form); the form posts the key to ``/admin/dashboard/login``, which
checks it like any key and keeps it in an HttpOnly, ``SameSite=Strict`` cookie scoped to
``/admin`` (never in the URL, never readable by script). The page's script then reads
the admin analytics API with that cookie. Assets (the script, the stylesheet and the
vendored uPlot) are public: they hold no data.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from clasp_gateway import GatewayError, InvalidRequestError, error_response, is_https, read_json

from .access import SESSION_COOKIE, require_viewer
from .scrape import runtime_of

PAGE = "/admin/dashboard"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "vendor/uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "vendor/uPlot.min.css": "text/css; charset=utf-8",
}
COOKIE_MAX_AGE = 8 * 3600
MAX_LOGIN_BODY = 4096


@cache
def _asset(name: str) -> bytes:
    return resources.files("clasp_analytics").joinpath("static", name).read_bytes()


def _page(signed_in: bool) -> bytes:
    html = _asset("dashboard.html")
    return html.replace(b'data-state="signed-out"', b'data-state="signed-in"') if signed_in else html


async def page_endpoint(request: Request) -> Response:
    """The dashboard (an admin or team_admin key: header or cookie), or the login form with 401.
    ---
    summary: The analytics dashboard (HTML); without an admin key, its sign-in form with 401
    responses: {200: {description: the dashboard}, 401: {description: the sign-in form}}
    """
    request_id = request.scope.get("state", {}).get("request_id")
    try:
        runtime = runtime_of(request)
        if not runtime.settings.dashboard.enabled:
            raise GatewayError("the dashboard is turned off (analytics.dashboard.enabled: false)", status=404,
                               error_type="not_found_error")
    except GatewayError as exc:
        return error_response(exc, "anthropic", request_id)
    try:
        await require_viewer(request)
    except GatewayError as exc:
        if exc.status not in (401, 403):
            return error_response(exc, "anthropic", request_id)
        return Response(_page(False), status_code=exc.status, media_type="text/html; charset=utf-8",
                        headers=SECURITY_HEADERS)
    return Response(_page(True), media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


async def login_endpoint(request: Request) -> Response:
    """The admin key in, an HttpOnly cookie out: 204 when it is an admin key, else the
    shaped 401/403 (throttled per client address like every failed key).
    ---
    summary: "Sign in to the dashboard: body {key: <admin key>}"
    responses: {204: {description: signed in (cookie set)}, 401: {description: not a key}, 403: {description: not an admin key}}
    """
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        # Another site's form or no-preflight fetch cannot send this: no login CSRF.
        raise InvalidRequestError("content-type: application/json is required")
    body = await read_json(request, MAX_LOGIN_BODY)
    key = body.get("key") if isinstance(body, dict) else None
    if not isinstance(key, str) or not key or len(key) > 1024 or not key.isprintable():
        raise InvalidRequestError("key: the admin key, as text")
    scope = dict(request.scope)
    scope["headers"] = [(k, v) for k, v in request.scope["headers"]
                        if k not in (b"x-api-key", b"authorization", b"cookie")] + [(b"x-api-key", key.encode())]
    await require_viewer(Request(scope, request.receive))
    response = Response(status_code=204, headers={"cache-control": "no-store"})
    response.set_cookie(SESSION_COOKIE, key, max_age=COOKIE_MAX_AGE, path="/admin", httponly=True,
                        samesite="strict", secure=is_https(request))  # server.behind_https too
    return response


async def logout_endpoint(request: Request) -> Response:
    """Forget the cookie.
    ---
    summary: Sign out of the dashboard
    responses: {204: {description: the cookie is cleared}}
    """
    response = Response(status_code=204, headers={"cache-control": "no-store"})
    response.delete_cookie(SESSION_COOKIE, path="/admin", httponly=True, samesite="strict")
    return response


async def asset_endpoint(request: Request) -> Response:
    """One of the page's files (an allowlist: nothing else under the package is served).
    ---
    summary: The dashboard's script, stylesheet and vendored chart library (public, no data)
    responses: {200: {description: the file}, 404: {description: not one of them}}
    """
    name = request.path_params.get("name", "")
    media_type = ASSETS.get(name)
    if media_type is None:
        return Response(b"not found", status_code=404, media_type="text/plain")
    return Response(_asset(name), media_type=media_type, headers={
        "x-content-type-options": "nosniff", "cache-control": "public, max-age=3600",
        "content-security-policy": "default-src 'none'"})


def register(register_route: Callable[..., Any]) -> None:
    """Add the page, its login and logout, and its assets."""
    register_route(PAGE, page_endpoint, methods=["GET"])
    register_route(PAGE + "/login", login_endpoint, methods=["POST"])
    register_route(PAGE + "/logout", logout_endpoint, methods=["POST"])
    register_route(PAGE + "/assets/{name:path}", asset_endpoint, methods=["GET"])

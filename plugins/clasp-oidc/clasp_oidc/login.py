"""The browser sign-in: ``GET /admin/login`` sends the person to the identity provider
(authorization code flow with PKCE, S256), ``GET /admin/oidc/callback`` takes the code
back, exchanges it at the token endpoint, verifies the ID token (signature, ``iss``,
``aud``, ``exp``, and the ``nonce`` of this sign-in), maps its claims to a role and
sets the session cookie; ``POST /admin/logout`` clears it.

The ``state`` (against login CSRF), the ``nonce`` (against ID token replay) and the PKCE
verifier travel in a signed, HttpOnly cookie that lives ten minutes and is valid for
this flow only. Where the person lands afterwards is a path on this gateway under
``/admin`` (never a URL a link could point elsewhere: no open redirect).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import quote_plus, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from clasp_gateway import (
    AuthenticationError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    error_response,
    is_https,
)

from .jwks import IssuerUnavailable
from .roles import principal_from
from .runtime import FLOW_PURPOSE, RUNTIME, SESSION_PURPOSE, OidcRuntime
from .session import COOKIE_PATH, FLOW_COOKIE, SESSION_COOKIE

FLOW_SECONDS = 600
FLOW_PATH = "/admin/oidc"


def runtime_of(request: Request) -> OidcRuntime:
    runtime = request.app.state.gateway.pm.get_plugin(RUNTIME)
    if not isinstance(runtime, OidcRuntime) or runtime.signer is None:
        raise NotFoundError("single sign-on is not set up on this gateway (oidc.login.public_url)")
    return runtime


def _secure(runtime: OidcRuntime, request: Request) -> bool:
    setting = runtime.settings.secure_cookie
    if isinstance(setting, bool):
        return setting
    public = runtime.settings.public_url or ""
    return public.startswith("https://") or is_https(request)


def _landing(runtime: OidcRuntime, raw: str | None) -> str:
    """Where to go after signing in: a path under /admin on this gateway, else the default."""
    if raw and raw.startswith("/admin") and not raw.startswith("//") and "\\" not in raw and len(raw) <= 512 \
            and all(c.isprintable() for c in raw):
        return raw
    return runtime.settings.after_login


def _unavailable(exc: IssuerUnavailable) -> GatewayError:
    return GatewayError(f"the identity provider is unavailable ({exc}); retry shortly", status=503,
                        error_type="api_error", headers={"retry-after": "5"})


async def login(request: Request) -> Response:
    """Start a sign-in at the identity provider.
    ---
    summary: Sign in with single sign-on (redirects to the identity provider)
    tags: [sso]
    security: []
    parameters:
      - {name: next, in: query, schema: {type: string}, description: "a path under /admin to land on afterwards"}
    responses:
      302: {description: "to the identity provider's authorization endpoint"}
      404: {description: "single sign-on is not set up"}
      503: {description: "the identity provider is unreachable"}
    """
    try:
        runtime = runtime_of(request)
        metadata = await runtime.issuer.metadata()
    except IssuerUnavailable as exc:
        return error_response(_unavailable(exc))
    except GatewayError as exc:
        return error_response(exc)
    endpoint = metadata.get("authorization_endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
        return error_response(_unavailable(IssuerUnavailable("no authorization_endpoint in its discovery document")))
    settings = runtime.settings
    state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = urlencode({
        "response_type": "code", "client_id": settings.client_id, "redirect_uri": settings.redirect_uri,
        "scope": " ".join(settings.scopes), "state": state, "nonce": nonce,
        "code_challenge": challenge, "code_challenge_method": "S256",
    })
    assert runtime.signer is not None
    flow = runtime.signer.sign(FLOW_PURPOSE, {"state": state, "nonce": nonce, "verifier": verifier,
                                              "next": _landing(runtime, request.query_params.get("next"))},
                               runtime.clock() + FLOW_SECONDS)
    response = RedirectResponse(endpoint + ("&" if "?" in endpoint else "?") + query, status_code=302,
                                headers={"cache-control": "no-store"})
    response.set_cookie(FLOW_COOKIE, flow, max_age=FLOW_SECONDS, path=FLOW_PATH, httponly=True, samesite="lax",
                        secure=_secure(runtime, request))
    return response


async def callback(request: Request) -> Response:
    """The identity provider's redirect back: exchange the code, verify the ID token,
    set the session cookie.
    ---
    summary: Single sign-on callback (the identity provider redirects here)
    tags: [sso]
    security: []
    parameters:
      - {name: code, in: query, schema: {type: string}}
      - {name: state, in: query, schema: {type: string}}
    responses:
      303: {description: "signed in: the session cookie is set"}
      400: {description: "no sign-in under way, or a state that does not match it"}
      401: {description: "the identity provider refused, or its ID token did not verify"}
      403: {description: "signed in, but no role on this gateway"}
    """
    try:
        runtime = runtime_of(request)
        claims = await _exchange(runtime, request)
        principal = principal_from(claims, runtime.settings)
    except IssuerUnavailable as exc:
        return _clear_flow(error_response(_unavailable(exc)))
    except GatewayError as exc:
        return _clear_flow(error_response(exc))
    assert runtime.signer is not None
    settings = runtime.settings
    session = runtime.signer.sign(SESSION_PURPOSE, {
        "sub": principal.metadata["subject"], "name": principal.name, "role": principal.role, "team": principal.team,
    }, runtime.clock() + settings.session_max_age)
    flow = runtime.signer.load(FLOW_PURPOSE, request.cookies.get(FLOW_COOKIE), runtime.clock()) or {}
    response = _clear_flow(RedirectResponse(_landing(runtime, flow.get("next")), status_code=303,
                                             headers={"cache-control": "no-store"}))
    response.set_cookie(SESSION_COOKIE, session, max_age=int(settings.session_max_age), path=COOKIE_PATH,
                        httponly=True, samesite="lax", secure=_secure(runtime, request))
    return response


async def _exchange(runtime: OidcRuntime, request: Request) -> dict[str, Any]:
    """The verified ID token claims for the callback's code (checks state and nonce)."""
    params = request.query_params
    if params.get("error"):
        raise AuthenticationError(f"the identity provider refused the sign-in: {params['error'][:80]}")
    assert runtime.signer is not None
    flow = runtime.signer.load(FLOW_PURPOSE, request.cookies.get(FLOW_COOKIE), runtime.clock())
    if flow is None:
        raise InvalidRequestError("no sign-in under way in this browser (or it took over 10 minutes); "
                                  "start again at /admin/login")
    state, code = params.get("state") or "", params.get("code") or ""
    if not hmac.compare_digest(state.encode(), str(flow.get("state", "")).encode()):
        raise InvalidRequestError("the sign-in's state does not match this browser's; start again at /admin/login")
    if not code or len(code) > 4096:
        raise InvalidRequestError("the identity provider's redirect has no code")
    settings = runtime.settings
    metadata = await runtime.issuer.metadata()
    endpoint = metadata.get("token_endpoint")
    if not isinstance(endpoint, str):
        raise IssuerUnavailable("no token_endpoint in its discovery document")
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": settings.redirect_uri,
            "client_id": settings.client_id, "code_verifier": str(flow.get("verifier", ""))}
    headers: dict[str, str] = {}
    if settings.client_secret:
        methods = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if "client_secret_basic" in methods:  # RFC 6749 2.3.1: each part form-encoded, then Basic
            pair = f"{quote_plus(settings.client_id)}:{quote_plus(settings.client_secret)}"
            headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_secret"] = settings.client_secret
    try:
        answer = await runtime.issuer.post_form(endpoint, form, headers)
    except IssuerUnavailable as exc:
        if "HTTP 4" in str(exc):  # the code was refused (reused, expired, wrong verifier)
            raise AuthenticationError(f"the identity provider refused the code: {exc}") from None
        raise
    id_token = answer.get("id_token")
    if not isinstance(id_token, str):
        raise AuthenticationError("the identity provider's token answer has no id_token (is `openid` a scope?)")
    return await runtime.verifier.verify(id_token, audiences=[settings.client_id], nonce=str(flow.get("nonce")))


def _clear_flow(response: Response) -> Response:
    response.delete_cookie(FLOW_COOKIE, path=FLOW_PATH, httponly=True, samesite="lax")
    return response


async def logout(request: Request) -> Response:
    """Sign out: the session cookie is cleared.
    ---
    summary: Sign out of single sign-on
    tags: [sso]
    security: []
    responses:
      204: {description: "signed out"}
    """
    response = Response(status_code=204, headers={"cache-control": "no-store"})
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="lax")
    return response


ROUTES = (
    ("/admin/login", login, ["GET"]),
    ("/admin/oidc/callback", callback, ["GET"]),
    ("/admin/logout", logout, ["POST"]),
)

"""The browser sign-in: ``GET /admin/login`` sends the person to the identity provider
(authorization code flow with PKCE, S256), ``GET /admin/oidc/callback`` takes the code
back, exchanges it at the token endpoint, verifies the ID token (signature, ``iss``,
``aud``, ``exp``, and the ``nonce`` of this sign-in), maps its claims to a role and
sets the session cookie; ``POST /admin/logout`` clears it and revokes it on every
replica, and ``POST /admin/sessions/revoke`` (role ``admin``) revokes one session or
every session of a person (:mod:`.revocation`). Sign-in, sign-out and revocation each
write a ``clasp.audit`` line (who, which session; never the cookie).

The ``state`` (against login CSRF), the ``nonce`` (against ID token replay) and the PKCE
verifier travel in a signed, HttpOnly cookie that lives ten minutes and is valid for
this flow only. Where the person lands afterwards is a path on this gateway under
``/admin`` (never a URL a link could point elsewhere: no open redirect).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
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
    json_response,
    read_json,
    require_role,
)

from .jwks import IssuerUnavailable
from .roles import principal_from
from .runtime import FLOW_PURPOSE, RUNTIME, SESSION_PURPOSE, OidcRuntime
from .session import COOKIE_PATH, FLOW_COOKIE, SESSION_COOKIE

FLOW_SECONDS = 600
FLOW_PATH = "/admin/oidc"
MAX_ID_CHARS = 256
"""Longest session id or subject a revocation request may name."""

audit = logging.getLogger("clasp.audit")


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
    now, sid = runtime.clock(), secrets.token_urlsafe(18)
    subject = principal.metadata["subject"]
    session = runtime.signer.sign(SESSION_PURPOSE, {
        "sub": subject, "name": principal.name, "role": principal.role, "team": principal.team,
        "sid": sid, "iat": now,
    }, now + settings.session_max_age)
    audit.info("oidc sign-in: %s (role %s) session %s", subject, principal.role, sid,
               extra={"clasp_access": {"audit": "oidc.sign_in", "subject": subject, "session": sid}})
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
    """Sign out: the session cookie is cleared, and the session revoked on every replica
    (a copy of the cookie is refused from now on).
    ---
    summary: Sign out of single sign-on
    tags: [sso]
    security: []
    responses:
      204: {description: "signed out"}
      503: {description: "the shared state is unavailable: the session could not be revoked (the cookie is kept)"}
    """
    runtime = request.app.state.gateway.pm.get_plugin(RUNTIME)
    if isinstance(runtime, OidcRuntime) and runtime.signer is not None:
        data = runtime.signer.load(SESSION_PURPOSE, request.cookies.get(SESSION_COOKIE), runtime.clock())
        sid = data.get("sid") if data is not None else None
        if isinstance(sid, str):
            try:
                await runtime.revocations.revoke_session(sid, float(data["exp"]))  # type: ignore[index]
            except GatewayError as exc:
                return error_response(exc)
            subject = str(data.get("sub"))  # type: ignore[union-attr]
            audit.info("oidc sign-out: %s session %s", subject, sid,
                       extra={"clasp_access": {"audit": "oidc.sign_out", "subject": subject, "session": sid}})
    response = Response(status_code=204, headers={"cache-control": "no-store"})
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="lax")
    return response


async def revoke(request: Request) -> Response:
    """Revoke sign-ins before they expire, on every replica: one session (its id is in
    the ``clasp.audit`` line of its sign-in), or every session of a person signed in
    until now (``subject``: the identity provider's subject claim). Bearer tokens are
    the identity provider's to revoke.
    ---
    summary: Revoke single sign-on sessions
    tags: [sso]
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            properties:
              session: {type: string, description: "one session's id"}
              subject: {type: string, description: "every session of this person"}
    responses:
      200: {description: "revoked: what, and until when it matters"}
      400: {description: "neither or both of session and subject"}
      403: {description: "not an admin"}
      404: {description: "single sign-on is not set up"}
      503: {description: "the shared state is unavailable: nothing was revoked"}
    """
    try:
        principal = await require_role(request, "admin")
        runtime = runtime_of(request)
        body = await read_json(request, 4096)
        if not isinstance(body, dict):
            raise InvalidRequestError("send a JSON object: {\"session\": \"...\"} or {\"subject\": \"...\"}")
        session, subject = body.get("session"), body.get("subject")
        if (session is None) == (subject is None):
            raise InvalidRequestError("name exactly one of `session` (one sign-in) or `subject` (every sign-in of a "
                                      "person)")
        target = session if session is not None else subject
        if not isinstance(target, str) or not target or len(target) > MAX_ID_CHARS or not target.isprintable():
            raise InvalidRequestError(f"`{'session' if session is not None else 'subject'}` must be a non-empty "
                                      f"string of at most {MAX_ID_CHARS} characters")
        actor = principal.name or principal.key_id
        if session is not None:
            await runtime.revocations.revoke_session(target)
            answer: dict[str, object] = {"revoked": {"session": target}}
            audit.warning("oidc session %s revoked by %s", target, actor,
                          extra={"clasp_access": {"audit": "oidc.revoke", "session": target, "actor": actor}})
        else:
            at = await runtime.revocations.revoke_subject(target)
            answer = {"revoked": {"subject": target, "signed_in_before": at}}
            audit.warning("oidc sessions of %s revoked by %s", target, actor,
                          extra={"clasp_access": {"audit": "oidc.revoke", "subject": target, "actor": actor}})
    except GatewayError as exc:
        return error_response(exc)
    return json_response(answer)


ROUTES = (
    ("/admin/login", login, ["GET"]),
    ("/admin/oidc/callback", callback, ["GET"]),
    ("/admin/logout", logout, ["POST"]),
    ("/admin/sessions/revoke", revoke, ["POST"]),
)

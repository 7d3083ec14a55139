"""Signed cookies: the session after sign-in, and the short-lived state of a sign-in
under way (``state``, ``nonce``, PKCE verifier).

A cookie is ``base64url(JSON) "." base64url(HMAC-SHA256(secret, purpose "." payload))``
with an expiry inside the signed payload: no server-side store, so every replica with
the same ``oidc.login.session_secret`` accepts it. ``purpose`` is signed too, so the
sign-in cookie can never be replayed as a session. The cookies are HttpOnly, scoped to
``/admin`` (sent to no model route), ``SameSite=Lax`` (the identity provider's
redirect back is a cross-site navigation; Lax still withholds them from other sites'
POST, PUT and DELETE), and ``Secure`` whenever the gateway is reached over https
(directly, through a TLS-terminating proxy with ``server.behind_https``, or
``secure_cookie: true``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import orjson

SESSION_COOKIE = "clasp_session"
FLOW_COOKIE = "clasp_oidc_flow"
COOKIE_PATH = "/admin"
MAX_COOKIE_BYTES = 4096


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs and checks cookie values with one secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, purpose: str, payload: str) -> bytes:
        return hmac.new(self._secret, f"{purpose}.{payload}".encode(), hashlib.sha256).digest()

    def sign(self, purpose: str, data: dict[str, Any], expires_at: float) -> str:
        payload = _b64(orjson.dumps({**data, "exp": int(expires_at)}))
        return f"{payload}.{_b64(self._mac(purpose, payload))}"

    def load(self, purpose: str, value: str | None, now: float) -> dict[str, Any] | None:
        """The signed data, or ``None`` when absent, tampered with, or expired."""
        if not value or len(value) > MAX_COOKIE_BYTES or value.count(".") != 1:
            return None
        payload, mac = value.split(".")
        try:
            if not hmac.compare_digest(_unb64(mac), self._mac(purpose, payload)):
                return None
            data = orjson.loads(_unb64(payload))
        except (ValueError, orjson.JSONDecodeError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("exp"), int) or data["exp"] <= now:
            return None
        return data


def cookie_of(headers: dict[str, str], name: str) -> str | None:
    """One cookie's value from a ``cookie`` header (the last one of that name wins)."""
    raw = headers.get("cookie")
    if not raw or name not in raw:
        return None
    found = None
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            found = value.strip().strip('"')
    return found

"""A real OpenID Connect issuer on 127.0.0.1 for the tests: discovery document, JWKS,
an authorization endpoint that signs the person in at once, and a token endpoint that
checks the code, the redirect URI, the client's secret and the PKCE verifier.

Keys are generated per issuer (RSA and EC, ``cryptography``); :meth:`FakeIssuer.rotate`
publishes a new key, :meth:`FakeIssuer.mint` signs any claims with any key and
algorithm, so the tests can forge every kind of bad token.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from clasp_gateway.testing.apps import AppThread

ADMIN_KEY = "static-admin-key-Vb83nQk2Lw9e"
CLIENT_ID = "clasp-gateway"
CLIENT_SECRET = "client-secret-7Hq2Lm9Xv4Rt8Pz1"


@dataclass
class Signing:
    kid: str
    alg: str
    private: Any
    public_jwk: dict[str, Any]


def new_key(kid: str, alg: str = "RS256") -> Signing:
    if alg.startswith("ES"):
        private: Any = ec.generate_private_key(ec.SECP256R1())
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return Signing(kid, alg, private, {**jwk, "kid": kid, "use": "sig", "alg": alg})


@dataclass
class FakeIssuer:
    """Start with :meth:`start`; :attr:`url` is the issuer."""

    keys: list[Signing] = field(default_factory=lambda: [new_key("k1"), new_key("e1", "ES256")])
    user: dict[str, Any] = field(default_factory=lambda: {"sub": "u-ada", "email": "ada@example.com",
                                                          "groups": ["platform-admins"]})
    jwks_fetches: int = 0
    token_requests: list[dict[str, str]] = field(default_factory=list)
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    url: str = ""
    advertised_issuer: str | None = None

    def start(self) -> FakeIssuer:
        self._thread = AppThread(self._app, name="FakeIssuer")
        port = self._thread.start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        self._thread.stop()

    def rotate(self, kid: str) -> Signing:
        """Publish a new RSA key (first) and keep the old ones."""
        key = new_key(kid)
        self.keys.insert(0, key)
        return key

    def mint(self, claims: dict[str, Any] | None = None, *, key: Signing | None = None, alg: str | None = None,
             headers: dict[str, Any] | None = None, secret: Any = None, **overrides: Any) -> str:
        """A token with sensible claims (this issuer, audience the client, valid 5 min)."""
        now = int(time.time())
        body = {"iss": self.url, "aud": CLIENT_ID, "iat": now, "exp": now + 300, **self.user, **(claims or {}),
                **overrides}
        body = {k: v for k, v in body.items() if v is not None}
        key = key or self.keys[0]
        return jwt.encode(body, secret if secret is not None else key.private, algorithm=alg or key.alg,
                          headers={"kid": key.kid, **(headers or {})})

    # --- the HTTP side -------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        return app

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response({
            "issuer": self.advertised_issuer or self.url, "jwks_uri": f"{self.url}/jwks",
            "authorization_endpoint": f"{self.url}/authorize", "token_endpoint": f"{self.url}/token",
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "code_challenge_methods_supported": ["S256"],
        })

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        return web.json_response({"keys": [k.public_jwk for k in self.keys]})

    async def _authorize(self, request: web.Request) -> web.Response:
        q = request.query
        assert q["response_type"] == "code" and q["client_id"] == CLIENT_ID and q["code_challenge_method"] == "S256"
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"challenge": q["code_challenge"], "redirect_uri": q["redirect_uri"], "nonce": q["nonce"],
                            "used": False}
        raise web.HTTPFound(q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]}))

    async def _token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.token_requests.append({k: str(v) for k, v in form.items()})
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return web.json_response({"error": "invalid_client"}, status=401)
        grant = self.codes.get(str(form.get("code")))
        if grant is None or grant["used"] or form.get("redirect_uri") != grant["redirect_uri"]:
            return web.json_response({"error": "invalid_grant"}, status=400)
        grant["used"] = True
        verifier = str(form.get("code_verifier", ""))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if challenge != grant["challenge"]:
            return web.json_response({"error": "invalid_grant", "error_description": "PKCE"}, status=400)
        return web.json_response({"access_token": "opaque", "token_type": "Bearer", "expires_in": 300,
                                  "id_token": self.mint(nonce=grant["nonce"])})


def oidc_section(issuer: FakeIssuer, **extra: Any) -> dict[str, Any]:
    """The ``oidc:`` section the tests serve with (roles and teams from groups)."""
    return {
        "issuer": issuer.url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "algorithms": ["RS256", "RS384", "ES256"], "leeway": 0, "jwks_min_refresh": "30s",
        "roles": {"admin": ["platform-admins"], "team_admin": ["red-leads"], "member": ["engineering"]},
        "teams": {"red-leads": "red", "red-devs": "red"},
        **extra,
    }

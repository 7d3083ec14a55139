"""``oidc:`` in clasp.yaml, checked whole (every mistake reported at once).

```yaml
oidc:
  issuer: https://login.example.com/realms/eng  # discovery: <issuer>/.well-known/openid-configuration
  client_id: clasp-gateway
  client_secret: ${OIDC_CLIENT_SECRET}  # optional: without it, a public client (PKCE only)
  audiences: [clasp-gateway]            # bearer tokens' accepted `aud` (default: [client_id])
  algorithms: [RS256, ES256]            # asymmetric only: HS* / none are never accepted
  leeway: 30s                           # clock skew allowed on exp / nbf / iat
  jwks_ttl: 1h                          # how long the issuer's keys are trusted before a refetch
  jwks_min_refresh: 30s                 # an unknown `kid` refetches the keys at most this often
  http_timeout: 5s                      # discovery, JWKS and token endpoint calls
  claims: {subject: sub, name: email, groups: groups, team: null}
  roles:                                # group -> role; the highest role matched wins
    admin: [platform-admins]
    team_admin: [payments-leads, search-leads]
    member: [engineering]
  teams: {payments-leads: payments, payments-devs: payments, search-leads: search}
  default_role: none                    # a user in no mapped group: refused (none) or member
  model_calls: false                    # true: OIDC identities may also call models, not only /admin/
  login:                                # the browser flow (dashboard); off without public_url
    public_url: https://clasp.example.com  # callback: <public_url>/admin/oidc/callback
    scopes: [openid, profile, email]
    session_secret: ${CLASP_SESSION_SECRET} # signs the session cookie; the same on every replica
    session_max_age: 8h
    secure_cookie: auto                 # auto: Secure when public_url or the request is https
    after_login: /admin/dashboard
```
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from clasp_gateway import (
    Boolean,
    Choice,
    Config,
    Custom,
    Duration,
    Field,
    Integer,
    Invalid,
    ListOf,
    MapOf,
    Reference,
    Section,
    String,
    resolve_secret,
)

SECTION = "oidc"
ROLES = ("admin", "team_admin", "member")
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
"""Signature algorithms a token may use: public-key ones only, so a token signed with
HMAC (the "public key as HMAC secret" confusion) or ``alg: none`` never verifies."""
MIN_SESSION_SECRET = 32


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _https_url(value: Any) -> str:
    """An https URL (http only on a loopback host: a test or a sidecar issuer)."""
    if not isinstance(value, str) or not value:
        raise Invalid()
    parts = urlsplit(value)
    if not parts.hostname or parts.scheme not in ("https", "http"):
        raise Invalid()
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise Invalid("must be https (plain http is accepted only on a loopback address)")
    if parts.query or parts.fragment:
        raise Invalid("must not carry a query or a fragment")
    return value.rstrip("/")


def _local_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//") or "\\" in value:
        raise Invalid()
    return value


LOGIN = Section({
    "public_url": Custom(_https_url, "the gateway's public URL, such as https://clasp.example.com"),
    "scopes": Field(ListOf(String(non_empty=True)), factory=lambda: ["openid", "profile", "email"]),
    "session_secret": Reference(),
    "session_max_age": Field(Duration(minimum=60, maximum=7 * 86400), 8 * 3600.0),
    "secure_cookie": Field(Choice("auto", True, False), "auto"),
    "after_login": Field(Custom(_local_path, "a path on this gateway such as /admin/dashboard"), "/admin/dashboard"),
})

SETTINGS = Section({
    "issuer": Field(Custom(_https_url, "the issuer URL, such as https://login.example.com/realms/eng"),
                    required="the identity provider's issuer URL"),
    "client_id": Field(String(non_empty=True), required="the client id registered at the identity provider"),
    "client_secret": Reference(),
    "audiences": ListOf(String(non_empty=True), single=True),
    "algorithms": Field(ListOf(Choice(*ASYMMETRIC), non_empty=True), factory=lambda: ["RS256", "ES256"]),
    "leeway": Field(Duration(minimum=0, maximum=600), 30.0),
    "jwks_ttl": Field(Duration(minimum=1, maximum=7 * 86400), 3600.0),
    "jwks_min_refresh": Field(Duration(minimum=0, maximum=3600), 30.0),
    "http_timeout": Field(Duration(minimum=0.1, maximum=120), 5.0),
    "max_token_bytes": Field(Integer(256, 1 << 20), 16384),
    "claims": Section({
        "subject": Field(String(non_empty=True), "sub"),
        "name": Field(String(non_empty=True), "email"),
        "groups": Field(String(non_empty=True), "groups"),
        "team": String(non_empty=True),
    }),
    "roles": Field(Section({role: ListOf(String(non_empty=True), single=True) for role in ROLES}),
                   required="which groups are admin, team_admin and member"),
    "teams": Field(MapOf(String(non_empty=True)), factory=dict),
    "default_role": Field(Choice("none", "member"), "none"),
    "model_calls": Field(Boolean(), False),
    "login": LOGIN,
})


@dataclass(slots=True)
class OidcSettings:
    """``oidc:`` parsed, with its secrets resolved."""

    issuer: str
    client_id: str
    client_secret: str | None
    audiences: list[str]
    algorithms: list[str]
    leeway: float
    jwks_ttl: float
    jwks_min_refresh: float
    http_timeout: float
    max_token_bytes: int
    claims: dict[str, Any]
    roles: dict[str, list[str]]
    teams: dict[str, str]
    default_role: str
    model_calls: bool
    public_url: str | None = None
    scopes: list[str] = field(default_factory=list)
    session_secret: bytes | None = None
    session_max_age: float = 8 * 3600.0
    secure_cookie: Any = "auto"
    after_login: str = "/admin/dashboard"

    @property
    def login_enabled(self) -> bool:
        return self.public_url is not None

    @property
    def redirect_uri(self) -> str:
        return f"{self.public_url}/admin/oidc/callback"


def problems_of(config: Config) -> list[str]:
    """Every mistake in ``oidc:`` (none when the section is absent: the plugin is idle)."""
    raw = config.raw.get(SECTION)
    if raw is None:
        return []
    problems: list[str] = []
    parsed = SETTINGS.parse(raw, SECTION, problems)
    if problems:
        return problems
    login = parsed["login"]
    if login.get("public_url"):
        secret = resolve_secret(login.get("session_secret")).value if login.get("session_secret") else None
        if not secret:
            problems.append("oidc.login.session_secret: required with oidc.login.public_url (it signs the session "
                            "cookie; use the same on every replica), e.g. ${CLASP_SESSION_SECRET}")
        elif len(secret) < MIN_SESSION_SECRET:
            problems.append(f"oidc.login.session_secret: at least {MIN_SESSION_SECRET} characters (it is "
                            f"{len(secret)}); generate one with `python -c 'import secrets; print(secrets.token_urlsafe(48))'`")
        if "openid" not in login["scopes"]:
            problems.append("oidc.login.scopes: must include openid (the ID token carries who signed in)")
    elif any(login.get(k) is not None for k in ("session_secret",)):
        problems.append("oidc.login: set public_url to turn on the browser sign-in (or remove oidc.login)")
    if not any(parsed["roles"].get(r) for r in ROLES) and parsed["default_role"] == "none":
        problems.append("oidc.roles: map at least one group to a role (or set default_role: member)")
    return problems


def settings_of(config: Config) -> OidcSettings | None:
    """The resolved settings, or ``None`` when ``oidc:`` is absent. Call after
    :func:`problems_of` found nothing (``validate_config`` runs first)."""
    raw = config.raw.get(SECTION)
    if raw is None:
        return None
    problems: list[str] = []
    parsed = SETTINGS.parse(raw, SECTION, problems)
    login = parsed["login"]
    secret = resolve_secret(parsed["client_secret"]).value if parsed.get("client_secret") else None
    session = resolve_secret(login["session_secret"]).value if login.get("session_secret") else None
    return OidcSettings(
        issuer=parsed["issuer"], client_id=parsed["client_id"], client_secret=secret,
        audiences=list(parsed.get("audiences") or [parsed["client_id"]]), algorithms=list(parsed["algorithms"]),
        leeway=parsed["leeway"], jwks_ttl=parsed["jwks_ttl"], jwks_min_refresh=parsed["jwks_min_refresh"],
        http_timeout=parsed["http_timeout"], max_token_bytes=parsed["max_token_bytes"], claims=dict(parsed["claims"]),
        roles={r: list(parsed["roles"].get(r) or []) for r in ROLES}, teams=dict(parsed["teams"]),
        default_role=parsed["default_role"], model_calls=parsed["model_calls"],
        public_url=login.get("public_url"), scopes=list(login["scopes"]),
        session_secret=session.encode() if session else None, session_max_age=login["session_max_age"],
        secure_cookie=login["secure_cookie"], after_login=login["after_login"],
    )

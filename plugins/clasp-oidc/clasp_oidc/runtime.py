"""One gateway's single sign-on: its settings, the issuer's keys and the cookie signer,
answering the ``authenticate`` hook.

Registered per app at start-up (never module state, so two gateways in one process keep
their own keys and sessions), ``tryfirst``: a JWT or a session cookie is this plugin's to
judge, before virtual keys or static keys look at it. Anything else (an API key) is
left to them (``None``). A session cookie must also not be on the shared revocation
list (sign-out, an administrator's revocation: :mod:`.revocation`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from clasp_gateway import AuthenticationError, Config, Principal, StateBackend, hookimpl

from .jwks import Issuer
from .revocation import Revocations
from .roles import principal_from
from .session import SESSION_COOKIE, Signer, cookie_of
from .settings import OidcSettings
from .tokens import TokenVerifier, looks_like_jwt

RUNTIME = "clasp_oidc.runtime"
ADMIN_PATHS = "/admin/"
SESSION_PURPOSE = "session"
FLOW_PURPOSE = "flow"


class OidcRuntime:
    """The ``authenticate`` hook of one app (see the module docstring)."""

    def __init__(self, settings: OidcSettings, *, state: StateBackend | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.revocations = Revocations(state, settings.session_max_age, clock=clock)
        self.issuer = Issuer(settings.issuer, timeout=settings.http_timeout, ttl=settings.jwks_ttl,
                             min_refresh=settings.jwks_min_refresh, algorithms=settings.algorithms)
        self.verifier = TokenVerifier(settings, self.issuer)
        self.signer = Signer(settings.session_secret) if settings.session_secret else None

    async def close(self) -> None:
        await self.revocations.close()
        await self.issuer.close()

    def applies_to(self, path: str) -> bool:
        """Whether single sign-on identities are accepted on ``path``: the admin API and
        dashboard, and model routes too with ``oidc.model_calls: true``."""
        return path.startswith(ADMIN_PATHS) or (self.settings.model_calls and bool(path))

    @hookimpl(tryfirst=True)
    async def authenticate(self, api_key: str | None, headers: dict[str, str], config: Config,
                           path: str) -> Principal | None:
        """A verified bearer JWT's or a valid session cookie's principal; ``None`` for
        anything else (API keys) or outside the routes SSO applies to."""
        if not self.applies_to(path):
            return None
        if api_key is not None:
            if not looks_like_jwt(api_key):
                return None
            claims = await self.verifier.verify(api_key, audiences=self.settings.audiences)
            return principal_from(claims, self.settings)
        return await self.session_principal(headers)

    def _same_origin(self, headers: dict[str, str]) -> None:
        """Refuse the cookie on a request another site's page made (cross-site request
        forgery): ``SameSite=Lax`` already keeps it off other sites' POSTs, and this
        also covers sibling subdomains and older browsers. A browser names the page's
        origin in ``Origin`` (on every POST and on cross-origin fetches) and says
        ``Sec-Fetch-Site: cross-site``; a plain navigation to the dashboard sends neither."""
        origin = headers.get("origin")
        public = self.settings.public_url or ""
        expected = "/".join(public.split("/", 3)[:3])  # scheme://host[:port]
        if origin is not None and origin != expected:
            raise AuthenticationError(f"a session cookie is only accepted from {expected} (this request came from "
                                      f"another origin); send a bearer token instead")
        if headers.get("sec-fetch-site") == "cross-site":
            raise AuthenticationError("a session cookie is not accepted on a request made by another site")

    async def session_principal(self, headers: dict[str, str]) -> Principal | None:
        """The principal of the session cookie, or ``None`` without one (a tampered,
        expired or revoked cookie is a 401 telling the person to sign in again)."""
        value = cookie_of(headers, SESSION_COOKIE)
        if value is None or self.signer is None:
            return None
        self._same_origin(headers)
        data = self.signer.load(SESSION_PURPOSE, value, self.clock())
        if data is None:
            raise AuthenticationError("your sign-in has expired or is invalid; sign in again at /admin/login")
        role, sid, subject, issued_at = data.get("role"), data.get("sid"), data.get("sub"), data.get("iat")
        if role not in ("admin", "team_admin", "member") or not isinstance(subject, str) or not isinstance(sid, str) \
                or not isinstance(issued_at, (int, float)):
            raise AuthenticationError("invalid session; sign in again at /admin/login")
        if await self.revocations.is_revoked(sid, subject, float(issued_at)):
            raise AuthenticationError("this sign-in was ended (signed out or revoked); sign in again at /admin/login")
        team = data.get("team")
        return Principal(key_id=f"oidc:{subject}", name=str(data.get("name") or subject),
                         team=team if isinstance(team, str) else None, role=role,
                         metadata={"auth": "oidc", "subject": subject, "session": sid})

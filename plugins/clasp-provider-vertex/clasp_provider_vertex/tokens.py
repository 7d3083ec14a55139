"""OAuth access tokens for a Google service account, renewed before they expire.

google-auth does the OAuth part: :class:`google.oauth2.service_account.Credentials`
signs a JWT with the account's private key (RS256) and exchanges it at the key file's
``token_uri`` (JWT bearer grant) for an access token. Its ``refresh`` is blocking
(``requests``), so it runs in a worker thread, and never two at a time:

- a token is used as is until 80% of its lifetime; the first request after that
  starts one background refresh and goes on with the current token;
- without a usable token (none yet, or past its safe end) requests wait for the one
  refresh in flight;
- a failed refresh is remembered for :data:`FAILURE_BACKOFF` seconds, so a broken
  token endpoint sees one attempt per few seconds, not one per request.

The clock is injectable (``monotonic``): tests move it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

from clasp_gateway import RefreshingToken, UpstreamError, redact, register_secret

log = logging.getLogger("clasp.vertex.tokens")

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
FAILURE_BACKOFF = 5.0
"""Seconds a failed refresh is remembered (requests meanwhile get the same error)."""


class ServiceAccountTokens(RefreshingToken):
    """Access tokens of one service account (``info``: the parsed key file); the core's
    :class:`~clasp_gateway.RefreshingToken` decides when to fetch one."""

    failure_backoff = FAILURE_BACKOFF

    def __init__(self, info: dict[str, Any], label: str, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        from google.oauth2 import service_account  # imported here: the plugin loads without it

        super().__init__(label, monotonic=monotonic)
        register_secret(str(info.get("private_key") or ""))
        self.account = str(info.get("client_email") or "?")
        self.token_uri = str(info.get("token_uri") or "")
        self._credentials = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
        self._request: Any = None

    def describe(self, lifetime: float) -> str:
        return f"{self.label}: got an access token for {self.account} (valid {lifetime:.0f}s)"

    async def fetch(self) -> tuple[str, float]:
        """google-auth's blocking refresh, in a worker thread."""
        try:
            return await asyncio.to_thread(self._fetch)
        except Exception as exc:  # google.auth's RefreshError / TransportError, or a bad answer
            raise self._error(exc) from None

    def _fetch(self) -> tuple[str, float]:
        """In a worker thread: the JWT bearer grant, through google-auth."""
        if self._request is None:
            import google.auth.transport.requests

            self._request = google.auth.transport.requests.Request()
        creds = self._credentials
        creds.refresh(self._request)
        if not creds.token:
            raise ValueError("the token endpoint answered without an access_token")
        lifetime = 3600.0
        if creds.expiry is not None:
            expiry = creds.expiry if creds.expiry.tzinfo else creds.expiry.replace(tzinfo=datetime.UTC)
            lifetime = (expiry - datetime.datetime.now(datetime.UTC)).total_seconds()
        return str(creds.token), max(1.0, lifetime)

    def _error(self, exc: BaseException) -> UpstreamError:
        name = type(exc).__name__
        unreachable = name == "TransportError"
        detail = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
        return UpstreamError(
            f"{self.label}: cannot get an access token for service account {self.account} "
            f"from {self.token_uri}: {name}: {redact(detail)[:300]}",
            upstream_status=0 if unreachable else 401, deployment=self.label,
            kind="connect" if unreachable else "credentials",
        )

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

from clasp_gateway import UpstreamError, redact, register_secret

log = logging.getLogger("clasp.vertex.tokens")

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
FAILURE_BACKOFF = 5.0
"""Seconds a failed refresh is remembered (requests meanwhile get the same error)."""


class ServiceAccountTokens:
    """Access tokens of one service account (``info``: the parsed key file)."""

    def __init__(self, info: dict[str, Any], label: str, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        from google.oauth2 import service_account  # imported here: the plugin loads without it

        register_secret(str(info.get("private_key") or ""))
        self.label = label
        self.account = str(info.get("client_email") or "?")
        self.token_uri = str(info.get("token_uri") or "")
        self._credentials = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
        self._monotonic = monotonic
        self._request: Any = None
        self._token: str | None = None
        self._refresh_at = 0.0
        self._usable_until = 0.0
        self._inflight: asyncio.Task[str] | None = None
        self._failure: UpstreamError | None = None
        self._failed_until = 0.0
        self.refreshes = 0
        """Tokens fetched so far."""

    async def token(self) -> str:
        """A valid access token (raises :class:`UpstreamError` saying why not)."""
        now = self._monotonic()
        token = self._token
        if token is not None and now < self._refresh_at:
            return token
        if token is not None and now < self._usable_until:
            if self._failure is None or now >= self._failed_until:
                self._start_refresh()
            return token
        if self._failure is not None and now < self._failed_until:
            raise self._copy(self._failure)
        return await asyncio.shield(self._start_refresh())

    def invalidate(self) -> None:
        """Drop the current token (Vertex refused it): the next call fetches another."""
        self._token = None

    async def close(self) -> None:
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _start_refresh(self) -> asyncio.Task[str]:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self._refresh())
            # A background refresh nobody awaits must not log "exception never retrieved".
            self._inflight.add_done_callback(lambda t: t.cancelled() or t.exception())
        return self._inflight

    async def _refresh(self) -> str:
        started = self._monotonic()
        try:
            token, lifetime = await asyncio.to_thread(self._fetch)
        except Exception as exc:  # google.auth's RefreshError / TransportError, or a bad answer
            self._failure = self._error(exc)
            self._failed_until = self._monotonic() + FAILURE_BACKOFF
            log.warning("%s", self._failure.message)
            raise self._copy(self._failure) from None
        register_secret(token)
        self._token = token
        self._refresh_at = started + 0.8 * lifetime
        # Stop using a token a little before it really expires (clock skew, slow calls).
        self._usable_until = started + lifetime - min(60.0, 0.1 * lifetime)
        self._failure = None
        self.refreshes += 1
        log.info("%s: got an access token for %s (valid %.0fs)", self.label, self.account, lifetime)
        return token

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

    @staticmethod
    def _copy(exc: UpstreamError) -> UpstreamError:
        return UpstreamError(exc.message, upstream_status=exc.upstream_status, deployment=exc.deployment, kind=exc.kind)

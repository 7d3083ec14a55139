"""A fake Microsoft identity platform token endpoint (OAuth2 client credentials).

``POST /{tenant}/oauth2/v2.0/token`` with a form body
(``grant_type=client_credentials``, ``client_id``, ``client_secret``, ``scope``)
answers like Entra ID does::

    {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
     "access_token": "eyJ0eXAi..."}

and refuses with Entra's error shape (``error``, ``error_description`` starting
with an ``AADSTS`` code, ``error_codes``, ``trace_id``...), status 400 or 401.

Usage::

    with FakeTokenEndpoint(client_secret="s3cret", expires_in=2) as aad:
        ...  # azure_ad: {tenant_id: aad.tenant, client_id: aad.client_id,
             #            client_secret: ..., token_url: aad.token_url}
        assert aad.count == 1 and aad.valid(token)
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["FakeTokenEndpoint", "TokenRequest"]

_TS = "%Y-%m-%d %H:%M:%SZ"


@dataclass
class TokenRequest:
    """One token request as received."""

    tenant: str
    form: dict[str, str]
    at: float = field(default_factory=time.monotonic)


class FakeTokenEndpoint:
    """Entra ID's v2.0 token endpoint for one app registration, on 127.0.0.1.

    Args:
        tenant: the tenant id it serves (others get AADSTS90002).
        client_id: the app registration's client id.
        client_secret: the secret it accepts (others get AADSTS7000215, 401).
        expires_in: lifetime of issued tokens, seconds.
        delay: seconds before each answer (to make concurrent callers overlap).
        fail: ``(status, body)`` to answer every request with, until set to ``None``.
        clock: the monotonic seconds issued tokens expire on (a test's
            :class:`~clasp_gateway.testing.FakeClock`, shared with the gateway's token
            cache, moves both past an expiry without sleeping).
    """

    def __init__(
        self,
        *,
        tenant: str = "72f988bf-86f1-41af-91ab-2d7cd011db47",
        client_id: str = "0b1b6a5c-7d4e-4f3a-9c2b-1a2b3c4d5e6f",
        client_secret: str = "aad-client-secret-Zm9vYmFyYmF6",
        expires_in: int = 3599,
        delay: float = 0.0,
        fail: tuple[int, dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tenant = tenant
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in
        self.delay = delay
        self.fail = fail
        self.clock = clock
        self.requests: list[TokenRequest] = []
        self.issued: dict[str, float] = {}
        """Every token issued, with its expiry on :attr:`clock`."""
        self.port = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        """The ``token_url`` to configure (what ``{authority}/{tenant}/oauth2/v2.0/token`` would be)."""
        return f"{self.origin}/{self.tenant}/oauth2/v2.0/token"

    @property
    def count(self) -> int:
        """How many token requests arrived."""
        with self._lock:
            return len(self.requests)

    def valid(self, token: str | None) -> bool:
        """Whether ``token`` was issued here and has not expired."""
        with self._lock:
            expiry = self.issued.get(token or "")
        return expiry is not None and self.clock() < expiry

    @staticmethod
    def error_body(error: str, code: int, description: str) -> dict[str, Any]:
        """Entra ID's error shape."""
        trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = time.strftime(_TS, time.gmtime())
        return {
            "error": error,
            "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace}\r\n"
                                 f"Correlation ID: {corr}\r\nTimestamp: {stamp}",
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": corr,
            "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        }

    async def _handle(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        tenant = request.match_info["tenant"]
        with self._lock:
            self.requests.append(TokenRequest(tenant, form))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            return web.json_response(self.fail[1], status=self.fail[0])
        if tenant != self.tenant:
            return web.json_response(self.error_body(
                "invalid_request", 90002, f"Tenant '{tenant}' not found. Check to make sure you have the correct "
                "tenant ID and are signing into the correct cloud."), status=400)
        if form.get("grant_type") != "client_credentials":
            return web.json_response(self.error_body(
                "unsupported_grant_type", 70003, "The app requested an unsupported grant type."), status=400)
        if form.get("client_id") != self.client_id:
            return web.json_response(self.error_body(
                "unauthorized_client", 700016, f"Application with identifier '{form.get('client_id')}' was not "
                "found in the directory."), status=400)
        if form.get("client_secret") != self.client_secret:
            return web.json_response(self.error_body(
                "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret being sent in the "
                "request is the client secret value, not the client secret ID, for a secret added to app "
                f"'{self.client_id}'."), status=401)
        if not form.get("scope", "").endswith("/.default"):
            return web.json_response(self.error_body(
                "invalid_scope", 1002012, f"The provided value for scope {form.get('scope')} is not valid. "
                "Client credential flows must have a scope value with /.default suffixed to the resource "
                "identifier (application ID URI)."), status=400)
        # A JWT's shape: an RS256 signature is 256 bytes, base64url without padding, so its
        # last character is always one of A, Q, g, w (never a hex digit: no 4-character end of
        # a token can be mistaken for a piece of a request id in a leak test).
        signature = base64.urlsafe_b64encode(os.urandom(256)).rstrip(b"=").decode()
        token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.aad-" + uuid.uuid4().hex + "." + signature
        with self._lock:
            self.issued[token] = self.clock() + self.expires_in
        return web.json_response({
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "ext_expires_in": self.expires_in,
            "access_token": token,
        })

    def start(self) -> FakeTokenEndpoint:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self.port = int(sock.getsockname()[1])
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/{tenant}/oauth2/v2.0/token", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.SockSite(self._runner, sock).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"FakeTokenEndpoint-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._thread = self._loop = None

    def __enter__(self) -> FakeTokenEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

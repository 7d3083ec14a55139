"""Reading KV v2 secrets over Vault's HTTP API, with token or AppRole auth and a TTL cache.

A reference is ``vault:<mount>/<path>#<field>`` (``vault:secret/llm/openai#api_key``
reads ``GET /v1/secret/data/llm/openai`` and its field ``api_key``); ``?version=3``
pins a version; ``#field`` may be left out when the secret has one field. With
``mount:`` set, the path is all path (``vault:llm/openai#api_key``).

Auth: a token (``token:``, default ``$VAULT_TOKEN``), or AppRole (``role_id`` and
``secret_id``: ``POST /v1/auth/<approle_mount>/login``), whose client token is kept
until its lease ends and fetched again once on a 403. ``namespace:`` (Vault
Enterprise) is sent as ``X-Vault-Namespace``.

Secrets are read when the configuration loads (several fields of one secret: one
read) and cached for ``ttl`` seconds, so a reload or a worker within it does not
read Vault again. Every call is bounded by ``timeout``. A failure is a
:class:`~clasp_gateway.SecretLookupError` saying what to fix (address, policy,
path, field), never a token or a secret; every token and value is registered for
redaction.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from clasp_gateway import Duration, Field, Number, Reference, SecretLookupError, Section, String, register_secret

SETTINGS = Section({
    "address": String(pattern=r"https?://\S+", expected="an http:// or https:// URL"),
    "token": Reference(),
    "role_id": Reference(),
    "secret_id": Reference(),
    "approle_mount": Field(String(non_empty=True), "approle"),
    "namespace": String(non_empty=True),
    "mount": String(pattern=r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*", expected="a KV v2 mount path such as secret"),
    "ttl": Field(Duration(minimum=0), 300.0),
    "timeout": Field(Number(above=0), 5.0),
    "ca_cert": String(non_empty=True),
})
"""``secrets.vault:``. Unset ``address``/``token``/``namespace`` fall back to
``$VAULT_ADDR``/``$VAULT_TOKEN``/``$VAULT_NAMESPACE``, as Vault's own CLI does."""

_MAX_BODY = 1024 * 1024
"""Largest Vault answer read (a KV secret is small)."""


class VaultBackend:
    """One configuration's Vault client (a :class:`~clasp_gateway.SecretBackend`)."""

    def __init__(self, address: str, *, token: str | None = None, role_id: str | None = None,
                 secret_id: str | None = None, approle_mount: str = "approle", namespace: str | None = None,
                 mount: str | None = None, ttl: float = 300.0, timeout: float = 5.0, ca_cert: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.address = address.rstrip("/")
        self.role_id, self.secret_id, self.approle_mount = role_id, secret_id, approle_mount
        self.namespace, self.mount, self.ttl, self.timeout = namespace, mount, ttl, timeout
        self.clock = clock
        self._static_token = token
        self._token: str | None = token
        self._token_expires = float("inf")
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._ssl = ssl.create_default_context(cafile=ca_cert) if ca_cert else None
        self.reads = 0
        """Secrets read from Vault (not from the cache): for tests and ``clasp check``."""

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> VaultBackend:
        """The backend for ``secrets.vault:`` (``options`` parsed by :data:`SETTINGS`)."""
        address = options.get("address") or os.environ.get("VAULT_ADDR")
        if not address:
            raise SecretLookupError("set secrets.vault.address or VAULT_ADDR (the Vault server's URL)")
        token = options.get("token") or (None if options.get("role_id") else os.environ.get("VAULT_TOKEN"))
        if not token and not (options.get("role_id") and options.get("secret_id")):
            raise SecretLookupError("set secrets.vault.token (or VAULT_TOKEN), or role_id and secret_id for AppRole")
        register_secret(token)
        register_secret(options.get("secret_id"))
        return cls(
            address, token=token, role_id=options.get("role_id"), secret_id=options.get("secret_id"),
            approle_mount=options.get("approle_mount") or "approle",
            namespace=options.get("namespace") or os.environ.get("VAULT_NAMESPACE"), mount=options.get("mount"),
            ttl=float(options.get("ttl", 300.0)), timeout=float(options.get("timeout", 5.0)),
            ca_cert=options.get("ca_cert"),
        )

    # --- the reference -------------------------------------------------------------------

    def resolve(self, path: str) -> str:
        """The secret of the reference ``path`` (``secret/llm/openai#api_key``)."""
        location, _, field = path.partition("#")
        location, _, query = location.partition("?")
        version = urllib.parse.parse_qs(query).get("version", [None])[0]
        if self.mount:
            mount, secret_path = self.mount, location.strip("/")
        else:
            mount, _, secret_path = location.strip("/").partition("/")
        if not mount or not secret_path:
            raise SecretLookupError("write vault:<mount>/<path>#<field>, e.g. vault:secret/llm/openai#api_key")
        data = self._read(mount, secret_path, version)
        if not field:
            if len(data) != 1:
                names = ", ".join(sorted(data)) or "none"
                raise SecretLookupError(f"name the field after '#' (this secret has: {names})")
            field = next(iter(data))
        if field not in data:
            raise SecretLookupError(f"the secret has no field {field!r} (it has: {', '.join(sorted(data)) or 'none'})")
        value = data[field]
        if not isinstance(value, str):
            raise SecretLookupError(f"the field {field!r} is not a string")
        register_secret(value)
        return value

    def _read(self, mount: str, path: str, version: str | None) -> dict[str, Any]:
        url = f"{self.address}/v1/{urllib.parse.quote(mount)}/data/{urllib.parse.quote(path)}"
        if version:
            url += "?version=" + urllib.parse.quote(version)
        with self._lock:  # one read per secret, even for workers resolving at once
            cached = self._cache.get(url)
            now = self.clock()
            if cached is not None and cached[0] > now:
                return cached[1]
            answer = self._authorized("GET", url, f"{mount}/{path}")
            data = (answer.get("data") or {}).get("data")
            if not isinstance(data, dict):
                raise SecretLookupError(f"{mount}/{path} is not a KV v2 secret (is {mount!r} a KV version 2 mount?)")
            self.reads += 1
            if self.ttl > 0:
                self._cache[url] = (now + self.ttl, data)
            return data

    # --- auth and HTTP ---------------------------------------------------------------------

    def _authorized(self, method: str, url: str, what: str) -> dict[str, Any]:
        for attempt in (1, 2):
            token = self._current_token()
            status, body = self._call(method, url, headers={"X-Vault-Token": token})
            if status == 200:
                return body
            if status == 403 and attempt == 1 and self.role_id and self._token is not None:
                self._token = None  # an AppRole token revoked or expired early: log in again, once
                continue
            raise self._failure(status, body, what)
        raise AssertionError("unreachable")

    def _current_token(self) -> str:
        if self._token is not None and self._token_expires > self.clock():
            return self._token
        if not (self.role_id and self.secret_id):
            if self._static_token:
                return self._static_token
            raise SecretLookupError("no Vault token: set secrets.vault.token or role_id and secret_id")
        url = f"{self.address}/v1/auth/{urllib.parse.quote(self.approle_mount)}/login"
        status, body = self._call("POST", url, payload={"role_id": self.role_id, "secret_id": self.secret_id})
        auth = body.get("auth") if status == 200 else None
        if not isinstance(auth, dict) or not auth.get("client_token"):
            if status in (400, 403):
                raise SecretLookupError(f"AppRole login refused at {self.approle_mount!r}: check role_id and secret_id")
            raise self._failure(status, body, f"auth/{self.approle_mount}/login")
        token = str(auth["client_token"])
        register_secret(token)
        lease = float(auth.get("lease_duration") or 0)
        self._token = token
        # Renew before the lease ends (10% early); a lease of 0 never expires.
        self._token_expires = self.clock() + lease * 0.9 if lease > 0 else float("inf")
        return token

    def _call(self, method: str, url: str, *, headers: dict[str, str] | None = None,
              payload: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.namespace:
            request.add_header("X-Vault-Namespace", self.namespace)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._ssl) as response:  # noqa: S310
                status, raw = response.status, response.read(_MAX_BODY)
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read(_MAX_BODY)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SecretLookupError(f"Vault at {self.address} is unreachable ({reason})") from None
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        return status, body if isinstance(body, dict) else {}

    def _failure(self, status: int, body: dict[str, Any], what: str) -> SecretLookupError:
        errors = [str(e) for e in body.get("errors") or [] if e][:3]
        detail = f" ({'; '.join(errors)})" if errors else ""
        if status == 403:
            return SecretLookupError(f"permission denied reading {what}: the token's policy must allow read on "
                                     f"the path{detail}")
        if status == 404:
            return SecretLookupError(f"no secret at {what} (or no such mount){detail}")
        return SecretLookupError(f"Vault answered {status} for {what}{detail}")

"""The issuer's discovery document and signing keys, fetched async and cached.

Keys are refetched when they are older than ``jwks_ttl``, and when a token names a
``kid`` the cached set does not hold (the issuer rotated its keys), at most once per
``jwks_min_refresh``: a flood of tokens with made-up ``kid`` values costs one fetch,
not one each. Concurrent callers share one fetch. While the issuer is unreachable the
keys already known stay in use (a token signed by a key we hold still verifies); a
token whose key we cannot get is refused (401), never accepted.

The discovery document must name the configured issuer exactly (OpenID Connect
Discovery 1.0, section 4.3), so a document served from elsewhere cannot redirect key
fetching to another party.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import orjson

log = logging.getLogger("clasp.oidc")

MAX_DOCUMENT_BYTES = 1 << 20
"""Largest discovery document, JWKS or token answer read (they are a few KB)."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One published key: the key, its type (``kty``) and the ``alg`` it declares, if any."""

    key: Any
    kty: str
    alg: str | None


class IssuerUnavailable(Exception):
    """The issuer's documents could not be fetched or read (the message says why)."""


class Issuer:
    """One issuer's endpoints and keys, over one pooled HTTP session."""

    def __init__(self, issuer: str, *, timeout: float, ttl: float, min_refresh: float,
                 algorithms: list[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.issuer = issuer
        self.timeout = timeout
        self.ttl = ttl
        self.min_refresh = min_refresh
        self.algorithms = algorithms
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._metadata: dict[str, Any] | None = None
        self._keys: dict[str, SigningKey] = {}
        self._unnamed: list[SigningKey] = []  # keys without a kid (an issuer with one key)
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._fetching: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self._fetching is not None and not self._fetching.done():
            self._fetching.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def get_json(self, url: str) -> dict[str, Any]:
        """A JSON object from ``url`` (bounded in size and time)."""
        try:
            async with self._http().get(url, headers={"accept": "application/json"}, allow_redirects=False) as response:
                body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise IssuerUnavailable(f"{url}: {type(exc).__name__}: {exc}") from None
        return _object(url, status, body)

    async def post_form(self, url: str, form: dict[str, str], headers: dict[str, str]) -> dict[str, Any]:
        """POST ``form`` (the token endpoint) with ``headers`` and read its JSON answer."""
        try:
            async with self._http().post(url, data=form, headers={"accept": "application/json", **headers},
                                         allow_redirects=False) as response:
                body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise IssuerUnavailable(f"{url}: {type(exc).__name__}: {exc}") from None
        return _object(url, status, body)

    async def metadata(self) -> dict[str, Any]:
        """The discovery document (fetched once; checked to name this issuer)."""
        if self._metadata is None:
            document = await self.get_json(self.issuer + "/.well-known/openid-configuration")
            if str(document.get("issuer", "")).rstrip("/") != self.issuer:
                raise IssuerUnavailable(f"the discovery document names the issuer {document.get('issuer')!r}, "
                                        f"not {self.issuer!r} (oidc.issuer must be exactly the issuer's URL)")
            if not isinstance(document.get("jwks_uri"), str):
                raise IssuerUnavailable("the discovery document has no jwks_uri")
            self._metadata = document
        return self._metadata

    async def key_for(self, kid: str | None) -> SigningKey | None:
        """The signing key named ``kid`` (or the only key when the token names none),
        refetching the key set when it is stale or ``kid`` is unknown."""
        now = self.clock()
        stale = self._fetched_at is None or now - self._fetched_at >= self.ttl
        found = self._lookup(kid)
        if found is not None and not stale:
            return found
        may_retry = self._attempted_at is None or now - self._attempted_at >= self.min_refresh
        if stale or may_retry:
            try:
                await self._refresh()
            except IssuerUnavailable as exc:
                if found is None:
                    raise
                log.warning("oidc: could not refresh the issuer's keys (%s); still using the ones known", exc)
        return self._lookup(kid)

    def _lookup(self, kid: str | None) -> SigningKey | None:
        if kid is not None:
            return self._keys.get(kid)
        if len(self._unnamed) + len(self._keys) == 1:
            return (self._unnamed or list(self._keys.values()))[0]
        return None

    async def _refresh(self) -> None:
        """One fetch of the key set, shared by every caller waiting for it."""
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.ensure_future(self._fetch())
        await asyncio.shield(self._fetching)

    async def _fetch(self) -> None:
        self._attempted_at = self.clock()
        if self._fetched_at is not None and self._attempted_at - self._fetched_at >= self.ttl:
            self._metadata = None  # the discovery document ages with the keys (a moved jwks_uri)
        metadata = await self.metadata()
        document = await self.get_json(metadata["jwks_uri"])
        keys = document.get("keys")
        if not isinstance(keys, list):
            raise IssuerUnavailable("the JWKS has no keys list")
        named: dict[str, SigningKey] = {}
        unnamed: list[SigningKey] = []
        for entry in keys[:100]:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            if entry.get("kty") == "oct":
                continue  # a shared secret is never a way to verify an issuer's tokens
            try:
                parsed = jwt.PyJWK(entry)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue  # a key type this build cannot read: skip it, keep the others
            alg = entry.get("alg")
            key = SigningKey(parsed.key, str(entry.get("kty")), alg if isinstance(alg, str) else None)
            kid = entry.get("kid")
            if isinstance(kid, str) and kid:
                named[kid] = key
            else:
                unnamed.append(key)
        self._keys, self._unnamed = named, unnamed
        self._fetched_at = self.clock()
        log.info("oidc: %d signing key(s) loaded from %s", len(named) + len(unnamed), metadata["jwks_uri"])


def _object(url: str, status: int, body: bytes) -> dict[str, Any]:
    if len(body) > MAX_DOCUMENT_BYTES:
        raise IssuerUnavailable(f"{url}: the answer is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise IssuerUnavailable(f"{url}: HTTP {status}, not JSON") from None
    if not isinstance(document, dict):
        raise IssuerUnavailable(f"{url}: HTTP {status}, not a JSON object")
    if status != 200:
        error = document.get("error")
        raise IssuerUnavailable(f"{url}: HTTP {status}" + (f" ({str(error)[:80]})" if error else ""))
    return document

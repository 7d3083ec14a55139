"""One upstream call: send over the pooled session, rotate keys, read bounded, say why it failed.

Every path that owns its wire (the direct OpenAI-compatible path, LiteLLM-built
``transform`` calls, clasp-claude's Anthropic pass-through, provider plugins such as
Bedrock and Vertex) sends through :class:`Upstream`, so these behave the same on
all of them:

- **Timeouts**: the deployment's ``connect`` and ``total`` on the request; its
  ``idle`` between reads of the answer (:mod:`.reads`).
- **Key rotation** (:func:`rotate_keys`): a key the provider refuses (401, 403, 429)
  is benched in the deployment's :class:`~.credentials.KeyPool` and the same request
  goes at once to its next usable key; only when none is left does the pipeline see
  the error (and may fall back to another deployment). The LiteLLM catch-all, which
  does not expose a response, uses the same loop through :class:`KeyRefused`.
- **Refreshed credentials**: an adapter that holds short-lived credentials of its own
  (SigV4 sessions, OAuth tokens) says which refusal means "expired"; the request is
  then signed again and resent once.
- **Status errors** (:func:`status_error`): the provider's own message from its error
  body (:func:`error_message`: the JSON error shapes of the common providers),
  redacted, with its status and when to retry (:func:`parse_retry_after`, Google's
  ``retryDelay``).
- **Bounded reads**: a whole answer up to ``server.max_upstream_response_bytes``, an
  error body up to :data:`~.reads.ERROR_BODY_BYTES`, each read within ``idle``.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson
from yarl import URL

from ..errors import UpstreamError
from ..redact import redact
from ..tracing import upstream_headers
from ..types import Deployment
from .credentials import KEY_FAILURES, Credentials, KeyPool, KeySlot
from .ratelimits import RateLimitState, parse_rate_limits
from .reads import ERROR_BODY_BYTES, FrameTooLarge, ReadLimits, network_reads, read_body, read_error_body, too_large

log = logging.getLogger("clasp.upstream")

__all__ = [
    "KeyRefused",
    "Upstream",
    "UpstreamRequest",
    "error_code",
    "error_message",
    "parse_retry_after",
    "rotate_keys",
    "status_error",
]

T = TypeVar("T")
F = TypeVar("F")


# --- what an error answer says -----------------------------------------------------------------


def parse_retry_after(headers: Any, status: int = 0) -> float | None:
    """Seconds to wait before retrying: ``retry-after`` / ``retry-after-ms`` (seconds or
    a date) when given; for a 429 without it, the reset of the exhausted rate-limit
    window (``x-ratelimit-reset-*`` and the other providers' spellings)."""
    state = parse_rate_limits(headers)
    if state.retry_after is not None or status != 429:
        return state.retry_after
    return state.wait(state.observed_at)


_RETRY_DELAY = re.compile(rb'"retryDelay"\s*:\s*"(\d+(?:\.\d+)?)s"')


def retry_after(headers: Any, status: int, body: bytes = b"") -> float | None:
    """:func:`parse_retry_after`, else Google's ``RetryInfo.retryDelay`` in the body of
    a 429 (Gemini's carries no ``retry-after`` header)."""
    wait = parse_retry_after(headers, status)
    if wait is None and status == 429:
        match = _RETRY_DELAY.search(body)
        if match:
            wait = float(match.group(1))
    return wait


def error_message(body: bytes, content_type: str) -> str:
    """The provider's message in an error answer (JSON error shapes of the common
    providers, or the text), for a person; callers redact it."""
    text = body[:ERROR_BODY_BYTES].decode("utf-8", "replace")
    if "json" in content_type or text.lstrip().startswith(("{", "[")):
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, list) and data:
            data = data[0]
        if isinstance(data, dict):
            err = data.get("error", data)
            if isinstance(err, dict):
                msg = err.get("message") or err.get("msg") or err.get("detail")
                if msg:
                    return _readable(msg)
            elif isinstance(err, str):
                return err
            if data.get("message"):
                return str(data["message"])
    if "html" in content_type:
        return "the upstream answered with an HTML page (is api_base right?)"
    return " ".join(text.split())[:300] or "(empty body)"


def _readable(msg: Any) -> str:
    """An error message for a person, also from validation details: Mistral and
    FastAPI-based servers answer ``{"message": {"detail": [{"loc": [...], "msg": ...}]}}``."""
    if isinstance(msg, dict) and "detail" in msg:
        msg = msg["detail"]
    if isinstance(msg, list):
        parts = []
        for item in msg[:5]:
            if isinstance(item, dict) and item.get("msg"):
                loc = ".".join(str(x) for x in item.get("loc") or () if x != "body")
                parts.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(msg)


def error_code(body: bytes) -> str | None:
    """The ``error.code`` of an OpenAI-style error body (``insufficient_quota``...)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    code = err.get("code") or err.get("type") if isinstance(err, dict) else None
    return code if isinstance(code, str) else None


def status_error(response: aiohttp.ClientResponse, body: bytes, label: str, name: str = "provider") -> UpstreamError:
    """The error for an HTTP error status: the provider's message (redacted), its
    status, and when to retry."""
    ctype = response.headers.get("content-type", "").lower()
    return UpstreamError(
        f"{label}: {name} answered {response.status}: {redact(error_message(body, ctype))}",
        upstream_status=response.status, deployment=label,
        retry_after=retry_after(response.headers, response.status, body),
    )


# --- one key-rotation loop ---------------------------------------------------------------------


class KeyRefused(Exception):
    """Raised by a call made with one key of a pool when the provider refused that key
    (401, 403 or 429): :func:`rotate_keys` benches it and tries the next one."""

    def __init__(self, error: UpstreamError, status: int, limits: RateLimitState, code: str | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        """The error the request fails with if no other key is left."""
        self.status = status
        self.limits = limits
        """What the refusal's headers said about the key's rate limits (when it is back)."""
        self.code = code
        """The provider's error code (``insufficient_quota`` benches a key like a 401)."""


async def rotate_keys(
    pool: KeyPool, label: str, call: Callable[[KeySlot | None], Awaitable[T]], *, need_tokens: int = 0
) -> T:
    """``await call(slot)`` with the next usable key of ``pool`` (``None`` when the
    deployment has no key) until one is not refused.

    ``call`` raises :class:`KeyRefused` for a refused key: the key is benched (for the
    provider's reset after a 429, ``auth_cooldown`` after a 401/403) and the request
    goes at once to the next usable key. When none is left, the refusal's error is
    raised; with several keys it says they are all benched and, after a 429, when
    the first comes back. ``need_tokens``: the request's estimated size, to skip keys
    the provider said are nearly out of tokens."""
    tried: list[KeySlot] = []
    while True:
        slot = pool.pick(need_tokens, tried)
        try:
            return await call(slot)
        except KeyRefused as refused:
            if slot is None:
                raise refused.error from None
            pool.reject(slot, refused.status, refused.limits, error_code=refused.code)
            tried.append(slot)
            if pool.has_alternative(tried):
                log.info("%s: API key %s refused (%d); retrying with the next key", label, slot.label, refused.status)
                continue
            error = refused.error
            if len(pool.slots) > 1:
                error = UpstreamError(
                    f"{error.message} (all {len(pool.slots)} API keys of this deployment are benched)",
                    upstream_status=error.upstream_status, deployment=error.deployment,
                    retry_after=pool.soonest_available() if refused.status == 429 else error.retry_after,
                )
            raise error from None


# --- the call helper ---------------------------------------------------------------------------


@dataclass(slots=True)
class UpstreamRequest:
    """One HTTP request to a provider, ready to send (built per key by the adapter)."""

    url: str | URL
    """The full URL (a :class:`yarl.URL` built with ``encoded=True`` is sent as is,
    e.g. a path that was signed with its escapes)."""
    body: bytes
    headers: dict[str, str]


Build = Callable[[str | None], "UpstreamRequest | Awaitable[UpstreamRequest]"]
"""Builds the request for one API key (``None``: the deployment has no key of the
gateway's, e.g. it signs with credentials of its own)."""

Refresh = Callable[[aiohttp.ClientResponse, bytes], "bool | Awaitable[bool]"]
"""Called with a refused answer and its (bounded) body: renew the adapter's own
credentials and return ``True`` to resend once, else ``False``."""

ErrorFor = Callable[[aiohttp.ClientResponse, bytes, str], UpstreamError]
"""The error for an HTTP error status, from the answer, its (bounded) body and the
deployment's label (default: :func:`status_error`)."""


class Decoder(Protocol[F]):
    """A stream framing decoder: bytes in, complete frames out (:class:`~.sse.SSEDecoder`,
    :class:`~.ndjson.NDJSONDecoder`); raises :class:`~.reads.FrameTooLarge` past its bound."""

    def feed(self, raw: bytes) -> list[F]: ...

    def flush(self) -> list[F]: ...


async def _resolve(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class Upstream:
    """The gateway's wire to providers, for its own paths and for provider plugins.

    One pooled aiohttp session per worker (the gateway's: ``providers.upstream``,
    handed to an adapter by ``bind(providers)``), the key pools of the deployments
    (:class:`~.credentials.Credentials`) and the ``server:`` read limits. An adapter
    used outside a gateway (tests, tools) makes its own ``Upstream()``: it opens a
    session on first use and :meth:`close` closes it.

    A provider adapter then only translates::

        response = await upstream.send(deployment, lambda key: UpstreamRequest(url, payload, headers))
        try:
            async for frames in upstream.frames(response, deployment, SSEDecoder(upstream.limits.max_line_bytes)):
                ...  # None: the upstream is silent (time for a keep-alive)
        finally:
            response.release()
    """

    def __init__(self, credentials: Credentials | None = None, limits: ReadLimits | None = None) -> None:
        self.credentials = credentials or Credentials()
        """The key pools and token sources of the deployments this wire serves."""
        self.limits = limits or ReadLimits()
        """How much of an answer may be held in memory (``server:`` limits)."""
        self._session: aiohttp.ClientSession | None = None

    # --- the session ---------------------------------------------------------------------------

    async def start(self) -> aiohttp.ClientSession:
        """Open the pooled session (once) and return it."""
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=int(os.environ.get("CLASP_UPSTREAM_CONNECTIONS", "1000")),
                limit_per_host=0,
                keepalive_timeout=60,
                ttl_dns_cache=300,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The pooled session (``None`` before :meth:`start` or the first call)."""
        return self._session

    async def close(self) -> None:
        """Close the session (the gateway does, at shutdown)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- sending ---------------------------------------------------------------------------------

    async def send(
        self,
        deployment: Deployment,
        build: Build,
        *,
        keys: bool = True,
        need_tokens: int = 0,
        refresh: Refresh | None = None,
        error: ErrorFor | None = None,
        name: str = "the provider",
    ) -> aiohttp.ClientResponse:
        """Send the request ``build`` makes and return the answer, status < 400 (the
        caller reads it and must ``release()`` it).

        ``keys``: rotate the deployment's API keys (``api_keys:``), ``build`` getting
        each key in turn; ``False`` for adapters that authenticate otherwise. An error
        status raises :class:`UpstreamError` (``error`` makes it; by default
        :func:`status_error`), after ``refresh`` (if given) had one chance to renew the
        adapter's own credentials. ``name`` names the upstream in connection errors
        ("cannot reach Bedrock")."""
        session = self._session or await self.start()
        t = deployment.timeouts
        timeout = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, connect=t.connect)
        label = deployment.id
        pool = self.credentials.pool(deployment) if keys else None
        refreshed = False

        async def call(slot: KeySlot | None) -> aiohttp.ClientResponse:
            nonlocal refreshed
            while True:
                request = build(slot.value if slot is not None else None)
                if not isinstance(request, UpstreamRequest):
                    request = await request
                headers = request.headers
                extra = upstream_headers()  # a plugin's per-request headers (traceparent): tracing.py
                if extra:
                    headers = {**extra, **headers}
                try:
                    response = await session.post(request.url, data=request.body, headers=headers,
                                                  timeout=timeout)
                except TimeoutError:
                    where = "" if name == "the provider" else f" to {name}"
                    raise UpstreamError(f"{label}: timed out connecting{where}", upstream_status=0, deployment=label,
                                        kind="timeout") from None
                except aiohttp.ClientError as exc:
                    raise UpstreamError(f"{label}: cannot reach {name} ({redact(str(exc)) or type(exc).__name__})",
                                        upstream_status=0, deployment=label, kind="connect") from None
                status = response.status
                if status < 400:
                    if slot is not None and pool is not None and pool.tracks_limits:
                        pool.observe(slot, parse_rate_limits(response.headers, now=pool.clock()))
                    return response
                try:
                    body = await read_error_body(response, label, t.idle)
                finally:
                    response.release()
                if slot is not None and status in KEY_FAILURES:
                    failed = (error or status_error)(response, body, label)
                    limits = parse_rate_limits(response.headers, now=pool.clock() if pool is not None else None)
                    raise KeyRefused(failed, status, limits, error_code(body))
                if refresh is not None and not refreshed:
                    refreshed = True
                    if await _resolve(refresh(response, body)):
                        continue
                raise (error or status_error)(response, body, label)

        if pool is None:
            return await call(None)
        return await rotate_keys(pool, label, call, need_tokens=need_tokens)

    # --- reading -----------------------------------------------------------------------------------

    async def read_body(self, response: aiohttp.ClientResponse, deployment: Deployment) -> bytes:
        """The whole answer, at most ``limits.max_body_bytes`` (over it: a 502
        :class:`UpstreamError` naming the limit), each read within the deployment's ``idle``."""
        return await read_body(response, deployment.id, deployment.timeouts.idle, self.limits.max_body_bytes)

    def reads(self, response: aiohttp.ClientResponse, deployment: Deployment) -> AsyncIterator[bytes | None]:
        """Each network read of a streamed answer, ``b""`` once at its end, ``None`` while
        the upstream is silent but within ``idle`` (time for a keep-alive)."""
        return network_reads(response, deployment.id, deployment.timeouts.idle)

    async def frames(
        self, response: aiohttp.ClientResponse, deployment: Deployment, decoder: Decoder[F]
    ) -> AsyncIterator[list[F] | None]:
        """The frames of each network read, decoded by ``decoder`` (the last list is what
        :meth:`Decoder.flush` holds at the end), or ``None`` while the upstream is silent.
        A frame over the decoder's bound is a 502 naming ``server.max_line_bytes``."""
        label = deployment.id
        async for raw in network_reads(response, label, deployment.timeouts.idle):
            if raw is None:
                yield None
                continue
            try:
                frames = decoder.feed(raw) if raw else decoder.flush()
            except FrameTooLarge as exc:
                raise too_large(label, exc.limit, line=True) from None
            yield frames

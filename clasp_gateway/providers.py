"""Calling providers: the gateway's own wire for OpenAI-compatible upstreams, and
LiteLLM's knowledge for the rest. This module and :mod:`.transform` are the only
ones that import LiteLLM (once, before serving, and only if a deployment needs it).

Measured (``../shared/LITELLM.md`` and ``bench/``): ``litellm.acompletion`` costs
about 7x a raw HTTP call and 20x on long streams, so OpenAI-compatible deployments
(``mode: direct``) go over one pooled aiohttp session with our own SSE parsing;
other providers go ``mode: transform`` (LiteLLM's provider config builds and parses,
the same session sends); ``litellm.acompletion`` stays the catch-all
(``mode: litellm``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
from collections.abc import AsyncIterator
from typing import Any, Protocol

import aiohttp
import orjson

from .canonical import completion_to_chunk
from .catalog import provider_profile
from .credentials import KEY_FAILURES, Credentials, KeySlot, credential_settings
from .errors import ConfigurationError, UpstreamError
from .params import MODEL_PARAMS, upstream_params
from .quirks import response_fixer
from .ratelimits import parse_rate_limits
from .reads import ERROR_BODY_BYTES, FrameTooLarge, ReadLimits, network_reads, read_body, read_error_body, too_large
from .redact import install_redaction, redact
from .sse import SSEDecoder
from .types import KEEPALIVE, CanonicalRequest, Chunk, Deployment, ReadAhead, RequestContext

log = logging.getLogger("clasp.providers")


class ProviderAdapter(Protocol):
    """What a provider needs to offer the pipeline (``register_providers``).

    ``open`` returns an async iterator of canonical chunks; nothing is sent before
    the first ``__anext__``. Failures raise :class:`~clasp_gateway.errors.UpstreamError`
    (or another GatewayError); a stream that ends early must raise, never just stop.
    An adapter whose ``open`` also declares ``ctx`` gets the request's
    :class:`~clasp_gateway.types.RequestContext` (``None`` outside a request, e.g.
    ``clasp check``); one with ``bind(providers)`` is handed the
    :class:`Providers` that owns it.
    """

    def open(self, deployment: Deployment, body: CanonicalRequest, *, stream: bool) -> AsyncIterator[Chunk]: ...


def parse_retry_after(headers: Any, status: int = 0) -> float | None:
    """Seconds to wait before retrying: ``retry-after`` / ``retry-after-ms`` (seconds or
    a date) when given; for a 429 without it, the reset of the exhausted rate-limit
    window (``x-ratelimit-reset-*`` and the other providers' spellings)."""
    state = parse_rate_limits(headers)
    if state.retry_after is not None or status != 429:
        return state.retry_after
    return state.wait(state.observed_at)


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


def _api_key(deployment: Deployment) -> str | None:
    for key in deployment.keys:
        if key.value:
            return key.value
    return None


def error_code(body: bytes) -> str | None:
    """The ``error.code`` of an OpenAI-style error body (``insufficient_quota``...)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    code = err.get("code") or err.get("type") if isinstance(err, dict) else None
    return code if isinstance(code, str) else None


_error_message = error_message  # the names the transform path and plugins used before
_error_code = error_code


class OpenAICompatible:
    """The direct path: OpenAI-compatible chat completions over a pooled session."""

    def __init__(self, credentials: Credentials | None = None, limits: ReadLimits | None = None) -> None:
        self._session: aiohttp.ClientSession | None = None
        self.credentials = credentials or Credentials()
        self.limits = limits or ReadLimits()

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The pooled session (``None`` before :meth:`start`)."""
        return self._session

    async def start(self) -> None:
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

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url_and_headers(self, deployment: Deployment, key: str | None = None) -> tuple[str, dict[str, str]]:
        """The URL and headers of a chat call with ``key`` (default: the first set key).
        An Azure AD bearer token is added by :meth:`open`, which may have to fetch it."""
        profile = provider_profile(deployment.provider)
        headers = {"content-type": "application/json", "user-agent": "clasp-gateway"}
        if key is None:
            key = _api_key(deployment)
        if profile.auth == "api-key":
            if key:
                headers["api-key"] = key
        elif key:
            headers["authorization"] = f"Bearer {key}"
        headers.update(deployment.headers)
        for name, secret in credential_settings(deployment).secret_headers.items():
            if secret.value:
                headers[name] = secret.value
        if profile.path_style == "azure":
            url = (
                f"{deployment.api_base}/openai/deployments/{deployment.model}/chat/completions"
                f"?api-version={deployment.api_version}"
            )
        else:
            url = f"{deployment.api_base}/chat/completions"
        return url, headers

    async def open(
        self, deployment: Deployment, body: CanonicalRequest, *, stream: bool, read_ahead: ReadAhead | None = None
    ) -> AsyncIterator[Chunk]:
        if self._session is None:
            await self.start()
        assert self._session is not None
        t = deployment.timeouts
        timeout = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, connect=t.connect)
        label = deployment.id
        data = orjson.dumps(body)
        pool = self.credentials.pool(deployment)
        tokens = self.credentials.token_source(deployment)
        bearer = None if tokens is None else await tokens.token()
        # A key the provider refuses (429/401/403) is benched and the same request goes
        # at once to the next usable key of this deployment; only when none is left
        # does the pipeline see the error (and fall back to another deployment).
        tried: list[KeySlot] = []
        while True:
            slot = pool.pick(len(data) // 4, tried)  # ~4 bytes of JSON per token
            url, headers = self.url_and_headers(deployment, slot.value if slot else None)
            if bearer is not None:
                headers.pop("api-key", None)
                headers["authorization"] = f"Bearer {bearer}"
            try:
                response = await self._session.post(url, data=data, headers=headers, timeout=timeout)
            except TimeoutError:
                raise UpstreamError(f"{label}: timed out connecting", upstream_status=0, deployment=label, kind="timeout") from None
            except aiohttp.ClientError as exc:
                raise UpstreamError(
                    f"{label}: cannot reach the provider ({redact(str(exc)) or type(exc).__name__})",
                    upstream_status=0,
                    deployment=label,
                    kind="connect",
                ) from None
            if slot is None:
                break
            if response.status in KEY_FAILURES:
                try:
                    error_body = await read_error_body(response, label, t.idle)
                finally:
                    response.release()
                pool.reject(slot, response.status, parse_rate_limits(response.headers), error_code=error_code(error_body))
                tried.append(slot)
                if pool.has_alternative(tried):
                    log.info("%s: API key %s refused (%d); retrying with the next key", label, slot.label, response.status)
                    continue
                error = self._status_error(response, error_body, label)
                if len(pool.slots) > 1:
                    error = UpstreamError(
                        f"{error.message} (all {len(pool.slots)} API keys of this deployment are benched)",
                        upstream_status=error.upstream_status, deployment=label,
                        retry_after=pool.soonest_available() if response.status == 429 else error.retry_after,
                    )
                raise error
            if pool.tracks_limits and response.status < 400:
                pool.observe(slot, parse_rate_limits(response.headers))
            break
        try:
            async for chunk in self._read(response, deployment, stream, read_ahead):
                yield chunk
        finally:
            response.release()

    async def _read(
        self, response: aiohttp.ClientResponse, deployment: Deployment, stream: bool,
        read_ahead: ReadAhead | None = None,
    ) -> AsyncIterator[Chunk]:
        label = deployment.id
        ctype = response.headers.get("content-type", "").lower()
        idle = deployment.timeouts.idle
        if response.status >= 400:
            body = await read_error_body(response, label, idle)
            raise self._status_error(response, body, label)
        if "text/event-stream" in ctype:
            async for chunk in self._read_sse(response, label, idle, read_ahead or ReadAhead(), self.limits.max_line_bytes):
                yield chunk
            return
        body = await read_body(response, label, idle, self.limits.max_body_bytes)
        if "html" in ctype or body.lstrip()[:1] == b"<":
            raise UpstreamError(
                f"{label}: provider answered HTML, not a chat completion (is api_base right?)",
                upstream_status=502, deployment=label, kind="protocol",
            )
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                f"{label}: provider answered malformed JSON ({len(body)} bytes)",
                upstream_status=502, deployment=label, kind="protocol",
            ) from None
        if isinstance(data, dict) and data.get("error") and not data.get("choices"):
            raise UpstreamError(
                f"{label}: provider error: {redact(error_message(body, 'json'))}",
                upstream_status=502, deployment=label,
            )
        if not isinstance(data, dict) or not data.get("choices"):
            raise UpstreamError(
                f"{label}: provider answered without choices", upstream_status=502, deployment=label, kind="protocol"
            )
        yield completion_to_chunk(data)

    @staticmethod
    def _status_error(response: aiohttp.ClientResponse, body: bytes, label: str) -> UpstreamError:
        """The error for an HTTP error status (the provider's message, redacted)."""
        ctype = response.headers.get("content-type", "").lower()
        return UpstreamError(
            f"{label}: provider answered {response.status}: {redact(error_message(body, ctype))}",
            upstream_status=response.status,
            deployment=label,
            retry_after=parse_retry_after(response.headers, response.status),
        )

    @staticmethod
    async def _read_sse(
        response: aiohttp.ClientResponse, label: str, idle: float | None, read_ahead: ReadAhead, max_line: int
    ) -> AsyncIterator[Chunk]:
        decoder = SSEDecoder(max_line)
        finished = False
        done = False
        loads = orjson.loads
        async for raw in network_reads(response, label, idle):
            if raw is None:
                read_ahead.pending = 0
                yield KEEPALIVE
                continue
            try:
                events = decoder.feed(raw) if raw else decoder.flush()
            except FrameTooLarge:
                raise too_large(label, max_line, line=True) from None
            if "[DONE]" in events:
                events = events[: events.index("[DONE]")]
                done = True
            # Parse the whole read first, so ``read_ahead.pending`` is exact: a route
            # holding output for a chunk still to come must never wait on the network.
            batch: list[Chunk] = []
            failure: UpstreamError | None = None
            for data in events:
                try:
                    chunk = loads(data)
                except orjson.JSONDecodeError:
                    failure = UpstreamError(
                        f"{label}: malformed event in the stream", upstream_status=502, deployment=label, kind="protocol"
                    )
                    break
                if not isinstance(chunk, dict):
                    continue
                if "error" in chunk and not chunk.get("choices"):
                    err = chunk["error"]
                    message = err.get("message") if isinstance(err, dict) else str(err)
                    code = err.get("code") if isinstance(err, dict) else None
                    failure = UpstreamError(
                        f"{label}: provider error mid-stream: {redact(str(message))}",
                        upstream_status=code if isinstance(code, int) and code >= 400 else 502,
                        deployment=label,
                        kind="protocol",
                    )
                    break
                for choice in chunk.get("choices") or ():
                    if choice.get("finish_reason"):
                        finished = True
                batch.append(chunk)
            remaining = len(batch)
            for chunk in batch:
                remaining -= 1
                read_ahead.pending = remaining
                yield chunk
            if failure is not None:
                raise failure
            if done:
                break
        if not done and not finished:
            raise UpstreamError(
                f"{label}: stream ended before the answer was complete",
                upstream_status=0, deployment=label, kind="protocol",
            )


_LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")
"""LiteLLM's loggers: each gets its own stream handler at import (see :func:`adopt_litellm_logging`)."""

_LITELLM_PREFIX = re.compile(r"^(?:\s*(?:litellm\.)?[A-Za-z0-9_]*(?:Error|Exception)\s*(?:[:-]\s*|\s+-\s+))+")
"""LiteLLM's prefixes: ``litellm.AuthenticationError: AuthenticationError: Ai21_chatException - ``."""
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)|\n\s+File \"|Received Model Group|LiteLLM Retried", re.S)
_STATUS_PREFIX = re.compile(r"^Error code: \d+\s*-?\s*")
_QUOTED_MESSAGE = re.compile(r"""['"]message['"]\s*:\s*(['"])(.+?)(?<!\\)\1""", re.S)


def adopt_litellm_logging() -> None:
    """Route LiteLLM's log records through the gateway's own handlers.

    ``import litellm`` adds its own stream handler to its loggers, which would
    print every record (provider error texts included) without the gateway's
    redaction and in another format; the records go to the root logger's handlers
    instead, where :func:`~clasp_gateway.redact.install_redaction` and the handler
    set up by ``clasp serve`` apply."""
    for name in _LITELLM_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


def clean_error_text(exc: BaseException) -> str:
    """The provider's own message from a LiteLLM exception, for a client: without
    LiteLLM's class-name prefixes, tracebacks, retry notes and echoed bodies,
    redacted, bounded (``""`` when nothing of the provider's is left)."""
    text = str(getattr(exc, "message", None) or exc)
    cut = _TRACEBACK.search(text)
    if cut is not None:
        text = text[: cut.start()]
    quoted = _QUOTED_MESSAGE.search(text)  # "... - {'error': {'message': '...'}}"
    if quoted is not None:
        text = quoted.group(2)
    text = _LITELLM_PREFIX.sub("", " ".join(text.split()))
    text = _STATUS_PREFIX.sub("", text)
    if text.startswith("<") or "<html" in text[:200].lower():
        return "the upstream answered with an HTML page (is api_base right?)"
    if "Original Response:" in text:  # a parser quoting what it could not read
        text = text.split("Original Response:", 1)[0].rstrip(" ,-")
    return redact(text)[:300].strip()


def _provider_message(exc: BaseException) -> str:
    """The provider's message from the answer a LiteLLM exception carries, when its
    own text has none: LiteLLM's OpenAI-compatible path says only ``Error code: 401``
    for a body it cannot read as OpenAI's (AI21's ``{"detail": "..."}``)."""
    response = getattr(exc, "response", None)
    try:
        content = response.content if response is not None else None  # read by the SDK on an error status
        ctype = str(response.headers.get("content-type", "")) if response is not None else ""
    except Exception:  # not an httpx.Response, or its body was not read
        return ""
    if not isinstance(content, (bytes, bytearray)) or not content:
        return ""
    return redact(error_message(bytes(content[:ERROR_BODY_BYTES]), ctype))[:300].strip()


def _litellm_error(exc: BaseException, deployment: Deployment) -> UpstreamError:
    """A LiteLLM exception as the gateway's error: the provider's status and a clean
    message; LiteLLM's internals (class names, tracebacks) only go to the log."""
    label = deployment.id
    status = getattr(exc, "status_code", None)
    log.info("%s: LiteLLM call failed: %s: %s", label, type(exc).__name__, exc)
    name = type(exc).__name__
    if name in ("Timeout", "APITimeoutError") or status == 408:
        return UpstreamError(f"{label}: the provider did not answer in time", upstream_status=0, deployment=label,
                             kind="timeout")
    message = clean_error_text(exc)
    if name == "APIConnectionError" or not isinstance(status, int) or status < 400 or message.startswith(
            "Connection error"):
        return UpstreamError(f"{label}: cannot reach the provider, or the call failed before an answer "
                             "(details in the gateway log)", upstream_status=0, deployment=label, kind="connect")
    headers = getattr(exc, "litellm_response_headers", None) or getattr(getattr(exc, "response", None), "headers", None)
    if not message:
        message = _provider_message(exc)
    if not message:
        ctype = str((headers or {}).get("content-type", ""))
        message = "the upstream answered with an HTML page (is api_base right?)" if "html" in ctype else "(no message)"
    return UpstreamError(
        f"{label}: provider answered {status}: {message}", upstream_status=status, deployment=label,
        retry_after=parse_retry_after(headers or {}, status),
    )


class LiteLLMAdapter:
    """The catch-all: ``litellm.acompletion`` for providers without a direct path.

    LiteLLM is imported once, before the app serves, and only if a deployment needs
    it (``import litellm`` costs ~5 s of CPU here).

    ``acompletion`` takes a great many keyword arguments that decide where a call
    goes and what it carries; it gets only the canonical OpenAI parameters of the
    request (:mod:`clasp_gateway.params`), the deployment's ``extra_body``, and
    then the gateway's own settings, which nothing before them can replace. LiteLLM
    retries nothing itself (``num_retries=0``, ``max_retries=0``): the fallback
    policy (``on_error``) is the only one, so one attempt is one upstream call.
    """

    def __init__(self, credentials: Credentials | None = None) -> None:
        self._litellm: Any = None
        self.credentials = credentials or Credentials()
        self._openai_params: dict[str, frozenset[str] | None] = {}

    def ensure_loaded(self) -> Any:
        if self._litellm is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            # LiteLLM's own handler (removed just after, see adopt_litellm_logging) would
            # print what LiteLLM logs while it imports a second time, in its format.
            os.environ.setdefault("LITELLM_LOG", "CRITICAL")
            import litellm

            litellm.suppress_debug_info = True
            # Per call instead (call_params): set here, it would also make LiteLLM's
            # OpenAI-compatible path send a request again after a 422 (openai.py).
            litellm.drop_params = False
            adopt_litellm_logging()
            self._litellm = litellm
        return self._litellm

    @staticmethod
    def call_params(deployment: Deployment, body: CanonicalRequest, *, stream: bool) -> dict[str, Any]:
        """The keyword arguments of ``litellm.acompletion`` for ``body`` (without the
        key and Azure AD token, added per attempt)."""
        params: dict[str, Any] = {k: body[k] for k in MODEL_PARAMS if body.get(k) is not None}
        if deployment.extra_body:
            params.update(deployment.extra_body)  # the operator's, as before
        params["messages"] = body.get("messages") or []
        params["model"] = f"{deployment.provider}/{deployment.model}"
        if deployment.api_base:
            params["api_base"] = deployment.api_base
        if deployment.api_version:
            params["api_version"] = deployment.api_version
        extra_headers = dict(deployment.headers)
        for name, secret in credential_settings(deployment).secret_headers.items():
            if secret.value:
                extra_headers[name] = secret.value
        params["extra_headers"] = extra_headers
        params["timeout"] = deployment.timeouts.total
        params["stream"] = stream
        params["num_retries"] = 0  # LiteLLM's own retry loop
        params["max_retries"] = 0  # the provider SDK's (the openai client retries twice by default)
        params["drop_params"] = True  # parameters the provider does not take are left out
        return params

    def openai_params(self, deployment: Deployment) -> frozenset[str] | None:
        """The OpenAI parameters ``deployment``'s provider takes, when LiteLLM calls it
        through its OpenAI-compatible path (the openai SDK: AI21's ``ai21_chat``,
        Cerebras, NVIDIA NIM...), else ``None``. Resolved once per deployment."""
        if deployment.id not in self._openai_params:
            litellm = self.ensure_loaded()
            found: frozenset[str] | None = None
            try:
                provider = litellm.get_llm_provider(
                    f"{deployment.provider}/{deployment.model}", api_base=deployment.api_base or None)[1]
                if provider in litellm.openai_compatible_providers:
                    found = frozenset(litellm.get_supported_openai_params(
                        model=deployment.model, custom_llm_provider=provider) or ())
            except Exception:  # LiteLLM does not know it: acompletion will say so
                found = None
            self._openai_params[deployment.id] = found
        return self._openai_params[deployment.id]

    def narrowed(self, deployment: Deployment, params: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        """``params`` for LiteLLM's OpenAI-compatible path, where one attempt must stay
        one upstream call: the openai SDK retries twice on its own unless it is handed
        ``max_retries`` (which LiteLLM passes on only when allowed: most providers'
        configs do not list it), and with ``drop_params`` a 422 makes LiteLLM send the
        request again without the fields it names. So the request carries only
        parameters the provider takes, dropped here instead."""
        supported = self.openai_params(deployment)
        if supported is None:
            return params
        for key in MODEL_PARAMS:
            if key in params and key not in supported and key not in deployment.extra_body:
                del params[key]
        params["drop_params"] = False
        params["allowed_openai_params"] = ["max_retries"]  # to the SDK, never into the body
        if stream:
            # The provider's usage on its last chunk is dropped unless asked for; LiteLLM
            # sends stream_options upstream only to providers that take it.
            params["stream_options"] = {"include_usage": True}
        return params

    async def open(
        self, deployment: Deployment, body: CanonicalRequest, *, stream: bool
    ) -> AsyncIterator[Chunk]:
        litellm = self.ensure_loaded()
        params = self.narrowed(deployment, self.call_params(deployment, body, stream=stream), stream=stream)
        pool = self.credentials.pool(deployment)
        tried: list[KeySlot] = []
        try:
            bearer = await self.credentials.bearer_token(deployment)
            if bearer is not None:
                params["azure_ad_token"] = bearer
            while True:  # a refused key: the same request on the next key (see OpenAICompatible)
                slot = pool.pick(exclude=tried)
                if slot is not None:
                    params["api_key"] = slot.value
                try:
                    result = await litellm.acompletion(**params)
                except Exception as exc:
                    status = getattr(exc, "status_code", None)
                    if slot is None or status not in KEY_FAILURES:
                        raise
                    headers = getattr(exc, "litellm_response_headers", None) or getattr(
                        getattr(exc, "response", None), "headers", None)
                    pool.reject(slot, int(status), parse_rate_limits(headers or {}))
                    tried.append(slot)
                    if not pool.has_alternative(tried):
                        raise
                    log.info("%s: API key %s refused (%s); retrying with the next key", deployment.id, slot.label, status)
                    continue
                break
            if not stream:
                yield completion_to_chunk(result.model_dump())
                return
            finished = False
            async for chunk in result:
                data = chunk.model_dump(exclude_none=True)
                for choice in data.get("choices") or ():
                    if choice.get("finish_reason"):
                        finished = True
                yield data
            if not finished:
                raise UpstreamError(
                    f"{deployment.id}: stream ended before the answer was complete",
                    upstream_status=0, deployment=deployment.id, kind="protocol",
                )
        except UpstreamError:
            raise
        except Exception as exc:  # LiteLLM maps provider errors to its own classes
            raise _litellm_error(exc, deployment) from None


class Providers:
    """Picks the adapter for each deployment and owns their lifecycles.

    Built-in paths by ``deployment.mode``: ``direct`` (OpenAI-compatible wire),
    ``transform`` (LiteLLM's provider config, our wire: :mod:`.transform`) and
    ``litellm`` (``litellm.acompletion``). A plugin adapter registered under the
    provider's name takes precedence; if it has ``bind(providers)`` it is handed
    this object (to reach the pooled session and delegate to :meth:`builtin_for`),
    and if its ``open`` declares a ``ctx`` parameter it receives the request's
    :class:`~clasp_gateway.types.RequestContext`. Every adapter gets the request
    reduced to its canonical parameters (:func:`~clasp_gateway.params.upstream_params`),
    so no client field can steer a call (its URL, key, headers or retries).
    """

    def __init__(self, extra: dict[str, ProviderAdapter] | None = None, *, limits: ReadLimits | None = None) -> None:
        from .transform import TransformAdapter  # transform.py builds on this module

        install_redaction()  # no log record, whoever writes it, may carry a key held here
        self.limits = limits or ReadLimits()
        """How much of an answer an adapter may hold in memory (``server:`` limits)."""
        self.credentials = Credentials()
        self.direct = OpenAICompatible(self.credentials, self.limits)
        self.litellm = LiteLLMAdapter(self.credentials)
        self.transform = TransformAdapter(self.pooled_session, self.litellm.ensure_loaded, self.credentials,
                                          limits=self.limits)
        self.extra: dict[str, ProviderAdapter] = dict(extra or {})
        self._wants_ctx = {name: _accepts_ctx(adapter) for name, adapter in self.extra.items()}
        for adapter in self.extra.values():
            bind = getattr(adapter, "bind", None)
            if bind is not None:
                bind(self)

    async def pooled_session(self) -> aiohttp.ClientSession:
        """The worker's pooled upstream session (started on first use)."""
        if self.direct.session is None:
            await self.direct.start()
        assert self.direct.session is not None
        return self.direct.session

    def builtin_for(self, deployment: Deployment) -> ProviderAdapter:
        """The built-in adapter for ``deployment.mode`` (ignoring plugin adapters)."""
        if deployment.mode == "direct":
            return self.direct
        if deployment.mode == "transform":
            return self.transform
        return self.litellm

    def adapter_for(self, deployment: Deployment) -> ProviderAdapter:
        if deployment.provider in self.extra:
            return self.extra[deployment.provider]
        return self.builtin_for(deployment)

    async def start(self, deployments: list[Deployment]) -> None:
        await self.direct.start()
        await self.credentials.start(deployments, self.direct.session)
        # A plugin adapter may delegate to the built-in path, so that path decides.
        if any(self.builtin_for(d) is not self.direct for d in deployments):
            # Pay the import before serving, off the event loop's critical path.
            await asyncio.to_thread(self.litellm.ensure_loaded)
            catch_all = [d for d in deployments if self.builtin_for(d) is self.litellm and not d.settings.get("_problems")]
            if catch_all:  # what each provider takes, known before the first request
                await asyncio.to_thread(lambda: [self.litellm.openai_params(d) for d in catch_all])
        transform = [d for d in deployments if self.builtin_for(d) is self.transform and not d.settings.get("_problems")]
        if transform:
            await asyncio.to_thread(self._check_transform, transform)
        for adapter in self.extra.values():
            start = getattr(adapter, "start", None)
            if start is not None:
                result = start()
                if asyncio.iscoroutine(result):
                    await result

    def _check_transform(self, deployments: list[Deployment]) -> None:
        for dep in deployments:
            try:
                self.transform.check(dep)
            except ConfigurationError as exc:
                log.warning("deployment %s cannot be served: %s", dep.label, exc.message)

    async def close(self) -> None:
        await self.credentials.close()
        await self.direct.close()
        for adapter in self.extra.values():
            close = getattr(adapter, "close", None)
            if close is not None:
                result = close()
                if asyncio.iscoroutine(result):
                    await result

    def open(
        self, deployment: Deployment, body: CanonicalRequest, *, stream: bool, ctx: RequestContext | None = None
    ) -> AsyncIterator[Chunk]:
        problems = deployment.settings.get("_problems")
        if problems:
            raise ConfigurationError(
                f"deployment {deployment.label} is not configured: {'; '.join(problems)} "
                "in the gateway's environment, then restart it"
            )
        # Only canonical parameters go upstream, whatever the client sent (params.py).
        body = upstream_params(body, deployment)
        name = deployment.provider
        if name in self.extra:
            adapter = self.extra[name]
            if self._wants_ctx.get(name):
                chunks = adapter.open(deployment, body, stream=stream, ctx=ctx)  # type: ignore[call-arg]
            else:
                chunks = adapter.open(deployment, body, stream=stream)
        else:
            adapter = self.builtin_for(deployment)
            if adapter is self.direct and ctx is not None:
                chunks = self.direct.open(deployment, body, stream=stream, read_ahead=ctx.read_ahead)
            else:
                chunks = adapter.open(deployment, body, stream=stream)
        fix = response_fixer(deployment)
        return chunks if fix is None else _fixed(chunks, fix)


def _accepts_ctx(adapter: Any) -> bool:
    try:
        return "ctx" in inspect.signature(adapter.open).parameters
    except (TypeError, ValueError, AttributeError):
        return False


async def _fixed(chunks: AsyncIterator[Chunk], fix: Any) -> AsyncIterator[Chunk]:
    """``chunks`` with a provider's response quirk applied (see ``quirks.response_fixer``)."""
    try:
        async for chunk in chunks:
            yield chunk if chunk is KEEPALIVE else fix(chunk)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()

"""Calling providers: the gateway's own wire for OpenAI-compatible upstreams, and
LiteLLM for the rest. This is the only module that imports LiteLLM.

Measured (``../shared/LITELLM.md`` and ``bench/``): ``litellm.acompletion`` costs
about 7x a raw HTTP call and 20x on long streams, so OpenAI-compatible deployments
(``mode: direct``) go over one pooled aiohttp session with our own SSE parsing, and
LiteLLM stays the source of provider knowledge (catalogue, prices) and the
catch-all (``mode: litellm``) for providers that are not OpenAI-compatible.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import time
from typing import Any, AsyncIterator, Protocol

import aiohttp
import orjson

from .canonical import completion_to_chunk
from .catalog import provider_profile
from .errors import ConfigurationError, UpstreamError
from .redact import redact
from .sse import SSEDecoder
from .types import KEEPALIVE, PING_INTERVAL, CanonicalRequest, Chunk, Deployment

log = logging.getLogger("clasp.providers")

_MAX_ERROR_BODY = 64 * 1024


class ProviderAdapter(Protocol):
    """What a provider needs to offer the pipeline (``register_providers``).

    ``open`` returns an async iterator of canonical chunks; nothing is sent before
    the first ``__anext__``. Failures raise :class:`~clasp_gateway.errors.UpstreamError`
    (or another GatewayError); a stream that ends early must raise, never just stop.
    """

    def open(self, deployment: Deployment, body: CanonicalRequest, *, stream: bool) -> AsyncIterator[Chunk]: ...


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds or HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_message(body: bytes, content_type: str) -> str:
    text = body[:_MAX_ERROR_BODY].decode("utf-8", "replace")
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
                    return str(msg)
            elif isinstance(err, str):
                return err
            if data.get("message"):
                return str(data["message"])
    if "html" in content_type:
        return "the upstream answered with an HTML page (is api_base right?)"
    return " ".join(text.split())[:300] or "(empty body)"


def _api_key(deployment: Deployment) -> str | None:
    for key in deployment.keys:
        if key.value:
            return key.value
    return None


class OpenAICompatible:
    """The direct path: OpenAI-compatible chat completions over a pooled session."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

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

    def url_and_headers(self, deployment: Deployment) -> tuple[str, dict[str, str]]:
        profile = provider_profile(deployment.provider)
        headers = {"content-type": "application/json", "user-agent": "clasp-gateway"}
        key = _api_key(deployment)
        if profile.auth == "api-key":
            if key:
                headers["api-key"] = key
        elif key:
            headers["authorization"] = f"Bearer {key}"
        headers.update(deployment.headers)
        if profile.path_style == "azure":
            url = (
                f"{deployment.api_base}/openai/deployments/{deployment.model}/chat/completions"
                f"?api-version={deployment.api_version}"
            )
        else:
            url = f"{deployment.api_base}/chat/completions"
        return url, headers

    async def open(
        self, deployment: Deployment, body: CanonicalRequest, *, stream: bool
    ) -> AsyncIterator[Chunk]:
        if self._session is None:
            await self.start()
        assert self._session is not None
        url, headers = self.url_and_headers(deployment)
        t = deployment.timeouts
        timeout = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, connect=t.connect)
        label = deployment.id
        try:
            response = await self._session.post(
                url, data=orjson.dumps(body), headers=headers, timeout=timeout
            )
        except asyncio.TimeoutError:
            raise UpstreamError(f"{label}: timed out connecting", upstream_status=0, deployment=label, kind="timeout") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"{label}: cannot reach the provider ({redact(str(exc)) or type(exc).__name__})",
                upstream_status=0,
                deployment=label,
                kind="connect",
            ) from None
        try:
            async for chunk in self._read(response, deployment, stream):
                yield chunk
        finally:
            response.release()

    async def _read(
        self, response: aiohttp.ClientResponse, deployment: Deployment, stream: bool
    ) -> AsyncIterator[Chunk]:
        label = deployment.id
        ctype = response.headers.get("content-type", "").lower()
        idle = deployment.timeouts.idle
        if response.status >= 400:
            body = await self._read_limited(response, idle, label)
            raise UpstreamError(
                f"{label}: provider answered {response.status}: {redact(_error_message(body, ctype))}",
                upstream_status=response.status,
                deployment=label,
                retry_after=parse_retry_after(response.headers),
            )
        if "text/event-stream" in ctype:
            async for chunk in self._read_sse(response, label, idle):
                yield chunk
            return
        body = await self._read_limited(response, idle, label, limit=None)
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
                f"{label}: provider error: {redact(_error_message(body, 'json'))}",
                upstream_status=502, deployment=label,
            )
        if not isinstance(data, dict) or not data.get("choices"):
            raise UpstreamError(
                f"{label}: provider answered without choices", upstream_status=502, deployment=label, kind="protocol"
            )
        yield completion_to_chunk(data)

    @staticmethod
    async def _read_limited(
        response: aiohttp.ClientResponse, idle: float | None, label: str, limit: int | None = _MAX_ERROR_BODY
    ) -> bytes:
        try:
            async with asyncio.timeout(idle):
                if limit is None:
                    return await response.read()
                return await response.content.read(limit)
        except asyncio.TimeoutError:
            raise UpstreamError(f"{label}: provider stopped sending", upstream_status=0, deployment=label, kind="timeout") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"{label}: connection broke while reading the answer ({type(exc).__name__})",
                upstream_status=0, deployment=label, kind="protocol",
            ) from None

    @staticmethod
    async def _read_sse(response: aiohttp.ClientResponse, label: str, idle: float | None) -> AsyncIterator[Chunk]:
        decoder = SSEDecoder()
        content = response.content
        finished = False
        done = False
        loads = orjson.loads
        loop = asyncio.get_running_loop()
        last_data = loop.time()
        while not done:
            try:
                async with asyncio.timeout(PING_INTERVAL if idle is None else min(idle, PING_INTERVAL)):
                    raw = await content.readany()
            except asyncio.TimeoutError:
                if idle is not None and loop.time() - last_data >= idle:
                    raise UpstreamError(
                        f"{label}: stream stalled for {idle:.0f}s", upstream_status=0, deployment=label, kind="timeout"
                    ) from None
                yield KEEPALIVE
                continue
            except aiohttp.ClientError as exc:
                raise UpstreamError(
                    f"{label}: stream cut by the provider ({type(exc).__name__})",
                    upstream_status=0, deployment=label, kind="protocol",
                ) from None
            last_data = loop.time()
            events = decoder.feed(raw) if raw else decoder.flush()
            for data in events:
                if data == "[DONE]":
                    done = True
                    break
                try:
                    chunk = loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamError(
                        f"{label}: malformed event in the stream", upstream_status=502, deployment=label, kind="protocol"
                    ) from None
                if not isinstance(chunk, dict):
                    continue
                if "error" in chunk and not chunk.get("choices"):
                    err = chunk["error"]
                    message = err.get("message") if isinstance(err, dict) else str(err)
                    raise UpstreamError(
                        f"{label}: provider error mid-stream: {redact(str(message))}",
                        upstream_status=int((err.get("code") if isinstance(err, dict) and isinstance(err.get("code"), int) else 0) or 502),
                        deployment=label,
                        kind="protocol",
                    )
                for choice in chunk.get("choices") or ():
                    if choice.get("finish_reason"):
                        finished = True
                yield chunk
            if not raw:
                break
        if not done and not finished:
            raise UpstreamError(
                f"{label}: stream ended before the answer was complete",
                upstream_status=0, deployment=label, kind="protocol",
            )


class LiteLLMAdapter:
    """The catch-all: ``litellm.acompletion`` for providers without a direct path.

    LiteLLM is imported once, before the app serves, and only if a deployment needs
    it (``import litellm`` costs ~5 s of CPU here).
    """

    def __init__(self) -> None:
        self._litellm: Any = None

    def ensure_loaded(self) -> Any:
        if self._litellm is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            import litellm

            litellm.suppress_debug_info = True
            litellm.drop_params = True
            self._litellm = litellm
        return self._litellm

    async def open(
        self, deployment: Deployment, body: CanonicalRequest, *, stream: bool
    ) -> AsyncIterator[Chunk]:
        litellm = self.ensure_loaded()
        params = dict(body)
        params["model"] = f"{deployment.provider}/{deployment.model}"
        params.pop("stream_options", None)
        key = _api_key(deployment)
        if key:
            params["api_key"] = key
        if deployment.api_base:
            params["api_base"] = deployment.api_base
        if deployment.api_version:
            params["api_version"] = deployment.api_version
        if deployment.headers:
            params["extra_headers"] = dict(deployment.headers)
        params["timeout"] = deployment.timeouts.total
        params["stream"] = stream
        try:
            result = await litellm.acompletion(**params)
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
            status = getattr(exc, "status_code", None)
            raise UpstreamError(
                f"{deployment.id}: {redact(str(getattr(exc, 'message', exc)))[:500]}",
                upstream_status=int(status) if isinstance(status, int) else 0,
                deployment=deployment.id,
                kind="http" if isinstance(status, int) else "connect",
            ) from None


class Providers:
    """Picks the adapter for each deployment and owns their lifecycles."""

    def __init__(self, extra: dict[str, ProviderAdapter] | None = None) -> None:
        self.direct = OpenAICompatible()
        self.litellm = LiteLLMAdapter()
        self.extra: dict[str, ProviderAdapter] = dict(extra or {})

    def adapter_for(self, deployment: Deployment) -> ProviderAdapter:
        if deployment.provider in self.extra:
            return self.extra[deployment.provider]
        if deployment.mode == "direct":
            return self.direct
        return self.litellm

    async def start(self, deployments: list[Deployment]) -> None:
        await self.direct.start()
        if any(self.adapter_for(d) is self.litellm for d in deployments):
            # Pay the import before serving, off the event loop's critical path.
            await asyncio.to_thread(self.litellm.ensure_loaded)
        for adapter in self.extra.values():
            start = getattr(adapter, "start", None)
            if start is not None:
                result = start()
                if asyncio.iscoroutine(result):
                    await result

    async def close(self) -> None:
        await self.direct.close()
        for adapter in self.extra.values():
            close = getattr(adapter, "close", None)
            if close is not None:
                result = close()
                if asyncio.iscoroutine(result):
                    await result

    def open(self, deployment: Deployment, body: CanonicalRequest, *, stream: bool) -> AsyncIterator[Chunk]:
        problems = deployment.settings.get("_problems")
        if problems:
            raise ConfigurationError(
                f"deployment {deployment.label} is not configured: {'; '.join(problems)} "
                "in the gateway's environment, then restart it"
            )
        return self.adapter_for(deployment).open(deployment, body, stream=stream)

"""The direct path: OpenAI-compatible chat completions over the gateway's own wire.

OpenAI, Azure OpenAI, vLLM, Ollama's ``/v1``, Groq, DeepSeek, Mistral, OpenRouter...
speak the canonical format already, so the request goes as it is (after the
provider's quirks, :mod:`.quirks`) and the answer's SSE events are decoded by the
gateway itself (:mod:`.sse`): ``litellm.acompletion`` would cost ~7x a raw HTTP call
and ~20x on a long stream (``docs/ARCHITECTURE.md``). This is the hot path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson

from ..canonical import completion_to_chunk
from ..errors import UpstreamError
from ..redact import redact
from ..types import KEEPALIVE, CanonicalRequest, Chunk, Deployment, ReadAhead
from .catalog import provider_profile
from .credentials import Credentials, credential_settings
from .reads import FrameTooLarge, ReadLimits, network_reads, read_body, too_large
from .sse import SSEDecoder
from .upstream import Upstream, UpstreamRequest, error_message


def _api_key(deployment: Deployment) -> str | None:
    for key in deployment.keys:
        if key.value:
            return key.value
    return None


class OpenAICompatible:
    """The direct path: OpenAI-compatible chat completions over a pooled session.

    ``upstream``: the gateway's wire (its session, key pools and read limits); an
    adapter made without one (tests, benchmarks) has its own."""

    def __init__(self, upstream: Upstream | None = None) -> None:
        self.upstream = upstream or Upstream()

    @property
    def credentials(self) -> Credentials:
        """The key pools and token sources of the deployments (the wire's)."""
        return self.upstream.credentials

    @property
    def limits(self) -> ReadLimits:
        """How much of an answer may be held in memory (the wire's)."""
        return self.upstream.limits

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The pooled session (``None`` before :meth:`start`)."""
        return self.upstream.session

    async def start(self) -> None:
        """Open the pooled session."""
        await self.upstream.start()

    async def close(self) -> None:
        """Close the pooled session."""
        await self.upstream.close()

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
        """Send ``body`` (its keys rotated on refusal, :meth:`Upstream.send`) and yield
        the answer's canonical chunks."""
        data = orjson.dumps(body)
        tokens = self.credentials.token_source(deployment)
        bearer = None if tokens is None else await tokens.token()

        def build(key: str | None) -> UpstreamRequest:
            url, headers = self.url_and_headers(deployment, key)
            if bearer is not None:
                headers.pop("api-key", None)
                headers["authorization"] = f"Bearer {bearer}"
            return UpstreamRequest(url, data, headers)

        response = await self.upstream.send(deployment, build, need_tokens=len(data) // 4)  # ~4 bytes per token
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

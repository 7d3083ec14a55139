"""AWS Bedrock as a clasp provider: the Converse API, signed with SigV4.

For each request: the canonical body becomes a Converse body (LiteLLM's
``AmazonConverseConfig``, :mod:`.converse`), it is signed with botocore's
:class:`~botocore.auth.SigV4Auth` using the deployment's credentials (botocore's
chain, refreshed off the event loop, :mod:`.credentials`) and posted to
``{endpoint}/model/{model id}/converse-stream`` (or ``/converse`` when the caller
wants a whole answer). The streamed answer is AWS event-stream framing (binary:
prelude, headers, payload, CRCs), decoded incrementally with botocore's
:class:`~botocore.eventstream.EventStreamBuffer`, which also bounds each message.

Deployment settings (clasp.yaml, next to ``model: bedrock/<model id>``):
``region`` (or ``aws_region_name``; default: botocore's, e.g. ``AWS_REGION``),
``aws_profile`` (or ``aws_profile_name``), ``aws_access_key_id`` /
``aws_secret_access_key`` / ``aws_session_token`` (references such as
``${BEDROCK_KEY_ID}``; default: the standard chain), ``api_base`` (endpoint
override; default ``https://bedrock-runtime.{region}.amazonaws.com``).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from clasp_gateway.canonical import completion_to_chunk
from clasp_gateway.config import resolve_secret
from clasp_gateway.errors import ConfigurationError, UpstreamError
from clasp_gateway.redact import redact
from clasp_gateway.types import KEEPALIVE, CanonicalRequest, Chunk, Deployment, RequestContext
from clasp_gateway.wire.reads import network_reads
from clasp_gateway.wire.upstream import parse_retry_after

from .converse import EXPIRED, ConverseStream, converse_body, error_for, stream_error, whole_answer
from .credentials import AwsCredentials, Resolver, botocore_resolver, default_region

__all__ = ["BedrockProvider", "Target"]

log = logging.getLogger("clasp.bedrock")

SERVICE = "bedrock"
"""The SigV4 signing name of the Bedrock runtime."""
MAX_ERROR_BODY = 64 * 1024
MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""Largest whole (non-streamed) answer read into memory."""


@dataclass(slots=True)
class Target:
    """Where and as whom one deployment calls Bedrock (built once per deployment)."""

    region: str
    endpoint: str
    credentials: AwsCredentials


def _quiet_merge_warning(record: logging.LogRecord) -> bool:
    """Drops LiteLLM's warning that it merged a tool result and the user's next text
    into one user message: that is what Converse requires, and it happens on every
    turn after a tool call (a warning per request would bury real ones)."""
    return not str(record.msg).startswith("Potential consecutive user/tool blocks")


def _setting(deployment: Deployment, *names: str) -> str | None:
    for name in names:
        value = deployment.settings.get(name)
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


class BedrockProvider:
    """A clasp provider adapter (``register_providers``) for AWS Bedrock.

    ``resolver`` replaces botocore's credential chain (tests inject credentials with a
    counted refresh and their own clock); by default each deployment resolves its own
    (its ``aws_profile``, or keys given in clasp.yaml, or the standard chain).
    """

    def __init__(self, resolver: Resolver | None = None) -> None:
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._targets: dict[str, Target] = {}
        self._lock: asyncio.Lock | None = None
        self._config: Any = None

    # --- lifecycle (called by the gateway) ---------------------------------------------------

    async def start(self) -> None:
        """Nothing before serving: the session opens on the first Bedrock call, so a
        gateway without Bedrock deployments pays nothing for this plugin."""

    async def _open_session(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=200, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=("User-Agent",),
            )

    async def close(self) -> None:
        for target in self._targets.values():
            await target.credentials.close()
        self._targets.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- per deployment ------------------------------------------------------------------------

    async def target(self, deployment: Deployment) -> Target:
        """The deployment's region, endpoint and credentials (resolved once, in a thread:
        botocore reads the shared config files)."""
        found = self._targets.get(deployment.id)
        if found is not None:
            return found
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            found = self._targets.get(deployment.id)
            if found is None:
                found = self._targets[deployment.id] = await asyncio.to_thread(self._build_target, deployment)
        return found

    def _build_target(self, deployment: Deployment) -> Target:
        profile = _setting(deployment, "aws_profile", "aws_profile_name")
        region = _setting(deployment, "region", "aws_region_name") or default_region(profile)
        if not region:
            raise ConfigurationError(
                f"deployment {deployment.label}: no AWS region; add `region: us-east-1` (or set AWS_REGION)")
        static: dict[str, str] | None = None
        key_ref = deployment.settings.get("aws_access_key_id")
        if key_ref is not None:
            key = resolve_secret(key_ref)
            secret = resolve_secret(deployment.settings.get("aws_secret_access_key"))
            token = resolve_secret(deployment.settings.get("aws_session_token")) \
                if deployment.settings.get("aws_session_token") is not None else None
            if not key.value or not secret.value:
                missing = [s.hint for s in (key, secret) if not s.value and s.hint] or ["set aws_secret_access_key"]
                raise ConfigurationError(f"deployment {deployment.label}: AWS keys not configured: "
                                         + " and ".join(missing))
            static = {"access_key": key.value, "secret_key": secret.value, "token": (token.value if token else None) or ""}
            describe = "the keys in clasp.yaml"
        elif profile:
            describe = f"AWS profile {profile!r}"
        else:
            describe = "the standard AWS credential chain"
        resolver = self._resolver or botocore_resolver(profile, static)
        endpoint = (deployment.api_base or f"https://bedrock-runtime.{region}.amazonaws.com").rstrip("/")
        return Target(region, endpoint, AwsCredentials(resolver, deployment.id, describe))

    def converse_config(self) -> Any:
        """LiteLLM's ``AmazonConverseConfig`` (LiteLLM is imported before the gateway
        serves: the gateway loads it for every deployment not on its direct path)."""
        if self._config is None:
            litellm = sys.modules.get("litellm") or importlib.import_module("litellm")
            self._config = litellm.AmazonConverseConfig()
            logging.getLogger("LiteLLM").addFilter(_quiet_merge_warning)
        return self._config

    def request_for(self, deployment: Deployment, body: CanonicalRequest, *, stream: bool,
                    reasoning_effort: str | None = None) -> tuple[str, bytes]:
        """The URL path suffix and JSON payload of the Converse call for ``body``."""
        payload = converse_body(self.converse_config(), deployment.model, body, reasoning_effort=reasoning_effort)
        suffix = f"/model/{quote(deployment.model, safe='')}/{'converse-stream' if stream else 'converse'}"
        return suffix, orjson.dumps(payload)

    @staticmethod
    def sign(url: str, payload: bytes, credentials: Any, region: str, accept: str) -> dict[str, str]:
        """SigV4 headers for a POST of ``payload`` to ``url`` (botocore's signer)."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method="POST", url=url, data=payload, headers={"Content-Type": "application/json"})
        SigV4Auth(credentials, SERVICE, region).add_auth(request)
        headers = {str(k): str(v) for k, v in request.headers.items()}
        headers["Accept"] = accept
        return headers

    # --- the call --------------------------------------------------------------------------------

    async def open(
        self, deployment: Deployment, body: CanonicalRequest, *, stream: bool, ctx: RequestContext | None = None
    ) -> AsyncIterator[Chunk]:
        if self._session is None:
            await self._open_session()
        assert self._session is not None
        label = deployment.id
        if "litellm" not in sys.modules:  # the adapter used outside a gateway: import off the loop
            await asyncio.to_thread(importlib.import_module, "litellm")
        target = await self.target(deployment)
        effort = ctx.hints.reasoning_effort if ctx is not None and deployment.info.supports_reasoning else None
        try:
            suffix, payload = self.request_for(deployment, body, stream=stream, reasoning_effort=effort)
        except Exception as exc:  # LiteLLM refused the request (content it cannot express)
            raise UpstreamError(f"{label}: cannot build the Converse request: {redact(str(exc))[:300]}",
                                upstream_status=400, deployment=label) from None
        url = target.endpoint + suffix
        t = deployment.timeouts
        timeout = aiohttp.ClientTimeout(total=t.total, connect=t.connect, sock_connect=t.connect)
        accept = "application/vnd.amazon.eventstream" if stream else "application/json"
        for attempt in (1, 2):
            credentials = await target.credentials.get()
            headers = self.sign(url, payload, credentials, target.region, accept)
            headers.update(deployment.headers)
            try:
                # encoded=True: the path is sent exactly as signed (``%3A`` in model ids).
                response = await self._session.post(URL(url, encoded=True), data=payload, headers=headers,
                                                    timeout=timeout)
            except TimeoutError:
                raise UpstreamError(f"{label}: timed out connecting to Bedrock", upstream_status=0,
                                    deployment=label, kind="timeout") from None
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"{label}: cannot reach Bedrock ({redact(str(exc)) or type(exc).__name__})",
                                    upstream_status=0, deployment=label, kind="connect") from None
            if response.status < 400:
                break
            try:
                error_body = await self._read(response, label, t.idle, MAX_ERROR_BODY)
            finally:
                response.release()
            error_type = response.headers.get("x-amzn-ErrorType", "")
            if attempt == 1 and error_type.split(":", 1)[0].strip().lower() in EXPIRED:
                # Temporary credentials expired before botocore renewed them (clock skew,
                # revoked session): resolve the chain again and resend once.
                log.info("%s: AWS credentials expired; resolving them again", label)
                target.credentials.invalidate()
                continue
            raise error_for(label, response.status, error_type, error_body,
                            parse_retry_after(response.headers, response.status))
        try:
            ctype = response.headers.get("content-type", "").lower()
            if stream and "eventstream" in ctype:
                async for chunk in self._events(response, deployment):
                    yield chunk
                return
            raw = await self._read(response, label, t.idle, MAX_ANSWER_BYTES)
            if "html" in ctype or raw.lstrip()[:1] == b"<":
                raise UpstreamError(f"{label}: Bedrock answered HTML (is api_base right?)", upstream_status=502,
                                    deployment=label, kind="protocol")
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise UpstreamError(f"{label}: Bedrock answered malformed JSON ({len(raw)} bytes)",
                                    upstream_status=502, deployment=label, kind="protocol") from None
            yield completion_to_chunk(whole_answer(data, label, deployment.model))
        finally:
            response.release()

    @staticmethod
    async def _events(response: aiohttp.ClientResponse, deployment: Deployment) -> AsyncIterator[Chunk]:
        """A ConverseStream answer, decoded as it arrives."""
        from botocore.eventstream import EventStreamBuffer, ParserError

        label = deployment.id
        answer = ConverseStream(label, deployment.model)
        buffer = EventStreamBuffer()
        async for raw in network_reads(response, label, deployment.timeouts.idle):
            if raw is None:
                yield KEEPALIVE
                continue
            if not raw:
                break
            buffer.add_data(raw)
            try:
                for message in buffer:
                    headers = message.headers
                    kind = headers.get(":message-type")
                    if kind == "event":
                        try:
                            data = orjson.loads(message.payload) if message.payload else {}
                        except orjson.JSONDecodeError:
                            raise UpstreamError(f"{label}: malformed event in the Bedrock stream",
                                                upstream_status=502, deployment=label, kind="protocol") from None
                        chunk = answer.event(str(headers.get(":event-type") or ""), data)
                        if chunk is not None:
                            yield chunk
                    elif kind in ("exception", "error"):
                        name = str(headers.get(":exception-type") or headers.get(":error-code") or "error")
                        raise stream_error(label, name, message.payload)
            except ParserError as exc:  # bad CRC, impossible lengths: not an AWS event stream
                raise UpstreamError(f"{label}: corrupt Bedrock event stream ({type(exc).__name__})",
                                    upstream_status=502, deployment=label, kind="protocol") from None
        last = answer.end()
        if last is not None:
            yield last

    @staticmethod
    async def _read(response: aiohttp.ClientResponse, label: str, idle: float | None, limit: int) -> bytes:
        """At most ``limit`` bytes of the body (a bigger answer is an error, not a memory hog)."""
        try:
            async with asyncio.timeout(idle):
                data = await response.content.read(limit + 1)
                while len(data) <= limit:
                    more = await response.content.read(limit + 1 - len(data))
                    if not more:
                        break
                    data += more
        except TimeoutError:
            raise UpstreamError(f"{label}: Bedrock stopped sending", upstream_status=0, deployment=label,
                                kind="timeout") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{label}: connection to Bedrock broke ({type(exc).__name__})", upstream_status=0,
                                deployment=label, kind="protocol") from None
        if len(data) > limit:
            if limit == MAX_ERROR_BODY:
                return data[:limit]
            raise UpstreamError(f"{label}: Bedrock's answer is larger than {limit} bytes", upstream_status=502,
                                deployment=label, kind="protocol")
        return data

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

from clasp_gateway import (
    KEEPALIVE,
    CanonicalRequest,
    Chunk,
    ConfigurationError,
    Deployment,
    Providers,
    RequestContext,
    Upstream,
    UpstreamError,
    UpstreamRequest,
    completion_to_chunk,
    parse_retry_after,
    redact,
    resolve_secret,
)

from .converse import EXPIRED, ConverseStream, converse_body, error_for, stream_error, whole_answer
from .credentials import AwsCredentials, Resolver, botocore_resolver, default_region
from .memo import remember_answers

__all__ = ["BedrockProvider", "Target"]

log = logging.getLogger("clasp.bedrock")

SERVICE = "bedrock"
"""The SigV4 signing name of the Bedrock runtime."""


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
        self._upstream = Upstream()
        """The gateway's wire once bound; until then (tests, tools) its own."""
        self._bound = False
        self._targets: dict[str, Target] = {}
        self._lock: asyncio.Lock | None = None
        self._config: Any = None

    # --- lifecycle (called by the gateway) ---------------------------------------------------

    def bind(self, providers: Providers) -> None:
        """Send over the gateway's wire: its pooled session, timeouts and read limits."""
        self._upstream = providers.upstream
        self._bound = True

    async def start(self) -> None:
        """Nothing before serving: credentials are resolved on the first Bedrock call, so
        a gateway without Bedrock deployments pays nothing for this plugin."""

    async def close(self) -> None:
        for target in self._targets.values():
            await target.credentials.close()
        self._targets.clear()
        if not self._bound:
            await self._upstream.close()

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
        """LiteLLM's ``AmazonConverseConfig``, built once, its per-model and per-tool-set
        answers remembered (:mod:`.memo`). LiteLLM is imported before the gateway
        serves: the gateway loads it for every deployment not on its direct path."""
        if self._config is None:
            litellm = sys.modules.get("litellm") or importlib.import_module("litellm")
            self._config = remember_answers(litellm.AmazonConverseConfig())
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
        address = target.endpoint + suffix
        url = URL(address, encoded=True)  # sent exactly as signed (``%3A`` in model ids)
        accept = "application/vnd.amazon.eventstream" if stream else "application/json"

        async def signed(key: str | None) -> UpstreamRequest:
            credentials = await target.credentials.get()
            headers = self.sign(address, payload, credentials, target.region, accept)
            headers.update(deployment.headers)
            return UpstreamRequest(url, payload, headers)

        def expired(response: aiohttp.ClientResponse, body: bytes) -> bool:
            # Temporary credentials expired before botocore renewed them (clock skew,
            # revoked session): resolve the chain again and resend once.
            if response.headers.get("x-amzn-ErrorType", "").split(":", 1)[0].strip().lower() not in EXPIRED:
                return False
            log.info("%s: AWS credentials expired; resolving them again", label)
            target.credentials.invalidate()
            return True

        def refused(response: aiohttp.ClientResponse, body: bytes, label: str) -> UpstreamError:
            return error_for(label, response.status, response.headers.get("x-amzn-ErrorType", ""), body,
                             parse_retry_after(response.headers, response.status))

        upstream = self._upstream
        response = await upstream.send(deployment, signed, keys=False, refresh=expired, error=refused, name="Bedrock")
        try:
            ctype = response.headers.get("content-type", "").lower()
            if stream and "eventstream" in ctype:
                async for chunk in self._events(upstream, response, deployment):
                    yield chunk
                return
            raw = await upstream.read_body(response, deployment)
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
    async def _events(upstream: Upstream, response: aiohttp.ClientResponse, deployment: Deployment
                      ) -> AsyncIterator[Chunk]:
        """A ConverseStream answer, decoded as it arrives."""
        from botocore.eventstream import EventStreamBuffer, ParserError

        label = deployment.id
        answer = ConverseStream(label, deployment.model)
        buffer = EventStreamBuffer()
        async for raw in upstream.reads(response, deployment):
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

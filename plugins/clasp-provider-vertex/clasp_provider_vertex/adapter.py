"""Google Vertex AI as a clasp provider: Gemini, and Claude on Vertex.

Both are built from what the gateway already knows, so nothing about Gemini's or
Anthropic's formats is written twice:

- the request is first shaped as for the gateway's own ``gemini`` (or
  ``anthropic``) provider (:func:`clasp_gateway.wire.quirks.prepare_body`: Gemini's
  schema subset, letter-led tool names, thought signatures; Anthropic's reasoning),
  then built by the transform path's recipe for that provider (LiteLLM's provider
  config, :class:`clasp_gateway.wire.transform.TransformAdapter`);
- only the address and the authentication are Vertex's: ``POST {base}/v1/projects/
  {project}/locations/{location}/publishers/google/models/{model}:streamGenerateContent?alt=sse``
  for Gemini, ``.../publishers/anthropic/models/{model}:streamRawPredict`` for Claude
  (the Anthropic Messages body without ``model``, with ``anthropic_version:
  vertex-2023-10-16``), with ``Authorization: Bearer`` and a service account's OAuth
  token (:mod:`.tokens`);
- the SSE answer is read by the transform path's
  :class:`~clasp_gateway.wire.transform.EventReader` and corrected as the gateway's own
  provider's answers are (:func:`clasp_gateway.wire.quirks.response_fixer`).

Vertex is always asked to stream; for a client that wants a whole answer the gateway
assembles one from the stream (as it does for every stream-only provider).

Deployment settings (clasp.yaml, next to ``model: vertex/<model>``): ``vertex_project``
(default: ``VERTEXAI_PROJECT``, ``GOOGLE_CLOUD_PROJECT``, the key file's
``project_id``), ``vertex_location`` (default ``VERTEXAI_LOCATION`` or ``us-central1``;
``global`` works too), ``vertex_credentials`` (the service-account key file:
``file:/path/key.json``, ``${ENV}`` holding the JSON or a path; default
``GOOGLE_APPLICATION_CREDENTIALS``), ``api_base`` (endpoint override).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from clasp_gateway import (
    KEEPALIVE,
    CanonicalRequest,
    Chunk,
    ConfigurationError,
    Deployment,
    EventReader,
    GatewayError,
    Providers,
    RequestContext,
    RequestHints,
    SSEDecoder,
    TransformAdapter,
    Upstream,
    UpstreamError,
    UpstreamRequest,
    parse_retry_after,
    prepare_body,
    redact,
    resolve_secret,
    response_fixer,
)

from .tokens import ServiceAccountTokens

__all__ = ["ANTHROPIC_VERSION", "Target", "VertexProvider", "publisher_of"]

ANTHROPIC_VERSION = "vertex-2023-10-16"
"""The ``anthropic_version`` Claude on Vertex requires in the body."""
DEFAULT_LOCATION = "us-central1"


def publisher_of(model: str) -> str:
    """``anthropic`` for Claude models, ``google`` for the rest (Gemini)."""
    return "anthropic" if model.lower().startswith("claude") else "google"


@dataclass(slots=True)
class Target:
    """Where and as whom one deployment calls Vertex (built once per deployment)."""

    url: str
    tokens: ServiceAccountTokens
    shaped: Deployment
    """The deployment as the gateway's own ``gemini``/``anthropic`` provider, whose
    request shaping, recipe and answer fixes are reused."""


def _setting(deployment: Deployment, name: str, *env: str) -> str | None:
    value = deployment.settings.get(name)
    if value is not None and str(value).strip():
        return str(value).strip()
    for var in env:
        if os.environ.get(var):
            return os.environ[var]
    return None


def load_service_account(ref: Any, label: str) -> dict[str, Any]:
    """The parsed service-account key of ``vertex_credentials`` (blocking: may read a
    file). Accepts a mapping, JSON text, or a path, given literally or by reference."""
    if isinstance(ref, dict):
        info = ref
    else:
        if ref is None:
            path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
            if not path:
                raise ConfigurationError(
                    f"deployment {label}: no Vertex credentials; add `vertex_credentials: file:/path/key.json` "
                    "or set GOOGLE_APPLICATION_CREDENTIALS")
            text, where = None, path
        else:
            secret = resolve_secret(ref)
            if not secret.value:
                raise ConfigurationError(f"deployment {label}: vertex_credentials {secret.describe()} is not set"
                                         f" ({secret.hint or 'the reference does not resolve'})")
            text, where = (secret.value, secret.describe()) if secret.value.lstrip().startswith("{") else (None, secret.value)
        if text is None:
            try:
                text = Path(where).read_text()
            except OSError as exc:
                raise ConfigurationError(f"deployment {label}: cannot read the service-account key {where}: "
                                         f"{exc.strerror or exc}") from None
        try:
            info = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ConfigurationError(f"deployment {label}: the service-account key {where} is not JSON") from None
    if not isinstance(info, dict) or info.get("type") != "service_account" or not info.get("private_key"):
        raise ConfigurationError(f"deployment {label}: vertex_credentials must be a service-account key "
                                 '(JSON with "type": "service_account" and a private_key)')
    return info


def _message(body: bytes) -> str:
    """The error message of a Google (``{"error": {"message"}}``) or Anthropic
    (``{"type": "error", "error": {"message"}}``) error body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return " ".join(body[:300].decode("utf-8", "replace").split()) or "(empty body)"
    if isinstance(data, list) and data:
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict) and err.get("message"):
        status = err.get("status") or err.get("type")
        return f"{status}: {err['message']}" if status else str(err["message"])
    return " ".join(body[:300].decode("utf-8", "replace").split())


def _load_litellm() -> Any:
    return sys.modules.get("litellm") or importlib.import_module("litellm")


class VertexProvider:
    """A clasp provider adapter (``register_providers``) for Google Vertex AI.

    Bound to the gateway's providers (``bind``), it reuses the gateway's transform path
    (recipes built once per provider) and pooled session; alone (tests, tools) it makes
    its own. ``monotonic`` is the clock token lifetimes are measured with.
    """

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._providers: Providers | None = None
        self._upstream = Upstream()
        """The gateway's wire once bound; until then (tests, tools) its own."""
        self._own_transform: TransformAdapter | None = None
        self._targets: dict[str, Target] = {}
        self._lock: asyncio.Lock | None = None

    def bind(self, providers: Providers) -> None:
        """Receive the gateway's providers: its wire and its transform path."""
        self._providers = providers
        self._upstream = providers.upstream

    async def start(self) -> None:
        """Nothing to do before serving: tokens are fetched on first use, per deployment."""

    async def close(self) -> None:
        for target in self._targets.values():
            await target.tokens.close()
        self._targets.clear()
        if self._providers is None:
            await self._upstream.close()

    @property
    def transform(self) -> TransformAdapter:
        """The gateway's transform path (or this adapter's own, when not bound)."""
        if self._providers is not None:
            return self._providers.transform
        if self._own_transform is None:
            self._own_transform = TransformAdapter(_load_litellm, self._upstream)
        return self._own_transform

    # --- per deployment ------------------------------------------------------------------------

    async def target(self, deployment: Deployment) -> Target:
        """The deployment's endpoint and token source (built once, in a thread: it may
        read the key file and import google-auth)."""
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
        info = load_service_account(deployment.settings.get("vertex_credentials"), deployment.label)
        project = _setting(deployment, "vertex_project", "VERTEXAI_PROJECT", "GOOGLE_CLOUD_PROJECT") \
            or info.get("project_id")
        if not project:
            raise ConfigurationError(f"deployment {deployment.label}: no Google Cloud project; add "
                                     "`vertex_project: my-project`")
        location = _setting(deployment, "vertex_location", "VERTEXAI_LOCATION") or DEFAULT_LOCATION
        host = "aiplatform.googleapis.com" if location == "global" else f"{location}-aiplatform.googleapis.com"
        base = (deployment.api_base or f"https://{host}").rstrip("/")
        publisher = publisher_of(deployment.model)
        method = "streamRawPredict" if publisher == "anthropic" else "streamGenerateContent?alt=sse"
        url = (f"{base}/v1/projects/{quote(str(project), safe='')}/locations/{quote(location, safe='')}"
               f"/publishers/{publisher}/models/{quote(deployment.model, safe='@.-_')}:{method}")
        shaped = dataclasses.replace(
            deployment, provider="anthropic" if publisher == "anthropic" else "gemini",
            api_base="https://vertex.invalid" if publisher == "anthropic" else "", headers={},
        )
        tokens = ServiceAccountTokens(info, deployment.id, monotonic=self._monotonic)
        return Target(url, tokens, shaped)

    def request_for(self, target: Target, body: CanonicalRequest, hints: RequestHints) -> tuple[Any, bytes]:
        """The prepared request (for reading the answer) and the Vertex payload."""
        shaped = target.shaped
        ready = prepare_body(body, shaped, hints, stream=True)
        prepared = self.transform.recipe(shaped.provider).prepare(shaped, ready, True, "vertex")
        if shaped.provider != "anthropic":
            return prepared, prepared.body
        data = dict(prepared.request_data)
        data.pop("model", None)
        data["anthropic_version"] = ANTHROPIC_VERSION
        data["stream"] = True
        return prepared, orjson.dumps(data)

    # --- the call --------------------------------------------------------------------------------

    async def open(
        self, deployment: Deployment, body: CanonicalRequest, *, stream: bool, ctx: RequestContext | None = None
    ) -> AsyncIterator[Chunk]:
        label = deployment.id
        if "litellm" not in sys.modules:  # the adapter used outside a gateway: import off the loop
            await asyncio.to_thread(_load_litellm)
        target = await self.target(deployment)
        try:
            prepared, payload = self.request_for(target, body, ctx.hints if ctx is not None else RequestHints())
        except GatewayError:
            raise
        except Exception as exc:  # LiteLLM refused the request (content it cannot express)
            raise UpstreamError(f"{label}: cannot build the Vertex request: {redact(str(exc))[:300]}",
                                upstream_status=400, deployment=label) from None

        async def authorised(key: str | None) -> UpstreamRequest:
            token = await target.tokens.token()
            headers = {"content-type": "application/json", "accept": "text/event-stream",
                       "authorization": f"Bearer {token}", **deployment.headers}
            return UpstreamRequest(target.url, payload, headers)

        def revoked(response: aiohttp.ClientResponse, body: bytes) -> bool:
            # The token was revoked or expired early: fetch a new one and resend once.
            if response.status != 401:
                return False
            target.tokens.invalidate()
            return True

        def refused(response: aiohttp.ClientResponse, body: bytes, label: str) -> UpstreamError:
            hint = ""
            if response.status == 401:
                hint = " (the service account's token was refused)"
            elif response.status == 403:
                hint = f" (grant {target.tokens.account} the Vertex AI User role on the project, and enable the model)"
            return UpstreamError(
                f"{label}: Vertex AI answered {response.status}: {redact(_message(body))[:300]}{hint}",
                upstream_status=response.status, deployment=label,
                retry_after=parse_retry_after(response.headers, response.status),
            )

        upstream = self._upstream
        response = await upstream.send(deployment, authorised, keys=False, refresh=revoked, error=refused,
                                       name="Vertex AI")
        try:
            async for chunk in self._events(upstream, response, deployment, prepared, target.shaped):
                yield chunk
        finally:
            response.release()

    @staticmethod
    async def _events(upstream: Upstream, response: aiohttp.ClientResponse, deployment: Deployment, prepared: Any,
                      shaped: Deployment) -> AsyncIterator[Chunk]:
        label = deployment.id
        ctype = response.headers.get("content-type", "").lower()
        if "event-stream" not in ctype:
            raise UpstreamError(f"{label}: Vertex AI answered {ctype or 'no content type'}, not a stream "
                                "(is api_base right?)", upstream_status=502, deployment=label, kind="protocol")
        decoder = SSEDecoder(upstream.limits.max_line_bytes)
        reader = EventReader(prepared, label)
        fix = response_fixer(shaped)
        # Chunks with nothing to show (Claude's message_start: usage only) wait for the
        # first visible one: the first chunk commits the gateway to this deployment, and
        # an error right after message_start (overloaded) must still allow a fallback.
        held: list[Chunk] | None = []
        async for frames in upstream.frames(response, deployment, decoder):
            if frames is None:
                yield KEEPALIVE
                continue
            for data in frames:
                try:
                    event = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamError(f"{label}: malformed event in the Vertex stream", upstream_status=502,
                                        deployment=label, kind="protocol") from None
                for chunk in reader.read(event):
                    if fix is not None:
                        chunk = fix(chunk)
                    if held is not None:
                        choice = (chunk.get("choices") or [{}])[0]
                        if not choice.get("delta") and not choice.get("finish_reason"):
                            held.append(chunk)
                            continue
                        for early in held:
                            yield early
                        held = None
                    yield chunk
        for early in held or ():
            yield early
        if not reader.finished:
            raise UpstreamError(f"{label}: the Vertex stream ended before the answer was complete",
                                upstream_status=0, deployment=label, kind="protocol")

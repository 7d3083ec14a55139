"""The ``transform`` mode: LiteLLM builds and parses, the gateway sends and streams."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson

from ...canonical import completion_to_chunk
from ...content_log import describe_error
from ...errors import ConfigurationError, UpstreamError
from ...redact import redact
from ...types import KEEPALIVE, CanonicalRequest, Chunk, Deployment
from ..litellm_adapter import clean_error_text
from ..ndjson import NDJSONDecoder
from ..reads import FrameTooLarge, ReadLimits, network_reads, too_large
from ..sse import SSEDecoder
from ..upstream import Upstream, UpstreamRequest, error_message
from .events import EventReader
from .families import recipe_for
from .recipe import WARM_UP, Prepared, Recipe, litellm_provider

log = logging.getLogger("clasp.transform")


class TransformAdapter:
    """The ``transform`` mode: LiteLLM builds and parses, the gateway sends and streams.

    ``load_litellm`` returns the (already imported) ``litellm`` module; ``upstream``
    is the gateway's wire (pooled session, key rotation, read limits); an adapter made
    without one (tests, tools) has its own.
    """

    def __init__(
        self, load_litellm: Callable[[], Any], upstream: Upstream | None = None, *, fast_paths: bool = True,
    ) -> None:
        self.upstream = upstream or Upstream()
        self._load = load_litellm
        self.fast_paths = fast_paths
        """Read plain text deltas without LiteLLM's parser (``StreamSpec.fast``)."""
        self._recipes: dict[str, Recipe] = {}

    @property
    def limits(self) -> ReadLimits:
        """How much of an answer may be held in memory (the wire's)."""
        return self.upstream.limits

    def recipe(self, provider: str) -> Recipe:
        """The recipe for a gateway provider name (built once per provider)."""
        name = litellm_provider(provider)
        recipe = self._recipes.get(name)
        if recipe is None:
            litellm = self._load()
            try:
                recipe = recipe_for(litellm, name)
            except ValueError:
                raise ConfigurationError(
                    f"LiteLLM does not know provider {name!r}; check the deployment's `model: provider/name`"
                ) from None
            self._recipes[name] = recipe
        return recipe

    def check(self, deployment: Deployment) -> None:
        """Fail early (at start-up) when LiteLLM cannot build this deployment's calls,
        and build one request (not sent) so the first real one does not pay for
        LiteLLM's lazy set-up (its validators: 10-110 ms per provider here)."""
        recipe = self.recipe(deployment.provider)
        recipe.config(deployment.model)
        try:
            for stream in (True, False):
                recipe.prepare(deployment, WARM_UP, stream, "warm-up-key")
        except Exception as exc:  # a warm-up must never stop the gateway; real calls will say why
            log.debug("warm-up of %s failed: %s", deployment.label, exc)

    def prepare(self, deployment: Deployment, body: CanonicalRequest, stream: bool, key: str | None) -> Prepared:
        """The provider request for ``body`` with API key ``key``, built by the
        provider's recipe; a body LiteLLM cannot express is a 400 naming why."""
        try:
            return self.recipe(deployment.provider).prepare(deployment, body, stream, key)
        except (ConfigurationError, UpstreamError):
            raise
        except Exception as exc:  # LiteLLM refused the request (unsupported content...)
            label = deployment.id
            log.info("%s: LiteLLM cannot build the request: %s", label, describe_error(exc))
            raise UpstreamError(
                f"{label}: cannot build the {deployment.provider} request: "
                f"{clean_error_text(exc) or 'the request is not supported'}",
                upstream_status=400, deployment=label, kind="http",
            ) from None

    async def open(self, deployment: Deployment, body: CanonicalRequest, *, stream: bool) -> AsyncIterator[Chunk]:
        """Build (per API key: a refused key is benched and the next one used, as on
        every path) and send the request, and yield the answer's canonical chunks."""
        stream = stream or self.recipe(deployment.provider).spec.always_stream
        built: list[Prepared] = []

        def build(key: str | None) -> UpstreamRequest:
            prepared = self.prepare(deployment, body, stream, key)
            built.append(prepared)
            return UpstreamRequest(prepared.url, prepared.body, prepared.headers)

        response = await self.upstream.send(deployment, build)
        try:
            async for chunk in self._read(response, deployment, built[-1]):
                yield chunk
        finally:
            response.release()

    async def _read(self, response: aiohttp.ClientResponse, deployment: Deployment, prepared: Prepared) -> AsyncIterator[Chunk]:
        label = deployment.id
        idle = deployment.timeouts.idle
        ctype = response.headers.get("content-type", "").lower()
        streamed = "event-stream" in ctype or "ndjson" in ctype or (
            prepared.stream and prepared.spec.framing == "ndjson" and "json" in ctype
        )
        if streamed:  # (also when it streams a whole answer it was asked for: read the events)
            async for chunk in self._read_stream(response, label, idle, prepared):
                yield chunk
            return
        raw = await self.upstream.read_body(response, deployment)
        if "html" in ctype or raw.lstrip()[:1] == b"<":
            raise UpstreamError(
                f"{label}: provider answered HTML, not a chat answer (is api_base right?)",
                upstream_status=502, deployment=label, kind="protocol",
            )
        try:
            completion = prepared.recipe.parse_response(prepared, response.status, response.headers, raw)
        except Exception as exc:  # the body is not what the provider's format promises
            status = getattr(exc, "status_code", None)
            log.info("%s: cannot read the provider's answer: %s", label, describe_error(exc))
            # An error report with a success status: the provider's own message;
            # anything else: no parser internals, no echo of the body.
            reported = error_message(raw, ctype) if b'"error"' in raw[:200] else ""
            raise UpstreamError(
                f"{label}: provider error: {redact(reported)[:300]}" if reported else
                f"{label}: the provider's answer is not a valid {prepared.recipe.provider} answer",
                upstream_status=status if isinstance(status, int) and status >= 400 else 502,
                deployment=label, kind="protocol",
            ) from None
        if not completion.get("choices"):
            raise UpstreamError(f"{label}: provider answered without a message", upstream_status=502,
                                deployment=label, kind="protocol")
        yield completion_to_chunk(completion)

    async def _read_stream(
        self, response: aiohttp.ClientResponse, label: str, idle: float | None, prepared: Prepared
    ) -> AsyncIterator[Chunk]:
        max_line = self.limits.max_line_bytes
        decoder: SSEDecoder | NDJSONDecoder = (
            NDJSONDecoder(max_line) if prepared.spec.framing == "ndjson" else SSEDecoder(max_line))
        reader = EventReader(prepared, label, fast=self.fast_paths)
        read_event = reader.read
        loads = orjson.loads
        async for raw in network_reads(response, label, idle):
            if raw is None:
                yield KEEPALIVE
                continue
            try:
                events = decoder.feed(raw) if raw else decoder.flush()
            except FrameTooLarge:
                raise too_large(label, max_line, line=True) from None
            for data in events:
                if data == "[DONE]":
                    continue
                try:
                    event = loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamError(
                        f"{label}: malformed event in the stream", upstream_status=502, deployment=label, kind="protocol"
                    ) from None
                for chunk in read_event(event):
                    yield chunk
        if not reader.finished:
            raise UpstreamError(
                f"{label}: stream ended before the answer was complete",
                upstream_status=0, deployment=label, kind="protocol",
            )

"""Which adapter serves a deployment, and their lifecycles (the provider registry).

Built-in paths, chosen by ``deployment.mode``:

- ``direct`` (:mod:`.direct`): OpenAI-compatible upstreams over the gateway's own wire;
- ``transform`` (:mod:`.transform`): LiteLLM's provider config builds and parses, the
  gateway's wire sends and streams;
- ``litellm`` (:mod:`.litellm_adapter`): ``litellm.acompletion``, the catch-all.

Provider plugins (``register_providers``) take precedence for their provider name.
Every path sends through one :class:`~.upstream.Upstream` (pooled session, key
rotation, bounded reads, status errors). LiteLLM is imported once, before serving,
and only if a deployment needs it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import aiohttp

from ..errors import ConfigurationError
from ..redact import install_redaction
from ..types import KEEPALIVE, CanonicalRequest, Chunk, Deployment, RequestContext
from .catalog import provider_profile
from .credentials import Credentials
from .direct import OpenAICompatible
from .litellm_adapter import LiteLLMAdapter
from .params import upstream_params
from .prompt_cache import prompt_cache_key
from .quirks import response_fixer
from .reads import ReadLimits
from .transform import TransformAdapter
from .upstream import Upstream

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


class Providers:
    """Picks the adapter for each deployment and owns their lifecycles.

    Built-in paths by ``deployment.mode``: ``direct`` (OpenAI-compatible wire),
    ``transform`` (LiteLLM's provider config, our wire: :mod:`.transform`) and
    ``litellm`` (``litellm.acompletion``). A plugin adapter registered under the
    provider's name takes precedence; if it has ``bind(providers)`` it is handed
    this object (to reach the pooled session and delegate to :meth:`builtin_for`),
    and if its ``open`` declares a ``ctx`` parameter it receives the request's
    :class:`~clasp_gateway.types.RequestContext`. Every adapter gets the request
    reduced to its canonical parameters (:func:`~clasp_gateway.wire.params.upstream_params`),
    so no client field can steer a call (its URL, key, headers or retries).
    """

    def __init__(self, extra: dict[str, ProviderAdapter] | None = None, *, limits: ReadLimits | None = None) -> None:
        install_redaction()  # no log record, whoever writes it, may carry a key held here
        self.limits = limits or ReadLimits()
        """How much of an answer an adapter may hold in memory (``server:`` limits)."""
        self.credentials = Credentials()
        self.upstream = Upstream(self.credentials, self.limits)
        """The gateway's wire (pooled session, key rotation, bounded reads, status
        errors): what a provider plugin sends with (:class:`~.upstream.Upstream`)."""
        self.direct = OpenAICompatible(self.upstream)
        self.litellm = LiteLLMAdapter(self.credentials)
        self.transform = TransformAdapter(self.litellm.ensure_loaded, self.upstream)
        self.extra: dict[str, ProviderAdapter] = dict(extra or {})
        self._wants_ctx = {name: _accepts_ctx(adapter) for name, adapter in self.extra.items()}
        for adapter in self.extra.values():
            bind = getattr(adapter, "bind", None)
            if bind is not None:
                bind(self)

    async def pooled_session(self) -> aiohttp.ClientSession:
        """The worker's pooled upstream session (started on first use)."""
        return await self.upstream.start()

    def track_rate_limits(self) -> None:
        """Read rate-limit headers of every response (one pass over its headers), not
        only for deployments with several keys: for a routing plugin that spreads load
        by :meth:`headroom`."""
        self.credentials.track_all_limits()

    def headroom(self, deployment: Deployment) -> float | None:
        """The share (0..1) of ``deployment``'s requests left in its providers' current
        rate-limit windows, as the last responses said; ``None`` when unknown (no such
        headers, nothing parsed yet, or only for deployments with several keys unless
        :meth:`track_rate_limits` was called)."""
        return self.credentials.pool(deployment).headroom()

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
        session = await self.upstream.start()
        await self.credentials.start(deployments, session)
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
        await self.upstream.close()
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
        if ctx is not None and provider_profile(deployment.provider).prompt_cache_key:
            _add_prompt_cache_key(body, deployment, ctx)
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


def _add_prompt_cache_key(body: CanonicalRequest, deployment: Deployment, ctx: RequestContext) -> None:
    """OpenAI's ``prompt_cache_key``: requests of one tenant with the same long prefix
    (Claude Code's system prompt and tools) are routed to the same prefix cache. From
    the tenant and the prefix only: a client's own ``prompt_cache_key`` is not a
    canonical parameter and never reaches here; an operator's ``extra_body`` wins."""
    if "prompt_cache_key" in deployment.extra_body:
        return
    principal = ctx.principal
    tenant = (principal.team or principal.key_id) if principal is not None else ""
    key = prompt_cache_key(tenant or "-", body)
    if key is not None:
        body["prompt_cache_key"] = key


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

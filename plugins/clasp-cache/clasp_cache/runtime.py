"""The response cache on the request path: look up in ``before_call``, collect the
answer's chunks in ``on_stream_chunk``, store it when the request's ``record`` event
says it ended complete and successful, serve a stale entry when every provider is down.

One :class:`CacheRuntime` per app (registered by :mod:`clasp_cache.plugin` at start-up),
holding that app's settings, backend and namespace: two gateways in one process never
share them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from clasp_gateway import CanonicalRequest, Chunk, Gateway, GatewayError, RequestContext, hookimpl

from .answer import Answer, assemble, replay_chunks
from .backends.base import CacheBackend, CacheEntry, EntryMeta, SemanticLayer
from .keys import RequestKey, request_key
from .settings import CacheSettings, RoutePolicy

__all__ = ["CACHE_HEADER", "PENDING_KEY", "STALE_KEY", "CacheRuntime", "Pending"]

log = logging.getLogger("clasp.cache")

CACHE_HEADER = "x-clasp-cache"
"""``exact``, ``semantic`` or ``stale`` on a hit; ``miss`` when looked up and not found."""
PENDING_KEY = "clasp_cache.pending"
"""``ctx.state`` key of a cacheable request's :class:`Pending` (collected chunks)."""
STALE_KEY = "stale_if_error"
"""Where the fallback plugin looks for a stale answer (``clasp_fallback.degrade``)."""
STALE_META_KEY = "clasp_cache.stale"
_REFUSALS = frozenset({"content_filter", "refusal"})


@dataclass(slots=True)
class Pending:
    """A cacheable request on its way: its key, its route's policy, the chunks sent."""

    key: RequestKey
    policy: RoutePolicy
    request: CanonicalRequest
    chunks: list[Chunk] = field(default_factory=list)


def _temperature(request: CanonicalRequest) -> float | None:
    value = request.get("temperature")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _region(ctx: RequestContext) -> str | None:
    """The region of the deployment that answered (its ``region:`` in clasp.yaml)."""
    for attempt in reversed(ctx.attempts):
        if attempt.ok:
            region = attempt.deployment.settings.get("region")
            return region if isinstance(region, str) else None
    return None


def _allowed(ctx: RequestContext, meta: EntryMeta) -> bool:
    """Residency: the key's ``regions`` (empty: any) must include where the entry was made."""
    principal = ctx.principal
    regions = principal.policy.regions if principal is not None else ()
    return not regions or (meta.region is not None and meta.region in regions)


@dataclass(slots=True)
class CacheCounts:
    """What this process's cache did since it started (``/admin/cache``). Kept across
    reloads (the gateway's handover), so the figures do not fall back to zero when the
    configuration changes."""

    hits: int = 0
    misses: int = 0
    stored: int = 0


class CacheRuntime:
    """One app's response cache (see the module docstring)."""

    def __init__(
        self,
        gateway: Gateway,
        settings: CacheSettings,
        backend: CacheBackend,
        namespace: str,
        *,
        clock: Callable[[], float] = time.time,
        semantic: SemanticLayer | None = None,
        opened: bool = False,
        release: Callable[[], bool] | None = None,
        counts: CacheCounts | None = None,
    ) -> None:
        self.gateway = gateway
        self.settings = settings
        self.backend = backend
        self.namespace = namespace
        self.clock = clock
        self.semantic = semantic
        self.opened = opened
        """Whether ``backend`` is open (kept from the configuration before a reload)."""
        self._release = release
        """Says whether this runtime was the backend's last user (the gateway's handover)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self.max_chunks = max(1024, settings.limits.max_entry_bytes // 16)
        """Chunks collected per request at most (an answer's pieces are rarely under 16 bytes
        of stored payload): a longer answer is dropped rather than held in memory."""
        self.counts = counts if counts is not None else CacheCounts()

    async def close(self) -> None:
        """Let stores in flight finish (bounded), then close the backend unless the
        configuration a reload put in place still uses it."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self.semantic is not None:
            await self.semantic.close()
        if self._release is None or self._release():
            await self.backend.close()

    # --- lookup ---------------------------------------------------------------------------

    def cacheable(self, ctx: RequestContext, request: CanonicalRequest) -> RoutePolicy | None:
        """The route's policy if this request may be answered from (and stored in) the cache."""
        policy = self.settings.policy(ctx.public_model)
        if not policy.enabled or ctx.request_class not in policy.request_classes:
            return None
        temperature = _temperature(request)
        if temperature is not None and temperature > policy.max_temperature:
            return None
        if request.get("n", 1) not in (1, None):
            return None
        return policy

    @hookimpl(trylast=True)
    async def before_call(self, ctx: RequestContext, request: CanonicalRequest) -> list[Chunk] | None:
        """A fresh entry answers (no upstream call); a stale one is left for
        ``on_exhausted``; otherwise the request is marked for storing.

        ``trylast``: ``before_call`` is first-answer-wins, so every plugin after the one
        that answers is skipped. The cache answers last, after the plugins that only
        look (key attribution, rate limits, budgets, the ledger's fingerprint, analytics):
        a hit still counts against rate limits, settles its budget reservation at zero,
        and is attributed like any other request."""
        policy = self.cacheable(ctx, request)
        if policy is None:
            return None
        route = self.gateway.resolve_model(ctx.public_model).pattern
        key = request_key(ctx, request, route=route, namespace=self.namespace, scope_by=self.settings.scope)
        ctx.state[PENDING_KEY] = Pending(key, policy, request)
        entry = await self.backend.get(key.id)
        kind = "exact"
        if entry is None and self.semantic is not None:
            try:
                entry = await self.semantic.lookup(key.scope, request)
            except Exception:  # the semantic layer is an optimisation: never fail the request
                log.exception("%s: semantic lookup failed (a miss)", ctx.request_id)
                entry = None
            kind = "semantic"
        if entry is None or not self._servable(ctx, key, entry):
            self.counts.misses += 1
            ctx.response_headers[CACHE_HEADER] = "miss"
            return None
        now = self.clock()
        try:
            answer = Answer.decode(entry.payload)
        except Exception:  # a corrupt or foreign entry: a miss, and gone
            await self.backend.delete([entry.meta.id])
            return None
        chunks = replay_chunks(answer, ident="chatcmpl-" + ctx.request_id.removeprefix("req_"),
                               model=ctx.public_model, created=int(now))
        if entry.meta.fresh(now):
            self.counts.hits += 1
            del ctx.state[PENDING_KEY]
            ctx.cache_hit = kind
            ctx.saved_usd = entry.meta.cost_usd
            ctx.response_headers[CACHE_HEADER] = kind
            return chunks
        if now - entry.meta.fresh_until <= policy.stale_if_error_max_age:
            ctx.state[STALE_KEY] = chunks  # served by on_exhausted if every provider fails
            ctx.state[STALE_META_KEY] = entry.meta
        self.counts.misses += 1
        ctx.response_headers[CACHE_HEADER] = "miss"
        return None

    def _servable(self, ctx: RequestContext, key: RequestKey, entry: CacheEntry) -> bool:
        meta = entry.meta
        return (meta.tenant == key.tenant and meta.scope == key.scope and meta.namespace == self.namespace
                and _allowed(ctx, meta))

    # --- collecting and storing -------------------------------------------------------------

    @hookimpl
    def on_stream_chunk(self, ctx: RequestContext, chunk: Chunk) -> None:
        """Keep a reference to each chunk of a cacheable request (assembled at the end)."""
        pending = ctx.state.get(PENDING_KEY)
        if pending is not None:
            chunks = pending.chunks
            chunks.append(chunk)
            if len(chunks) > self.max_chunks:  # bounded: an answer this long is not stored
                ctx.state[PENDING_KEY] = None

    @hookimpl
    def record(self, ctx: RequestContext, event: dict[str, Any]) -> None:
        """At the request's end: store a complete, successful answer (off the response path)."""
        if event.get("kind") != "request":
            return
        pending: Pending | None = ctx.state.pop(PENDING_KEY, None)
        if pending is None or ctx.cache_hit is not None:
            return
        if event.get("status") != 200 or event.get("cut") or event.get("error") or not pending.chunks:
            return
        if "x-clasp-degraded" in ctx.response_headers or not event.get("deployment"):
            return
        answer = assemble(pending.chunks)
        if not self._storable(answer, pending.policy):
            return
        now = self.clock()
        policy = pending.policy
        principal = ctx.principal
        meta = EntryMeta(
            id=pending.key.id, scope=pending.key.scope, tenant=pending.key.tenant, model=ctx.public_model,
            created=now, fresh_until=now + policy.ttl, keep_until=now + policy.ttl + policy.stale_if_error_max_age,
            key_id=principal.key_id if principal else None, team=principal.team if principal else None,
            region=_region(ctx), cost_usd=float(event.get("cost_usd") or 0.0), namespace=self.namespace,
        )
        task = asyncio.get_running_loop().create_task(self._store(CacheEntry(meta, answer.encode()), pending))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _storable(self, answer: Answer, policy: RoutePolicy) -> bool:
        """Complete answers only: a finish reason that is not ``length`` or a refusal, and
        tool calls only where the route allows replaying them."""
        if answer.finish_reason is None or answer.finish_reason == "length" or answer.finish_reason in _REFUSALS:
            return False
        if answer.refusal:
            return False
        if answer.tool_calls or answer.finish_reason == "tool_calls":
            return policy.replays_calls([c["function"]["name"] for c in answer.tool_calls])
        return bool(answer.content or answer.reasoning)

    async def _store(self, entry: CacheEntry, pending: Pending) -> None:
        try:
            if await self.backend.put(entry):
                self.counts.stored += 1
                if self.semantic is not None:
                    await self.semantic.remember(entry.meta, pending.request)
        except Exception:  # storing is bookkeeping: never an error anywhere else
            log.exception("response cache: storing %s failed", entry.meta.id[:12])

    # --- graceful degradation -----------------------------------------------------------------

    @hookimpl(wrapper=True)
    def on_exhausted(self, ctx: RequestContext, request: CanonicalRequest, error: Exception) -> Generator[Any, Any, Any]:
        """Every provider failed: serve the stale entry ``before_call`` found (through the
        fallback plugin's degradation, or here when no other plugin answered), marked
        ``x-clasp-cache: stale``."""
        answer = yield
        stale = ctx.state.get(STALE_KEY)
        meta: EntryMeta | None = ctx.state.get(STALE_META_KEY)
        if not stale or meta is None:
            return answer
        if answer is None and _outage(error):
            ctx.response_headers["x-clasp-degraded"] = "stale"
            answer = list(stale)
        if isinstance(answer, list) and ctx.response_headers.get("x-clasp-degraded") == "stale":
            ctx.cache_hit = "stale"
            ctx.saved_usd = meta.cost_usd
            ctx.response_headers[CACHE_HEADER] = "stale"
            ctx.state.pop(PENDING_KEY, None)
        return answer


def _outage(error: Exception) -> bool:
    """An error a stale answer may stand in for: the providers, not the request, failed."""
    status = error.status if isinstance(error, GatewayError) else 500
    return status >= 500 or status in (0, 408, 429)

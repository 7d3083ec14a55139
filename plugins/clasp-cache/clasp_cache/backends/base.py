"""The interface every response-cache backend implements, and what it stores.

Why its own interface rather than the core's ``StateBackend``: a cache needs more than
get/set. An admin clears "team T's entries for model M older than an hour", a size bound
evicts the least recently used entries, an entry is kept past its freshness for
``stale_if_error`` and the semantic layer keeps one vector per entry, compared only
within the entry's scope. Backends are plugins (``register_cache_backends``); the shipped
ones are :mod:`clasp_cache.backends.memory` (the default: LRU + TTL + byte bound, this
process) and :mod:`clasp_cache.backends.redis` (shared by replicas).

What the backend knows about an entry is :class:`EntryMeta`: its ``id`` (the exact key,
a hash of the canonical request and everything that scopes it), its ``scope`` (the hash
the semantic layer compares within: tenant, route, system prompt, tools, conversation
before the last user turn), who it belongs to (tenant, key, team), the public model, the
region of the deployment that produced it, its times and its size. The answer itself
(``payload``) is opaque bytes to the backend (``clasp_cache.answer`` encodes it).

Times: ``created``, ``fresh_until`` (TTL: served as a hit until then) and ``keep_until``
(``fresh_until`` + ``stale_if_error_max_age``: kept for graceful degradation, never
served as a normal hit after ``fresh_until``). Backends drop an entry at
``keep_until``; :meth:`CacheBackend.get` returns stale-but-kept entries and the caller
checks :meth:`EntryMeta.fresh`.

Vectors (the semantic layer): :meth:`CacheBackend.add_vector` stores one vector (opaque
bytes, e.g. float32) per entry id in the entry's scope; :meth:`CacheBackend.scope_vectors`
returns the scope's vectors added after a sequence number, so an in-process index can
mirror a shared scope incrementally (``since=batch.seq`` next time). Removing an entry
(eviction, expiry, purge) removes its vector; a mirror may still hold the vector of an
entry that is gone, and then :meth:`CacheBackend.get` answers ``None`` (a miss).

Outages: a shared backend that cannot be reached answers as if empty (``get`` →
``None``, ``put`` → ``False``) and logs the outage once; it never raises to the request
path. Admin operations (:meth:`entries`, :meth:`purge`, :meth:`stats`) raise
:class:`CacheUnavailable` instead, so an admin is told rather than shown nothing.
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from clasp_gateway import CanonicalRequest

__all__ = [
    "BackendLimits",
    "BackendStats",
    "CacheBackend",
    "CacheEntry",
    "CacheUnavailable",
    "EntryMeta",
    "Selector",
    "SemanticLayer",
    "VectorBatch",
]


class CacheUnavailable(RuntimeError):
    """A shared cache store cannot be reached (admin operations only: the request path
    treats an outage as a miss)."""


@dataclass(slots=True, frozen=True)
class EntryMeta:
    """What a backend knows about one cached answer (everything but the answer)."""

    id: str
    """The exact key: a hex hash of the canonical request and its scope (unique)."""
    scope: str
    """The semantic scope: a hex hash of tenant, route, system prompt, tools and the
    conversation before the last user turn. Exact entries have one too."""
    tenant: str
    """``team:<name>`` or ``key:<key id>`` (``cache.scope``): a hit never crosses it."""
    model: str
    """The public model name the client asked for (the route)."""
    created: float
    """Unix seconds when it was stored (the backend's clock)."""
    fresh_until: float
    """Unix seconds until which it is served as a hit (the TTL)."""
    keep_until: float
    """Unix seconds until which it is kept (``fresh_until`` + stale-if-error age)."""
    size: int = 0
    """Bytes of the payload (the backend sets it on ``put``)."""
    key_id: str | None = None
    """The gateway key whose request produced it."""
    team: str | None = None
    region: str | None = None
    """Region of the deployment that produced it (``None``: unknown, any key may see it
    only if the key allows every region)."""
    cost_usd: float = 0.0
    """What producing it cost: a hit saves this much."""
    kind: str = "exact"
    """``exact`` or ``semantic`` (which layer stored it; a semantic entry is also exact)."""
    namespace: str = ""
    """The configuration hash it was stored under (entries of an older config are never served)."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    """Small JSON-able facts a layer keeps with the entry (the semantic layer: the text
    it embedded). Kept small: it counts toward the entry's size."""

    def fresh(self, now: float) -> bool:
        """Served as a normal hit at ``now``."""
        return now < self.fresh_until

    def kept(self, now: float) -> bool:
        """Still stored at ``now`` (fresh, or stale within the stale-if-error age)."""
        return now < self.keep_until

    def age(self, now: float) -> float:
        return max(0.0, now - self.created)


@dataclass(slots=True, frozen=True)
class CacheEntry:
    """One cached answer: its metadata and its payload (opaque bytes)."""

    meta: EntryMeta
    payload: bytes


@dataclass(slots=True, frozen=True)
class Selector:
    """Which entries an admin operation means; every field given must match (AND).
    An empty selector means every entry.

    ``model`` is a glob (``claude-*``); ``older_than`` is an age in seconds (entries
    created at least that long ago)."""

    scope: str | None = None
    tenant: str | None = None
    key_id: str | None = None
    team: str | None = None
    model: str | None = None
    older_than: float | None = None
    ids: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return (self.scope is None and self.tenant is None and self.key_id is None and self.team is None
                and self.model is None and self.older_than is None and not self.ids)

    def matches(self, meta: EntryMeta, now: float) -> bool:
        """Whether ``meta`` is selected at ``now`` (backends without indexes filter with it)."""
        if self.ids and meta.id not in self.ids:
            return False
        if self.scope is not None and meta.scope != self.scope:
            return False
        if self.tenant is not None and meta.tenant != self.tenant:
            return False
        if self.key_id is not None and meta.key_id != self.key_id:
            return False
        if self.team is not None and meta.team != self.team:
            return False
        if self.model is not None and not fnmatch.fnmatchcase(meta.model, self.model):
            return False
        return self.older_than is None or meta.age(now) >= self.older_than


@dataclass(slots=True, frozen=True)
class VectorBatch:
    """Vectors of one scope added after a sequence number (:meth:`CacheBackend.scope_vectors`)."""

    seq: int
    """The scope's sequence number now: pass it as ``since`` next time."""
    items: list[tuple[str, bytes]]
    """``(entry id, vector bytes)``, in the order they were added."""
    reset: bool = False
    """True when ``since`` was ahead of the store (the scope was cleared or the store
    restarted): drop the mirror and rebuild it from ``items``, which is then complete."""
    more: bool = False
    """True when ``limit`` cut the batch: ``seq`` is then the last item's sequence number,
    and the caller asks again with ``since=seq`` for the rest (a 10,000-vector scope in one
    reply would take longer than a shared store's timeout)."""


@dataclass(slots=True, frozen=True)
class BackendLimits:
    """The finite bounds every backend enforces (``cache:`` settings)."""

    max_entries: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    """Payload bytes over all entries (both shipped backends evict to stay under it)."""
    max_entry_bytes: int = 1024 * 1024
    """A larger answer is not stored."""
    max_vectors_per_scope: int = 10_000


@dataclass(slots=True, frozen=True)
class BackendStats:
    """For ``clasp cache stats`` and ``GET /admin/cache``."""

    backend: str
    entries: int
    bytes: int
    evictions: int = 0
    """Entries dropped to stay within the limits since this process started."""
    shared: bool = False
    outage: bool = False


class CacheBackend(ABC):
    """Where cached answers live. Every method is async and safe to call concurrently;
    nothing blocks the event loop. The request path (``get``, ``put``, ``touch``,
    vectors) never raises for an outage; admin operations raise
    :class:`CacheUnavailable`."""

    name: ClassVar[str]
    """The name it is registered under (``memory``, ``redis``)."""
    shared: ClassVar[bool] = False
    """Whether other processes see the same entries."""

    def __init__(self, limits: BackendLimits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.clock = clock
        """Unix seconds; tests pass a ``FakeClock``. Shared backends expire with their
        own clock too (Redis TTLs), so a fake clock only moves what this process decides."""

    async def open(self) -> None:  # noqa: B027 (optional)
        """Connect; idempotent. A shared store that cannot be reached logs it and serves
        on as an empty cache."""

    async def close(self) -> None:  # noqa: B027 (optional)
        """Release connections."""

    @property
    def outage(self) -> bool:
        """True while a shared store is unreachable."""
        return False

    # --- the request path: never raises for an outage -----------------------------------------

    @abstractmethod
    async def get(self, entry_id: str) -> CacheEntry | None:
        """The entry ``entry_id`` if it is kept (fresh or stale: check ``meta.fresh``),
        else ``None``. Counts as a use for LRU eviction."""

    @abstractmethod
    async def put(self, entry: CacheEntry) -> bool:
        """Store (or replace) ``entry``; evict least recently used entries to stay within
        the limits. ``False`` when not stored (larger than ``max_entry_bytes``, already
        past ``keep_until``, or an outage)."""

    @abstractmethod
    async def add_vector(self, scope: str, entry_id: str, vector: bytes) -> int:
        """Attach ``vector`` to the stored entry ``entry_id`` in ``scope``; return the
        scope's new sequence number (0 when not stored: no such entry, an outage).
        At most ``max_vectors_per_scope`` per scope: the oldest go first."""

    @abstractmethod
    async def scope_vectors(self, scope: str, since: int = 0, limit: int | None = None) -> VectorBatch:
        """The scope's vectors added after sequence number ``since`` (``0``: all of the
        scope's live vectors), at most ``limit`` of them (the oldest first; ``more`` says
        whether some are left). An outage answers an empty batch with ``seq=since``."""

    # --- administration: raise CacheUnavailable in an outage ----------------------------------

    @abstractmethod
    async def entries(self, selector: Selector, limit: int = 1000) -> list[EntryMeta]:
        """Kept entries matching ``selector``, most recently created first, at most ``limit``."""

    @abstractmethod
    async def purge(self, selector: Selector) -> int:
        """Delete the entries ``selector`` matches (and their vectors); return how many."""

    @abstractmethod
    async def stats(self) -> BackendStats:
        """Entries and bytes stored now, evictions so far."""

    async def delete(self, ids: Sequence[str]) -> int:
        """Delete these entries; return how many existed."""
        return await self.purge(Selector(ids=tuple(ids))) if ids else 0


BackendFactory = Callable[..., CacheBackend]
"""What ``register_cache_backends`` registers: ``factory(limits=BackendLimits, clock=...,
options=dict, gateway=Gateway) -> CacheBackend`` (``options``: the ``cache.backend_options``
section, e.g. Redis's ``url``)."""


class SemanticLayer(Protocol):
    """What the exact layer (``clasp_cache.plugin``) calls in the semantic layer
    (``clasp_cache.semantic``, built beside it), when ``cache.semantic.enabled``.

    The contract: ``clasp_cache.semantic`` exports ``SETTINGS`` (a
    ``clasp_gateway.Section`` checking the ``cache.semantic`` sub-section; its
    ``enabled`` field defaults to false) and ``build(settings: dict, backend:
    CacheBackend) -> SemanticLayer``, imported only when enabled (so torch is never
    imported otherwise). The exact layer computes the scope (``clasp_cache.keys``), asks
    the exact key first, then :meth:`lookup`; it checks residency, freshness and the
    request's policy on whatever entry comes back, and stores the exact entry before
    calling :meth:`remember`.
    """

    async def lookup(self, scope: str, request: CanonicalRequest) -> CacheEntry | None:
        """A stored entry of ``scope`` whose request means the same as ``request``'s
        last user turn, or ``None``. Compares only within ``scope``."""
        ...

    async def remember(self, meta: EntryMeta, request: CanonicalRequest) -> None:
        """The entry ``meta`` (already stored, in ``meta.scope``) answered ``request``:
        embed its last user turn and attach the vector (``add_vector``)."""
        ...

    async def close(self) -> None:
        """Stop worker threads."""
        ...

"""The default cache backend: this process's memory, LRU + TTL + byte bound.

An ``OrderedDict`` in use order (a hit moves its entry to the end; eviction pops from
the front), a byte count of the payloads, and per-scope indexes for the semantic layer
and for purges by scope. Everything runs on the event loop without awaiting, so each
operation is atomic. Expired entries are dropped when met (``get``) and by each ``put``
from a heap ordered by ``keep_until`` (work proportional to what expired, never a scan).
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import OrderedDict
from collections.abc import Callable

from .base import BackendLimits, BackendStats, CacheBackend, CacheEntry, EntryMeta, Selector, VectorBatch

__all__ = ["MemoryBackend"]


class _Scope:
    """One scope's entries and vectors (sequence-numbered for mirrors)."""

    __slots__ = ("ids", "vectors", "seq")

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.vectors: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self.seq = 0


class MemoryBackend(CacheBackend):
    """Entries in this process (see the module docstring)."""

    name = "memory"
    shared = False

    def __init__(self, limits: BackendLimits, clock: Callable[[], float]) -> None:
        super().__init__(limits, clock)
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._scopes: dict[str, _Scope] = {}
        self._bytes = 0
        self._evictions = 0
        self._expiry: list[tuple[float, str]] = []
        """``(keep_until, id)`` heap; items of replaced or removed entries are skipped."""

    # --- the request path -------------------------------------------------------------------

    async def get(self, entry_id: str) -> CacheEntry | None:
        entry = self._entries.get(entry_id)
        if entry is None:
            return None
        if not entry.meta.kept(self.clock()):
            self._remove(entry_id)
            return None
        self._entries.move_to_end(entry_id)
        return entry

    async def put(self, entry: CacheEntry) -> bool:
        now = self.clock()
        size = len(entry.payload)
        if size > self.limits.max_entry_bytes or not entry.meta.kept(now):
            return False
        if entry.meta.size != size:
            entry = CacheEntry(_with_size(entry.meta, size), entry.payload)
        if entry.meta.id in self._entries:
            self._remove(entry.meta.id)
        self._sweep(now)
        self._entries[entry.meta.id] = entry
        heapq.heappush(self._expiry, (entry.meta.keep_until, entry.meta.id))
        if len(self._expiry) > 2 * len(self._entries) + 1024:  # mostly items of replaced entries
            self._expiry = [(e.meta.keep_until, i) for i, e in self._entries.items()]
            heapq.heapify(self._expiry)
        self._bytes += size
        self._scopes.setdefault(entry.meta.scope, _Scope()).ids.add(entry.meta.id)
        while len(self._entries) > self.limits.max_entries or self._bytes > self.limits.max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self._evictions += 1
        return True

    async def add_vector(self, scope: str, entry_id: str, vector: bytes) -> int:
        entry = self._entries.get(entry_id)
        if entry is None or entry.meta.scope != scope:
            return 0
        slot = self._scopes.setdefault(scope, _Scope())
        slot.seq += 1
        slot.vectors.pop(entry_id, None)
        slot.vectors[entry_id] = (slot.seq, vector)
        while len(slot.vectors) > self.limits.max_vectors_per_scope:
            slot.vectors.popitem(last=False)
        return slot.seq

    async def scope_vectors(self, scope: str, since: int = 0, limit: int | None = None) -> VectorBatch:
        slot = self._scopes.get(scope)
        if slot is None:
            return VectorBatch(0, [], reset=since > 0)
        reset = since > slot.seq
        if reset:
            since = 0
        # Vectors are in sequence order (a re-added id moves to the end): walk back from
        # the newest, so a caught-up mirror costs nothing however big the scope.
        newer: list[tuple[int, str, bytes]] = []
        for entry_id, (seq, vector) in reversed(slot.vectors.items()):
            if seq <= since:
                break
            newer.append((seq, entry_id, vector))
        newer.reverse()
        if limit is not None and len(newer) > limit:
            return VectorBatch(newer[limit - 1][0], [(i, v) for _, i, v in newer[:limit]], reset=reset, more=True)
        return VectorBatch(slot.seq, [(i, v) for _, i, v in newer], reset=reset)

    # --- administration -----------------------------------------------------------------------

    async def entries(self, selector: Selector, limit: int = 1000) -> list[EntryMeta]:
        now = self.clock()
        found = [e.meta for e in self._candidates(selector) if e.meta.kept(now) and selector.matches(e.meta, now)]
        found.sort(key=lambda m: m.created, reverse=True)
        return found[:limit]

    async def purge(self, selector: Selector) -> int:
        now = self.clock()
        doomed = [e.meta.id for e in self._candidates(selector) if selector.matches(e.meta, now)]
        for entry_id in doomed:
            self._remove(entry_id)
        return len(doomed)

    async def stats(self) -> BackendStats:
        self._sweep(self.clock())
        return BackendStats(self.name, len(self._entries), self._bytes, self._evictions, shared=False)

    def clear(self) -> None:
        """Drop every entry and vector at once (another configuration's: a reload
        changed what shapes the keys)."""
        self._entries.clear()
        self._scopes.clear()
        self._expiry.clear()
        self._bytes = 0

    # --- internals ----------------------------------------------------------------------------

    def _candidates(self, selector: Selector) -> list[CacheEntry]:
        if selector.ids:
            return [e for e in (self._entries.get(i) for i in selector.ids) if e is not None]
        if selector.scope is not None:
            slot = self._scopes.get(selector.scope)
            return [self._entries[i] for i in slot.ids if i in self._entries] if slot else []
        return list(self._entries.values())

    def _remove(self, entry_id: str) -> None:
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return
        self._bytes -= len(entry.payload)
        slot = self._scopes.get(entry.meta.scope)
        if slot is not None:
            slot.ids.discard(entry_id)
            slot.vectors.pop(entry_id, None)
            if not slot.ids and not slot.vectors:
                del self._scopes[entry.meta.scope]

    def _sweep(self, now: float) -> None:
        """Drop entries past ``keep_until``, earliest first, from the expiry heap."""
        heap = self._expiry
        while heap and heap[0][0] <= now:
            keep_until, entry_id = heapq.heappop(heap)
            entry = self._entries.get(entry_id)
            if entry is not None and entry.meta.keep_until == keep_until:
                self._remove(entry_id)


def _with_size(meta: EntryMeta, size: int) -> EntryMeta:
    return dataclasses.replace(meta, size=size)

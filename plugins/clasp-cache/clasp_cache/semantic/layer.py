"""The semantic layer the exact cache calls: ``lookup`` before a call, ``remember`` after.

``clasp_cache.runtime`` computes the scope (``clasp_cache.keys``: tenant, route,
parameters, system prompt, tools and the conversation before the last user turn) and
asks the exact key first; on a miss it calls :meth:`SemanticCache.lookup`, and after
storing an answer, :meth:`SemanticCache.remember`. This layer adds what the scope leaves
out of the last user turn (Claude Code's ``<system-reminder>`` blocks, the turn's other
fields) as a *sub-scope* digest stored with each vector, embeds only the turn's own
words, and compares only within the scope (and sub-scope).

What a vector carries in the backend (opaque bytes to it): a magic, the sub-scope
digest, the float16 vector and the question's text (the guard reads it). So a lookup
costs one backend round trip (``scope_vectors`` since the mirror's sequence number,
usually empty), one embedding (off the loop, micro-batched), an index search, the
matcher on the best few candidates, and one ``get`` for the winner.

Never on the request path: loading the model (a lookup while it loads is a miss),
waiting for a full embedding queue (a miss), or raising (the caller logs and misses).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
from collections import OrderedDict
from typing import Any

import numpy as np

from clasp_gateway import CanonicalRequest

from ..backends.base import CacheBackend, CacheEntry, EntryMeta
from .embedder import DIMENSIONS, Embedder, EmbedderBusy, EmbedderNotReady, EmbedderSettings, Vector
from .index import Candidate, Mirrors, ScopeIndex
from .matcher import Matcher, MatcherSettings
from .request import split_request
from .tokens import for_embedding

log = logging.getLogger("clasp.cache.semantic")

PAGE = 1000
"""Vectors fetched per round trip when a mirror catches up (about 1.3 MB)."""
RECENT = 1024
"""Lookup vectors kept for the ``remember`` that follows a miss (bounded)."""
MAX_PAGES = 100
"""Round trips one lookup may spend catching up (enough for 100,000 vectors)."""

MAGIC = b"csv1"
_HEADER = struct.Struct("<4s16sH")
"""magic, sub-scope digest (16 bytes), dimensions; then float16 values, then UTF-8 text."""


def encode_vector(subscope: bytes, vector: Vector, text: str) -> bytes:
    """What the backend stores for one entry's question."""
    return _HEADER.pack(MAGIC, subscope, len(vector)) + vector.astype("<f2").tobytes() + text.encode()


def decode_vector(blob: bytes) -> tuple[bytes, Vector, str] | None:
    """``(subscope, vector, text)``, or ``None`` for a blob this version cannot read."""
    if len(blob) < _HEADER.size or not blob.startswith(MAGIC):
        return None
    _, subscope, dims = _HEADER.unpack_from(blob)
    end = _HEADER.size + 2 * dims
    if dims != DIMENSIONS or len(blob) < end:
        return None
    vector = np.frombuffer(blob, dtype="<f2", count=dims, offset=_HEADER.size).astype(np.float32)
    return subscope, vector, blob[end:].decode(errors="replace")


class SemanticCache:
    """Implements ``clasp_cache.backends.base.SemanticLayer`` over a :class:`CacheBackend`."""

    def __init__(self, backend: CacheBackend, *, matcher: Matcher, embedder: Embedder, top_k: int = 4,
                 max_scopes: int = 1024, max_vectors: int = 100_000, load_timeout: float = 120.0) -> None:
        self.backend = backend
        self.matcher = matcher
        self.embedder = embedder
        self.top_k = top_k
        self.load_timeout = load_timeout
        self.mirrors = Mirrors(max_scopes=max_scopes, max_vectors=max_vectors,
                               per_scope=backend.limits.max_vectors_per_scope)
        self._locks: dict[str, asyncio.Lock] = {}
        self._recent: OrderedDict[str, Vector] = OrderedDict()
        """Vectors of recent lookups by text, so storing a miss's answer does not embed again."""
        self.stats = {"lookups": 0, "hits": 0, "refused": 0, "skipped": 0, "remembered": 0}
        """Counters: lookups made, hits, candidates the matcher refused, lookups skipped
        (no plain question, too long, model loading, queue full)."""

    # --- the SemanticLayer contract -----------------------------------------------------------

    async def lookup(self, scope: str, request: CanonicalRequest) -> CacheEntry | None:
        """A stored entry of ``scope`` whose question means the same as ``request``'s."""
        self.stats["lookups"] += 1
        key = split_request(request, tenant="", route="")
        if key is None:
            self.stats["skipped"] += 1
            return None
        try:
            vector = await self.embedder.embed(for_embedding(key.text))
        except (EmbedderNotReady, EmbedderBusy, ValueError):
            self.stats["skipped"] += 1
            return None
        self._recent[key.text] = vector  # a miss is remembered soon: embed once
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        return await self.find(scope, key.text, _subscope(key.scope), vector)

    async def find(self, scope: str, text: str, subscope: bytes, vector: Vector) -> CacheEntry | None:
        """The lookup once the question is embedded: catch the scope's mirror up, search it,
        judge the best candidates, fetch the first that passes (benches time this part)."""
        index = await self._mirror(scope)
        floor = min(self.matcher.settings.threshold, self.matcher.settings.threshold_reworded)
        for candidate in index.search(vector, floor, self.top_k):
            if candidate.subscope != subscope:
                continue
            verdict = self.matcher.judge(text, candidate.text, candidate.cosine)
            if not verdict.hit:
                self.stats["refused"] += 1
                continue
            entry = await self.backend.get(candidate.entry_id)
            if entry is None or entry.meta.scope != scope:
                index.forget(candidate.entry_id)
                continue
            self.stats["hits"] += 1
            return entry
        return None

    async def remember(self, meta: EntryMeta, request: CanonicalRequest) -> None:
        """Embed the question ``meta``'s entry answered and attach its vector (off the
        response path: waits for the model if it is still loading)."""
        key = split_request(request, tenant="", route="")
        if key is None or len(key.text) > self.embedder.settings.max_chars:
            return
        vector = self._recent.pop(key.text, None)
        if vector is None:
            if not self.embedder.ready:
                await self.embedder.load(self.load_timeout)
            try:
                vector = await self.embedder.embed(for_embedding(key.text))
            except (EmbedderNotReady, EmbedderBusy, ValueError):
                return
        if await self.backend.add_vector(meta.scope, meta.id, encode_vector(_subscope(key.scope), vector, key.text)):
            self.stats["remembered"] += 1

    async def close(self) -> None:
        """Stop the embedding worker."""
        self.embedder.close()

    # --- the mirror ---------------------------------------------------------------------------

    async def _mirror(self, scope: str) -> ScopeIndex:
        """The scope's index, caught up with the backend (one round trip)."""
        lock = self._locks.get(scope)
        if lock is None:
            if len(self._locks) > 4 * self.mirrors.max_scopes:
                self._locks = {s: lk for s, lk in self._locks.items() if lk.locked()}
            lock = self._locks[scope] = asyncio.Lock()
        async with lock:
            index = self.mirrors.get(scope)
            added = False
            for _ in range(MAX_PAGES):
                batch = await self.backend.scope_vectors(scope, since=index.seq, limit=PAGE)
                if batch.reset:
                    index = self.mirrors.reset(scope)
                rows = []
                for entry_id, blob in batch.items:
                    decoded = decode_vector(blob)
                    if decoded is not None:
                        subscope, vector, text = decoded
                        rows.append((entry_id, vector, text, subscope))
                index.add_many(rows)
                index.seq = batch.seq
                added = added or bool(rows)
                if not batch.more:
                    break
            if added:
                self.mirrors.trim()
            return index


def _subscope(digest_hex: str) -> bytes:
    """16 bytes of the request split's own scope digest (what ``clasp_cache.keys`` leaves out)."""
    return hashlib.blake2b(digest_hex.encode(), digest_size=16).digest()


def build_layer(settings: dict[str, Any], backend: CacheBackend) -> SemanticCache:
    """The layer for the parsed ``cache.semantic`` settings."""
    matcher = Matcher(MatcherSettings(settings["threshold"], settings["threshold_reworded"], settings["min_overlap"]))
    embedder = Embedder(EmbedderSettings(
        max_chars=settings["max_chars"], batch_window=settings["batch_window"], max_batch=settings["max_batch"],
        queue_size=settings["queue_size"], threads=settings["threads"],
    ))
    if settings["preload"]:
        embedder.start()  # loads in the worker thread; start-up does not wait
    return SemanticCache(backend, matcher=matcher, embedder=embedder, top_k=settings["top_k"],
                         max_scopes=settings["max_scopes"], max_vectors=settings["max_vectors"])


def subscope_of(request: CanonicalRequest) -> bytes | None:
    """The sub-scope digest of ``request`` (``None`` without a plain question)."""
    key = split_request(request, tenant="", route="")
    return None if key is None else _subscope(key.scope)


__all__ = ["Candidate", "SemanticCache", "build_layer", "decode_vector", "encode_vector", "subscope_of"]

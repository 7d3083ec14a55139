"""An in-process vector index per scope, mirrored from the cache backend.

Why in-process: plain Redis 7 has no vector search, so the vectors of a scope live in
the backend (a hash per scope, with a sequence number per vector) and each process keeps
a mirror of the scopes it has looked up, fetching only what was added since it last
looked (``scope_vectors(scope, since=seq)``: one round trip, usually empty). The
comparison then happens here, with numpy.

Why not a linear scan: a busy scope (one team's single-turn questions on one route)
holds up to ``max_vectors_per_scope`` entries (10,000 by default). Up to ``BRUTE_MAX``
rows the index compares against every row (a bounded cost); beyond, random-hyperplane
LSH picks the candidates: ``TABLES`` tables of ``BITS``-bit codes, probing each table's
bucket and its ``BITS`` one-bit neighbours. For a pair at cosine 0.86 the chance to be
found is about 99% (0.89 at cosine 0.7), and a lookup in a 10,000-row scope compares
against a few hundred rows.

Rows are float32 in memory (BLAS-fast products; 1.5 KB a row, bounded by ``Mirrors``),
float16 in the backend; the texts are kept for the guard, and a row whose entry turned
out gone (evicted, purged) is marked dead.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .embedder import DIMENSIONS

BRUTE_MAX = 1024
"""Scopes up to this many rows are compared row by row (bounded: at most this many)."""
TABLES = 10
BITS = 12
_SEED = 20261206


def _planes(dims: int) -> npt.NDArray[np.float32]:
    """The fixed random hyperplanes (the same in every process, so codes agree)."""
    rng = np.random.default_rng(_SEED)
    return rng.standard_normal((TABLES * BITS, dims)).astype(np.float32)


_PLANES = _planes(DIMENSIONS)
_WEIGHTS = (1 << np.arange(BITS, dtype=np.int64)).astype(np.int64)
_FLIPS = np.concatenate([[0], 1 << np.arange(BITS)]).astype(np.int64)


def codes(vectors: npt.NDArray[np.float32], center: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.int64]:
    """The LSH code of each vector in each table: shape (n, TABLES). ``center`` (the mean
    of a scope's vectors) is subtracted first: sentence embeddings share a common
    direction, and hyperplanes through the origin would split a scope very unevenly."""
    shifted = vectors.astype(np.float32) if center is None else vectors.astype(np.float32) - center
    bits = (shifted @ _PLANES.T) > 0
    return (bits.reshape(len(vectors), TABLES, BITS) * _WEIGHTS).sum(axis=2)


@dataclass(slots=True, frozen=True)
class Candidate:
    """A stored question close to the one looked up."""

    entry_id: str
    text: str
    subscope: bytes
    cosine: float


class ScopeIndex:
    """The vectors of one scope, in arrival order, with LSH buckets past ``BRUTE_MAX`` rows."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.seq = 0
        """The backend's sequence number this mirror has caught up with."""
        self._vectors = np.zeros((min(capacity, 64), DIMENSIONS), dtype=np.float32)
        self._alive = np.zeros(min(capacity, 64), dtype=bool)
        self._ids: list[str] = []
        self._texts: list[str] = []
        self._subscopes: list[bytes] = []
        self._buckets: list[dict[int, list[int]]] = [{} for _ in range(TABLES)]
        self._center: npt.NDArray[np.float32] | None = None
        """Set (and the buckets built) when the scope first outgrows ``BRUTE_MAX``."""
        self._start = 0
        """Rows before this were dropped (the scope keeps its newest ``capacity``)."""
        self._row_of: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._row_of)

    def add(self, entry_id: str, vector: npt.NDArray[np.float32], text: str, subscope: bytes) -> None:
        """Append a row (a re-added id replaces its older row)."""
        self.add_many([(entry_id, vector, text, subscope)])

    def add_many(self, rows: list[tuple[str, npt.NDArray[np.float32], str, bytes]]) -> None:
        """Append rows in one go (one matrix product for their LSH codes)."""
        if not rows:
            return
        if len(self._ids) + len(rows) > 2 * self.capacity + 32:
            self._compact()
        first = len(self._ids)
        self._reserve(first + len(rows))
        block = np.stack([v for _, v, _, _ in rows]).astype(np.float32)
        self._vectors[first : first + len(rows)] = block
        for offset, (entry_id, _, text, subscope) in enumerate(rows):
            row = first + offset
            old = self._row_of.pop(entry_id, None)
            if old is not None:
                self._alive[old] = False
            self._ids.append(entry_id)
            self._texts.append(text)
            self._subscopes.append(subscope)
            self._alive[row] = True
            self._row_of[entry_id] = row
        if self._center is not None:
            self._bucket(first, block)
        elif len(self._row_of) > BRUTE_MAX:
            live = np.flatnonzero(self._alive[: len(self._ids)])
            self._center = self._vectors[live].mean(axis=0)
            self._bucket(0, self._vectors[: len(self._ids)])
        while len(self._row_of) > self.capacity:
            self._drop_oldest()

    def _bucket(self, first: int, block: npt.NDArray[np.float32]) -> None:
        all_codes = codes(block, self._center).tolist()
        for offset, row_codes in enumerate(all_codes):
            for t, code in enumerate(row_codes):
                self._buckets[t].setdefault(code, []).append(first + offset)

    def forget(self, entry_id: str) -> None:
        """Mark ``entry_id``'s row dead (its entry is gone from the backend)."""
        row = self._row_of.pop(entry_id, None)
        if row is not None:
            self._alive[row] = False

    def search(self, query: npt.NDArray[np.float32], floor: float, k: int) -> list[Candidate]:
        """The ``k`` live rows most similar to ``query`` with cosine at least ``floor``."""
        if not self._row_of:
            return []
        if self._center is None:
            rows = np.flatnonzero(self._alive[: len(self._ids)])
        else:
            rows = self._lsh_rows(query)
            if rows.size == 0:
                return []
        sims = self._vectors[rows] @ query.astype(np.float32)
        keep = sims >= floor
        rows, sims = rows[keep], sims[keep]
        if rows.size > k:
            top = np.argpartition(-sims, k - 1)[:k]
            rows, sims = rows[top], sims[top]
        order = np.argsort(-sims)
        return [Candidate(self._ids[r], self._texts[r], self._subscopes[r], float(sims[i]))
                for i, r in ((int(i), int(rows[i])) for i in order)]

    def _lsh_rows(self, query: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
        code = codes(query[None, :], self._center)[0]
        found: list[int] = []
        for t in range(TABLES):
            buckets = self._buckets[t]
            for probe in (int(code[t]) ^ _FLIPS).tolist():
                rows = buckets.get(probe)
                if rows:
                    found.extend(rows)
        if not found:
            return np.zeros(0, dtype=np.int64)
        mask = np.zeros(len(self._ids), dtype=bool)
        mask[found] = True
        mask &= self._alive[: len(self._ids)]
        return np.flatnonzero(mask)

    def _reserve(self, rows: int) -> None:
        if rows <= len(self._vectors):
            return
        size = max(rows, 2 * len(self._vectors))
        vectors = np.zeros((size, DIMENSIONS), dtype=np.float32)
        vectors[: len(self._vectors)] = self._vectors
        alive = np.zeros(size, dtype=bool)
        alive[: len(self._alive)] = self._alive
        self._vectors, self._alive = vectors, alive

    def _drop_oldest(self) -> None:
        while self._start < len(self._ids) and not self._alive[self._start]:
            self._start += 1
        if self._start < len(self._ids):
            self._alive[self._start] = False
            self._row_of.pop(self._ids[self._start], None)
            self._start += 1

    def _compact(self) -> None:
        """Rebuild without dead rows (amortised: only once dead rows outnumber live ones)."""
        live = np.flatnonzero(self._alive[: len(self._ids)])
        rows = [(self._ids[i], self._vectors[i].copy(), self._texts[i], self._subscopes[i]) for i in live.tolist()]
        seq = self.seq
        fresh = ScopeIndex(self.capacity)
        fresh.add_many(rows)
        fresh.seq = seq
        self.__dict__.update(fresh.__dict__)


class Mirrors:
    """The scope indexes of this process: at most ``max_scopes`` scopes and ``max_vectors``
    rows in all (least recently used scopes are dropped, and rebuilt from the backend
    when looked up again)."""

    def __init__(self, *, max_scopes: int, max_vectors: int, per_scope: int) -> None:
        self.max_scopes = max_scopes
        self.max_vectors = max_vectors
        self.per_scope = per_scope
        self._scopes: OrderedDict[str, ScopeIndex] = OrderedDict()

    def get(self, scope: str) -> ScopeIndex:
        """The scope's index (a new, empty one at ``seq`` 0 when not mirrored)."""
        index = self._scopes.get(scope)
        if index is None:
            index = self._scopes[scope] = ScopeIndex(self.per_scope)
        self._scopes.move_to_end(scope)
        return index

    def reset(self, scope: str) -> ScopeIndex:
        """Drop the scope's mirror (cleared in the backend) and return a new, empty one."""
        self._scopes.pop(scope, None)
        return self.get(scope)

    def trim(self) -> None:
        """Drop least recently used scopes beyond the bounds (call after adding rows)."""
        total = sum(len(i) for i in self._scopes.values())
        while self._scopes and (len(self._scopes) > self.max_scopes or total > self.max_vectors):
            if len(self._scopes) == 1:
                break
            _, dropped = self._scopes.popitem(last=False)
            total -= len(dropped)

    def __len__(self) -> int:
        return len(self._scopes)

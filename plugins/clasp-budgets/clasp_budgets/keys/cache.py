"""The in-process cache of key lookups: bounded, short-lived, with negative entries.

Why two LRUs: a flood of made-up keys fills the negative side only, so it cannot evict
the keys real clients use (and each made-up key costs one database query per
``negative_ttl`` at most). Entries go stale after ``ttl``; a stale positive entry is
still returned by :meth:`stale` so a database outage does not lock out the keys this
process has seen (up to ``stale_if_error``). Invalidation (by key id, by team, or all)
is how a revocation on one replica reaches this one (see :mod:`.auth`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Clock = Callable[[], float]


@dataclass(slots=True)
class Entry:
    """What a lookup found: ``principal`` (None for a revoked key), and why."""

    key_id: str
    team: str | None
    status: str
    """``active`` or ``revoked`` (expiry is checked against the clock at each use)."""
    principal: Any
    expires_at: float | None
    stored: float


class LookupCache:
    """Key hash -> :class:`Entry` (or known-unknown), bounded and timed by ``clock``."""

    def __init__(self, *, max_entries: int = 10_000, ttl: float = 10.0, negative_ttl: float = 5.0,
                 stale_if_error: float = 3600.0, clock: Clock = time.monotonic) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.stale_if_error = stale_if_error
        self.clock = clock
        self._known: OrderedDict[str, Entry] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._known) + len(self._unknown)

    def get(self, digest: str) -> Entry | None:
        """A fresh positive entry, or None (absent or stale)."""
        entry = self._known.get(digest)
        if entry is None or self.clock() - entry.stored >= self.ttl:
            return None
        self._known.move_to_end(digest)
        return entry

    def stale(self, digest: str) -> Entry | None:
        """A positive entry past its TTL but within ``stale_if_error``: for outages only."""
        entry = self._known.get(digest)
        if entry is None or self.clock() - entry.stored >= self.ttl + self.stale_if_error:
            return None
        return entry

    def is_unknown(self, digest: str) -> bool:
        """Whether a recent lookup found no key with this hash."""
        stored = self._unknown.get(digest)
        if stored is None:
            return False
        if self.clock() - stored >= self.negative_ttl:
            del self._unknown[digest]
            return False
        return True

    def put(self, digest: str, entry: Entry) -> None:
        entry.stored = self.clock()
        self._known[digest] = entry
        self._known.move_to_end(digest)
        self._unknown.pop(digest, None)
        while len(self._known) > self.max_entries:
            self._known.popitem(last=False)

    def put_unknown(self, digest: str) -> None:
        self._unknown[digest] = self.clock()
        self._unknown.move_to_end(digest)
        while len(self._unknown) > self.max_entries:
            self._unknown.popitem(last=False)

    def invalidate(self, *, key_id: str | None = None, team: str | None = None) -> int:
        """Drop the entries of one key or of one team's keys (neither: everything).
        Returns how many went."""
        if key_id is None and team is None:
            dropped = len(self)
            self._known.clear()
            self._unknown.clear()
            return dropped
        gone = [d for d, e in self._known.items()
                if (key_id is not None and e.key_id == key_id) or (team is not None and e.team == team)]
        for digest in gone:
            del self._known[digest]
        return len(gone)

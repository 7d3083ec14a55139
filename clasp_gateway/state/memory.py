"""State in this process: the default with one worker, and what tests inject a clock into.

One event loop owns it, and no operation awaits in the middle, so every operation
(scripts included) is atomic without locks. Expired keys read as absent and are
swept now and then, so keys nobody reads again do not pile up.

A value is bytes, or a JSON document a script stored with ``set_json``: kept as the
object itself, so a script that updates a document on every request (a budget's spend
and leases) neither parses nor serialises it; reading it as bytes gives its JSON.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson

from . import Handler, Script, ScriptArg, StateBackend, Subscription
from .outage import StateUnavailable

log = logging.getLogger("clasp.state")

T = TypeVar("T")

SWEEP_EVERY = 60.0
"""Seconds (on the backend's clock) between sweeps of expired keys."""


class MemoryState(StateBackend):
    """Keys, scopes and subscribers in dicts; ``clock`` (seconds) is injectable for tests."""

    kind = "memory"
    shared = False
    label = "memory"

    def __init__(self, *, prefix: str = "clasp:", clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(prefix=prefix)
        self.clock = clock
        self._data: dict[str, tuple[Any, float | None]] = {}
        """Key -> (value, expiry): the value is bytes, or a document stored by ``set_json``."""
        self._scopes: dict[str, tuple[set[str], float | None]] = {}
        self._subscribers: dict[str, list[Subscription]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_sweep = clock() + SWEEP_EVERY
        self._closed = False
        self._tx = _MemoryTx(self)
        """The transaction every script runs in (one at a time: scripts never await)."""

    async def close(self) -> None:
        self._closed = True
        self._subscribers.clear()

    def _check(self) -> None:
        if self._closed:
            raise StateUnavailable("the memory state is closed")

    # --- stored values (scripts use them through _MemoryTx) ------------------------------

    def get_raw(self, key: str) -> bytes | None:
        value = self.get_object(key)
        if value is None or value.__class__ is bytes:
            return value
        return orjson.dumps(value)  # a document a script stored with set_json

    def get_object(self, key: str) -> Any:
        """What ``key`` holds (bytes, or the document itself), None when absent or expired."""
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[1] is not None and entry[1] <= self.clock():
            del self._data[key]
            return None
        return entry[0]

    def _sweep(self, now: float | None = None) -> None:
        if now is None:
            now = self.clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY
        for key in [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]:
            del self._data[key]
        for scope in [s for s, (_, exp) in self._scopes.items() if exp is not None and exp <= now]:
            del self._scopes[scope]

    # --- values --------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        self._check()
        return self.get_raw(self.prefix + key)

    async def set(
        self, key: str, value: bytes | str, *, ttl: float | None = None, if_absent: bool = False,
        scopes: Sequence[str] = (),
    ) -> bool:
        self._check()
        full = self.prefix + key
        if if_absent and self.get_object(full) is not None:
            return False
        self._sweep()
        expires = self.clock() + ttl if ttl is not None else None
        self._data[full] = (value.encode() if isinstance(value, str) else bytes(value), expires)
        for scope in scopes:
            members, scope_expires = self._scopes.get(self.prefix + scope) or (set(), expires)
            members.add(full)
            if scope_expires is not None and (expires is None or expires > scope_expires):
                scope_expires = expires
            self._scopes[self.prefix + scope] = (members, scope_expires)
        return True

    async def delete(self, *keys: str) -> int:
        self._check()
        found = 0
        for key in keys:
            if self.get_object(self.prefix + key) is not None:
                found += 1
            self._data.pop(self.prefix + key, None)
        return found

    async def delete_prefix(self, prefix: str) -> int:
        self._check()
        start = self.prefix + prefix
        doomed = [k for k in self._data if k.startswith(start)]
        found = sum(1 for k in doomed if self.get_object(k) is not None)
        for key in doomed:
            self._data.pop(key, None)
        return found

    async def delete_scope(self, scope: str) -> int:
        self._check()
        members, _ = self._scopes.pop(self.prefix + scope, (set(), None))
        found = 0
        for key in members:
            if self.get_object(key) is not None:
                found += 1
                del self._data[key]
        return found

    async def run(self, script: Script[T], keys: Sequence[str], args: Sequence[ScriptArg] = ()) -> T:
        if self._closed:
            self._check()
        now = self.clock()
        if now >= self._next_sweep:
            self._sweep(now)
        tx = self._tx
        tx.at = now
        prefix = self.prefix
        return script.python(tx, [prefix + k for k in keys], args)

    # --- pub/sub -------------------------------------------------------------------------

    async def publish(self, channel: str, message: bytes | str) -> None:
        self._check()
        subscribers = self._subscribers.get(self.prefix + channel)
        if not subscribers:
            return
        payload = message.encode() if isinstance(message, str) else bytes(message)
        # Delivered from a task, as from Redis: the publisher never runs handlers inline.
        task = asyncio.get_running_loop().create_task(deliver(list(subscribers), payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        self._check()
        subscription = Subscription(channel, handler, self)
        self._subscribers.setdefault(self.prefix + channel, []).append(subscription)
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(self.prefix + subscription.channel, [])
        if subscription in subscribers:
            subscribers.remove(subscription)


class _MemoryTx:
    """:class:`~clasp_gateway.state.ScriptTx` over a :class:`MemoryState`.

    One per state, reused by every script (they run one at a time, without awaiting).
    The clock is read once per script (``at``, set by ``run``), as SQLite reads it once
    per transaction: a script is one instant, and its reads and writes cost a dict
    operation each, which matters to scripts run on every request (limits, budgets).
    """

    __slots__ = ("at", "data", "state")

    def __init__(self, state: MemoryState) -> None:
        self.state = state
        self.data = state._data
        self.at = 0.0

    def now(self) -> float:
        return self.at

    def get(self, key: str) -> bytes | None:
        entry = self.data.get(key)
        if entry is None:
            return None
        expires = entry[1]
        if expires is not None and expires <= self.at:
            del self.data[key]
            return None
        value = entry[0]
        return value if value.__class__ is bytes else orjson.dumps(value)  # a document: its JSON

    def set(self, key: str, value: bytes | str, *, ttl: float | None = None, keep_ttl: bool = False) -> None:
        self.set_json(key, value.encode() if isinstance(value, str) else bytes(value), ttl=ttl, keep_ttl=keep_ttl)

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def get_json(self, key: str) -> Any:
        entry = self.data.get(key)
        if entry is None:
            return None
        expires = entry[1]
        if expires is not None and expires <= self.at:
            del self.data[key]
            return None
        value = entry[0]
        return orjson.loads(value) if value.__class__ is bytes else value

    def set_json(self, key: str, value: Any, *, ttl: float | None = None, keep_ttl: bool = False) -> None:
        if keep_ttl:
            old = self.data.get(key)
            self.data[key] = (value, old[1] if old is not None else None)
        else:
            self.data[key] = (value, self.at + ttl if ttl is not None else None)


async def deliver(subscribers: Sequence[Subscription], payload: bytes) -> None:
    """Call each subscriber's handler; one that fails is logged, the others still run."""
    for subscription in subscribers:
        try:
            result: Any = subscription.handler(payload)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                await result
        except Exception:
            log.exception("a subscriber of %r failed", subscription.channel)

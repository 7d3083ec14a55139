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

    async def close(self) -> None:
        self._closed = True
        self._subscribers.clear()

    def _check(self) -> None:
        if self._closed:
            raise StateUnavailable("the memory state is closed")

    # --- the primitives scripts use (synchronous: atomic on the event loop) --------------

    def now(self) -> float:
        return self.clock()

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

    def set_raw(self, key: str, value: bytes | str, *, ttl: float | None = None, keep_ttl: bool = False) -> None:
        self.set_object(key, value.encode() if isinstance(value, str) else bytes(value), ttl=ttl, keep_ttl=keep_ttl)

    def set_object(self, key: str, value: Any, *, ttl: float | None = None, keep_ttl: bool = False) -> None:
        """Store ``value`` as it is (bytes, or a JSON document: see ``ScriptTx.set_json``)."""
        if keep_ttl:
            old = self._data.get(key)
            expires = old[1] if old is not None else None
        else:
            expires = self.clock() + ttl if ttl is not None else None
        self._data[key] = (value, expires)

    def delete_raw(self, key: str) -> None:
        self._data.pop(key, None)

    def _sweep(self) -> None:
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
        self.set_raw(full, value, ttl=ttl)
        expires = self.clock() + ttl if ttl is not None else None
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
        self._check()
        self._sweep()
        return script.python(_MemoryTx(self), [self.prefix + k for k in keys], args)

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
    """:class:`~clasp_gateway.state.ScriptTx` over a :class:`MemoryState`."""

    __slots__ = ("state",)

    def __init__(self, state: MemoryState) -> None:
        self.state = state

    def now(self) -> float:
        return self.state.clock()

    def get(self, key: str) -> bytes | None:
        return self.state.get_raw(key)

    def set(self, key: str, value: bytes | str, *, ttl: float | None = None, keep_ttl: bool = False) -> None:
        self.state.set_raw(key, value, ttl=ttl, keep_ttl=keep_ttl)

    def delete(self, key: str) -> None:
        self.state.delete_raw(key)

    def get_json(self, key: str) -> Any:
        value = self.state.get_object(key)
        return orjson.loads(value) if value.__class__ is bytes else value

    def set_json(self, key: str, value: Any, *, ttl: float | None = None, keep_ttl: bool = False) -> None:
        self.state.set_object(key, value, ttl=ttl, keep_ttl=keep_ttl)


async def deliver(subscribers: Sequence[Subscription], payload: bytes) -> None:
    """Call each subscriber's handler; one that fails is logged, the others still run."""
    for subscription in subscribers:
        try:
            result: Any = subscription.handler(payload)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                await result
        except Exception:
            log.exception("a subscriber of %r failed", subscription.channel)

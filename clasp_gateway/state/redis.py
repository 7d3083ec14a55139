"""State in Redis, shared by every replica.

One pooled ``redis.asyncio`` client per gateway, without client-side retries (a slow or
dead Redis must not stall requests: :mod:`.outage` turns failures into a fast
:class:`StateUnavailable` and one log line). Atomic operations are Lua scripts run with
EVALSHA (loaded again after a Redis restart), taking the time from Redis itself.
Pub/sub uses one extra connection and one reader task, which resubscribes after an
outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, ReadOnlyError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import Handler, Script, ScriptArg, StateBackend, Subscription
from .memory import deliver
from .outage import Outage, StateUnavailable, safe_url

log = logging.getLogger("clasp.state")

T = TypeVar("T")

OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ReadOnlyError, OSError, TimeoutError)
"""Failures of the store (an outage); anything else (a script error, a wrong type) is a
bug in the caller and propagates as is."""

# Set ``key`` and add it to scope sets; a scope set lives as long as its longest-lived key.
# KEYS[1]: the key, KEYS[2..]: scope sets. ARGV: value, ttl_ms (0: none), if_absent (1/0).
_SET_SCOPED = """
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[2])
if ttl > 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl) else redis.call('SET', KEYS[1], ARGV[1]) end
for i = 2, #KEYS do
  local existed = redis.call('EXISTS', KEYS[i])
  local left = redis.call('PTTL', KEYS[i])
  redis.call('SADD', KEYS[i], KEYS[1])
  if ttl <= 0 then
    redis.call('PERSIST', KEYS[i])
  elseif existed == 0 or (left >= 0 and left < ttl) then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return 1
"""

# Delete every member of a scope set, and the set. Returns how many members existed.
_DELETE_SCOPE = """
local members = redis.call('SMEMBERS', KEYS[1])
local found = 0
for i = 1, #members, 500 do
  found = found + redis.call('UNLINK', unpack(members, i, math.min(i + 499, #members)))
end
redis.call('UNLINK', KEYS[1])
return found
"""


class RedisState(StateBackend):
    """State in Redis at ``url``; calls slower than ``timeout`` seconds count as an outage."""

    kind = "redis"
    shared = True
    label = "Redis"

    def __init__(self, url: str, *, prefix: str = "clasp:", timeout: float = 0.25, max_connections: int = 64) -> None:
        super().__init__(prefix=prefix)
        self._url = safe_url(url)
        self.timeout = timeout
        self._pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            client_name="clasp-state",
        )
        self.client = Redis(connection_pool=self._pool)
        self._outage = Outage(self.label, self._url)
        self._scripts: dict[str, Any] = {}
        self._set_scoped = self.client.register_script(_SET_SCOPED)
        self._delete_scope = self.client.register_script(_DELETE_SCOPE)
        self._subscribers: dict[str, list[Subscription]] = {}
        self._subscribed: dict[str, asyncio.Event] = {}
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def url(self) -> str:
        return self._url

    @property
    def outage(self) -> bool:
        return self._outage.down

    async def _call(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        """Run one Redis operation with the outage policy (see :mod:`.outage`)."""
        if self._closed:
            raise StateUnavailable(f"the Redis state at {self._url} is closed")
        self._outage.check()
        try:
            result = await operation()
        except OUTAGE_ERRORS as exc:
            raise self._outage.failed(exc, what) from None
        self._outage.succeeded()
        return result

    async def open(self) -> None:
        """Ping Redis once, so an unreachable Redis is logged at start-up (serving goes on)."""
        with contextlib.suppress(StateUnavailable):
            await self._call(self.client.ping, "connecting at start-up")

    async def close(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        await self._close_pubsub()
        with contextlib.suppress(*OUTAGE_ERRORS):
            await self.client.aclose()
            await self._pool.disconnect()

    # --- values --------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        result = await self._call(lambda: self.client.get(self.prefix + key), "reading a key")
        return result.encode() if isinstance(result, str) else result

    async def set(
        self, key: str, value: bytes | str, *, ttl: float | None = None, if_absent: bool = False,
        scopes: Sequence[str] = (),
    ) -> bool:
        full = self.prefix + key
        px = _px(ttl)
        if scopes:
            keys = [full, *(self.prefix + s for s in scopes)]
            args = [value, px or 0, "1" if if_absent else "0"]
            done = await self._call(lambda: self._set_scoped(keys=keys, args=args), "storing a key")
            return bool(done)
        # SET NX answers None when the key exists.
        stored = await self._call(lambda: self.client.set(full, value, px=px, nx=if_absent), "storing a key")
        return bool(stored)

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        full = [self.prefix + k for k in keys]
        found: int = await self._call(lambda: self.client.delete(*full), "deleting keys")
        return found

    async def delete_prefix(self, prefix: str) -> int:
        pattern = _glob_escape(self.prefix + prefix) + "*"

        async def scan_and_delete() -> int:
            found = 0
            batch: list[bytes] = []
            async for key in self.client.scan_iter(match=pattern, count=500):
                batch.append(key)
                if len(batch) >= 500:
                    found += await self.client.unlink(*batch)
                    batch = []
            if batch:
                found += await self.client.unlink(*batch)
            return found

        return await self._call(scan_and_delete, "deleting keys by prefix")

    async def delete_scope(self, scope: str) -> int:
        key = self.prefix + scope
        found = await self._call(lambda: self._delete_scope(keys=[key]), "deleting a scope")
        return int(found)

    async def run(self, script: Script[T], keys: Sequence[str], args: Sequence[ScriptArg] = ()) -> T:
        registered = self._scripts.get(script.lua)
        if registered is None:
            registered = self._scripts[script.lua] = self.client.register_script(script.lua)
        full = [self.prefix + k for k in keys]
        reply = await self._call(lambda: registered(keys=full, args=list(args)), f"running {script.name}")
        return script.decode(reply)

    # --- pub/sub -------------------------------------------------------------------------

    async def publish(self, channel: str, message: bytes | str) -> None:
        await self._call(lambda: self.client.publish(self.prefix + channel, message), "publishing a message")

    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        if self._closed:
            raise StateUnavailable(f"the Redis state at {self._url} is closed")
        full = self.prefix + channel
        subscription = Subscription(channel, handler, self)
        subscribers = self._subscribers.setdefault(full, [])
        subscribers.append(subscription)
        if len(subscribers) == 1:
            confirmed = self._subscribed[full] = asyncio.Event()
            if self._reader is None:
                self._reader = asyncio.get_running_loop().create_task(self._read(), name="clasp-state-pubsub")
            elif self._pubsub is not None:
                with contextlib.suppress(*OUTAGE_ERRORS):
                    await self._pubsub.subscribe(full)
            # Wait (briefly) until Redis confirms, so a publish right after is received.
            if not self._outage.down:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(confirmed.wait(), max(1.0, self.timeout * 4))
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        full = self.prefix + subscription.channel
        subscribers = self._subscribers.get(full, [])
        if subscription in subscribers:
            subscribers.remove(subscription)
        if not subscribers and full in self._subscribers:
            del self._subscribers[full]
            self._subscribed.pop(full, None)
            if self._pubsub is not None:
                with contextlib.suppress(*OUTAGE_ERRORS):
                    await self._pubsub.unsubscribe(full)

    async def _read(self) -> None:
        """The one reader: (re)subscribe, dispatch messages, survive outages."""
        while not self._closed:
            try:
                if self._pubsub is None:
                    self._outage.check()
                    pubsub = self.client.pubsub()
                    self._pubsub = pubsub
                    channels = list(self._subscribers)
                    if channels:
                        await pubsub.subscribe(*channels)
                if not self._pubsub.subscribed:
                    await asyncio.sleep(0.5)  # nothing subscribed (all unsubscribed): idle
                    continue
                # No socket timeout here: a quiet channel is not an outage.
                message = await self._pubsub.get_message(timeout=1.0)
                if message is not None:
                    await self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except StateUnavailable:
                await self._close_pubsub()
                await asyncio.sleep(self._outage.retry_after)
            except OUTAGE_ERRORS as exc:
                self._outage.failed(exc, "listening for published messages")
                await self._close_pubsub()
                await asyncio.sleep(self._outage.retry_after)
            except Exception:  # the reader must outlive anything one message throws
                log.exception("the Redis pub/sub reader failed; restarting it")
                await self._close_pubsub()
                await asyncio.sleep(self._outage.retry_after)

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = message.get("channel")
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        if kind == "subscribe":
            event = self._subscribed.get(name)
            if event is not None:
                event.set()
            return
        if kind != "message":
            return
        data = message.get("data")
        payload = data if isinstance(data, bytes) else str(data).encode()
        subscribers = self._subscribers.get(name)
        if subscribers:
            await deliver(list(subscribers), payload)

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(*OUTAGE_ERRORS):
                await pubsub.aclose()


def _px(ttl: float | None) -> int | None:
    if ttl is None:
        return None
    if ttl <= 0:
        raise ValueError(f"ttl must be > 0 seconds or None, got {ttl!r}")
    return max(1, round(ttl * 1000))


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)

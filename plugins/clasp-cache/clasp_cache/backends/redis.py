"""The shared cache backend: Redis, so every replica serves every replica's entries.

Layout under ``prefix`` (default ``clasp:cache:``; plain Redis 7, one node):

=====================  ===================================================================
``e:<id>``             the entry: 4-byte meta length, meta JSON, payload (expires at keep_until)
``m:<id>``             its meta JSON alone (listing without reading payloads; same expiry)
``lru``                sorted set id -> last use (Redis time): eviction order
``exp``                sorted set id -> keep_until (Redis time): sweeping expired indexes
``sz``                 hash id -> ``size|scope``: byte accounting, index cleanup
``bytes``              payload bytes stored; ``evictions``: entries evicted so far
``s:<scope>``          set of the scope's ids (purge and list by scope)
``v:<scope>``          hash id -> vector; ``vs:<scope>``: sorted set id -> sequence;
``vq:<scope>``         the scope's sequence counter (the semantic layer's mirrors)
=====================  ===================================================================

Writes are Lua scripts (atomic: a put sweeps expired ids, stores, and evicts least
recently used entries while over ``max_entries`` or ``max_bytes``); a get is one script
too (read + touch). The client is one pooled ``redis.asyncio`` connection pool
(``max_connections``, a timeout on every socket operation, ``timeout``).

Outages: a failed call is logged once per outage and the store is left alone for
:data:`RETRY_AFTER` seconds; meanwhile the request path answers as an empty cache
(``get`` → ``None``, ``put`` → ``False``) and admin operations raise
:class:`~clasp_cache.backends.base.CacheUnavailable`. The client never sees an error.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import NoScriptError, RedisError

from .base import (
    BackendLimits,
    BackendStats,
    CacheBackend,
    CacheEntry,
    CacheUnavailable,
    EntryMeta,
    Selector,
    VectorBatch,
)

__all__ = ["RETRY_AFTER", "RedisBackend", "meta_from_json", "meta_to_json"]

log = logging.getLogger("clasp.cache")

RETRY_AFTER = 2.0
"""Seconds a failed Redis is left alone before the next call tries it again."""

_REMOVE = """
local function remove(p, id)
  local info = redis.call('HGET', p .. 'sz', id)
  redis.call('DEL', p .. 'e:' .. id, p .. 'm:' .. id)
  redis.call('ZREM', p .. 'lru', id)
  redis.call('ZREM', p .. 'exp', id)
  if info then
    redis.call('HDEL', p .. 'sz', id)
    local bar = string.find(info, '|', 1, true)
    local size = tonumber(string.sub(info, 1, bar - 1))
    local scope = string.sub(info, bar + 1)
    redis.call('DECRBY', p .. 'bytes', size)
    redis.call('SREM', p .. 's:' .. scope, id)
    redis.call('HDEL', p .. 'v:' .. scope, id)
    redis.call('ZREM', p .. 'vs:' .. scope, id)
    return 1
  end
  return 0
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function sweep(p, now)
  local gone = redis.call('ZRANGEBYSCORE', p .. 'exp', '-inf', now, 'LIMIT', 0, 200)
  for _, id in ipairs(gone) do remove(p, id) end
end
"""

_PUT = _REMOVE + """
local p, id, value, meta = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, size, scope = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local max_entries, max_bytes = tonumber(ARGV[8]), tonumber(ARGV[9])
local now = now_ms()
sweep(p, now)
remove(p, id)
redis.call('SET', p .. 'e:' .. id, value, 'PX', ttl)
redis.call('SET', p .. 'm:' .. id, meta, 'PX', ttl)
redis.call('ZADD', p .. 'lru', now, id)
redis.call('ZADD', p .. 'exp', now + ttl, id)
redis.call('HSET', p .. 'sz', id, size .. '|' .. scope)
redis.call('INCRBY', p .. 'bytes', size)
redis.call('SADD', p .. 's:' .. scope, id)
local evicted = 0
while redis.call('ZCARD', p .. 'lru') > max_entries or tonumber(redis.call('GET', p .. 'bytes') or '0') > max_bytes do
  local oldest = redis.call('ZRANGE', p .. 'lru', 0, 0)[1]
  if not oldest or oldest == id then break end
  remove(p, oldest)
  evicted = evicted + 1
end
if evicted > 0 then redis.call('INCRBY', p .. 'evictions', evicted) end
return evicted
"""

_GET = """
local p, id = ARGV[1], ARGV[2]
local value = redis.call('GET', p .. 'e:' .. id)
if value then
  local t = redis.call('TIME')
  redis.call('ZADD', p .. 'lru', 'XX', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), id)
end
return value
"""

_DELETE = _REMOVE + """
local p = ARGV[1]
local n = 0
for i = 2, #ARGV do n = n + remove(p, ARGV[i]) end
sweep(p, now_ms())
return n
"""

_ADD_VECTOR = """
local p, scope, id, vector, max = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local info = redis.call('HGET', p .. 'sz', id)
if not info or redis.call('EXISTS', p .. 'e:' .. id) == 0 then return 0 end
local bar = string.find(info, '|', 1, true)
if string.sub(info, bar + 1) ~= scope then return 0 end
local seq = redis.call('INCR', p .. 'vq:' .. scope)
redis.call('HSET', p .. 'v:' .. scope, id, vector)
redis.call('ZADD', p .. 'vs:' .. scope, seq, id)
while redis.call('ZCARD', p .. 'vs:' .. scope) > max do
  local oldest = redis.call('ZPOPMIN', p .. 'vs:' .. scope)[1]
  redis.call('HDEL', p .. 'v:' .. scope, oldest)
end
return seq
"""

_VECTORS = """
local p, scope, since, limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local seq = tonumber(redis.call('GET', p .. 'vq:' .. scope) or '0')
local reset = 0
if since > seq then since = 0; reset = 1 end
local ids
local more = 0
if limit > 0 then
  local scored = redis.call('ZRANGEBYSCORE', p .. 'vs:' .. scope, '(' .. since, '+inf', 'WITHSCORES', 'LIMIT', 0, limit + 1)
  ids = {}
  for i = 1, math.min(#scored, 2 * limit), 2 do ids[#ids + 1] = scored[i] end
  if #scored > 2 * limit then more = 1; seq = tonumber(scored[2 * limit]) end
else
  ids = redis.call('ZRANGEBYSCORE', p .. 'vs:' .. scope, '(' .. since, '+inf')
end
local out = {seq, reset, more}
for s = 1, #ids, 1000 do  -- HMGET in chunks: unpack() of 8,000+ ids overflows Lua's stack
  local chunk = {}
  for i = s, math.min(s + 999, #ids) do chunk[#chunk + 1] = ids[i] end
  local vecs = redis.call('HMGET', p .. 'v:' .. scope, unpack(chunk))
  for i, id in ipairs(chunk) do
    if vecs[i] then table.insert(out, id); table.insert(out, vecs[i]) end
  end
end
return out
"""


def meta_to_json(meta: EntryMeta) -> bytes:
    return orjson.dumps({f: getattr(meta, f) for f in meta.__dataclass_fields__})


def meta_from_json(data: bytes) -> EntryMeta:
    raw = orjson.loads(data)
    known = EntryMeta.__dataclass_fields__
    return EntryMeta(**{k: v for k, v in raw.items() if k in known})


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, ":***@" + host, parts.path, parts.query, parts.fragment))


class RedisBackend(CacheBackend):
    """Entries in Redis, shared by every replica (see the module docstring)."""

    name = "redis"
    shared = True

    def __init__(
        self,
        limits: BackendLimits,
        clock: Callable[[], float],
        *,
        url: str,
        prefix: str = "clasp:cache:",
        timeout: float = 0.25,
        max_connections: int = 32,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(limits, clock)
        self.url = _safe_url(url)
        self.prefix = prefix
        self._pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout, health_check_interval=30,
        )
        self._redis = Redis(connection_pool=self._pool)
        self._monotonic = monotonic
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._shas: dict[str, str] = {}
        self._scripts = {"put": _PUT, "get": _GET, "delete": _DELETE, "add_vector": _ADD_VECTOR,
                         "vectors": _VECTORS}

    @property
    def outage(self) -> bool:
        return self._down_since is not None

    async def close(self) -> None:
        await self._redis.aclose()
        await self._pool.disconnect()

    # --- calls, with the outage policy --------------------------------------------------------

    async def _eval(self, script: str, *args: Any) -> Any:
        if self._down_since is not None and self._monotonic() < self._retry_at:
            raise CacheUnavailable(f"Redis at {self.url} is unavailable; retrying shortly")
        try:
            sha = self._shas.get(script)
            try:
                if sha is None:
                    raise NoScriptError("not loaded yet")
                result = await self._redis.evalsha(sha, 0, self.prefix, *args)
            except NoScriptError:
                self._shas[script] = await self._redis.script_load(self._scripts[script])
                result = await self._redis.evalsha(self._shas[script], 0, self.prefix, *args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed(exc, script) from None
        self._succeeded()
        return result

    async def _call(self, what: str, function: Callable[[], Any]) -> Any:
        if self._down_since is not None and self._monotonic() < self._retry_at:
            raise CacheUnavailable(f"Redis at {self.url} is unavailable; retrying shortly")
        try:
            result = await function()
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed(exc, what) from None
        self._succeeded()
        return result

    def _failed(self, exc: BaseException, what: str) -> CacheUnavailable:
        now = self._monotonic()
        reason = f"{type(exc).__name__}: {str(exc)[:200]}"
        if self._down_since is None:
            # Once per outage: every request would otherwise log the same thing.
            log.error("response cache: Redis at %s failed (%s) during %s; the cache is bypassed "
                      "(requests go upstream) until it answers again (retrying every %.0fs)",
                      self.url, reason, what, RETRY_AFTER)
            self._down_since = now
        self._retry_at = now + RETRY_AFTER
        return CacheUnavailable(f"Redis at {self.url} failed during {what} ({reason})")

    def _succeeded(self) -> None:
        if self._down_since is not None:
            log.warning("response cache: Redis at %s is reachable again after %.1fs",
                        self.url, self._monotonic() - self._down_since)
            self._down_since = None

    # --- the request path: an outage is a miss -----------------------------------------------

    async def get(self, entry_id: str) -> CacheEntry | None:
        try:
            value = await self._eval("get", entry_id)
        except CacheUnavailable:
            return None
        if not value:
            return None
        length = int.from_bytes(value[:4], "big")
        meta = meta_from_json(value[4 : 4 + length])
        return CacheEntry(meta, bytes(value[4 + length :]))

    async def put(self, entry: CacheEntry) -> bool:
        size = len(entry.payload)
        ttl_ms = int((entry.meta.keep_until - self.clock()) * 1000)
        if size > self.limits.max_entry_bytes or ttl_ms <= 0:
            return False
        meta = entry.meta if entry.meta.size == size else _resized(entry.meta, size)
        meta_json = meta_to_json(meta)
        value = len(meta_json).to_bytes(4, "big") + meta_json + entry.payload
        try:
            await self._eval("put", meta.id, value, meta_json, ttl_ms, size, meta.scope,
                             self.limits.max_entries, self.limits.max_bytes)
        except CacheUnavailable:
            return False
        return True

    async def add_vector(self, scope: str, entry_id: str, vector: bytes) -> int:
        try:
            return int(await self._eval("add_vector", scope, entry_id, vector, self.limits.max_vectors_per_scope))
        except CacheUnavailable:
            return 0

    async def scope_vectors(self, scope: str, since: int = 0, limit: int | None = None) -> VectorBatch:
        try:
            reply = await self._eval("vectors", scope, since, limit or 0)
        except CacheUnavailable:
            return VectorBatch(since, [])
        seq, reset, more = int(reply[0]), bool(int(reply[1])), bool(int(reply[2]))
        items = [(reply[i].decode(), bytes(reply[i + 1])) for i in range(3, len(reply), 2)]
        return VectorBatch(seq, items, reset=reset, more=more)

    # --- administration: raise CacheUnavailable -----------------------------------------------

    async def _ids(self, selector: Selector) -> list[str]:
        if selector.ids:
            return list(selector.ids)
        if selector.scope is not None:
            scope_key = self.prefix + "s:" + selector.scope
            members = await self._call("list", lambda: self._redis.smembers(scope_key))
        else:
            members = await self._call("list", lambda: self._redis.zrange(self.prefix + "lru", 0, -1))
        return [m.decode() if isinstance(m, bytes) else m for m in members]

    async def _metas(self, ids: list[str]) -> list[EntryMeta]:
        out: list[EntryMeta] = []
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            keys = [self.prefix + "m:" + i for i in batch]
            values = await self._call("list", lambda keys=keys: self._redis.mget(keys))  # type: ignore[misc]
            out += [meta_from_json(v) for v in values if v]
        return out

    async def entries(self, selector: Selector, limit: int = 1000) -> list[EntryMeta]:
        now = self.clock()
        found = [m for m in await self._metas(await self._ids(selector)) if selector.matches(m, now)]
        found.sort(key=lambda m: m.created, reverse=True)
        return found[:limit]

    async def purge(self, selector: Selector) -> int:
        now = self.clock()
        if selector.ids:
            ids = list(selector.ids)
        else:
            ids = [m.id for m in await self._metas(await self._ids(selector)) if selector.matches(m, now)]
        removed = 0
        for start in range(0, len(ids), 200):
            removed += int(await self._eval_admin("delete", *ids[start : start + 200]))
        return removed

    async def _eval_admin(self, script: str, *args: Any) -> Any:
        return await self._eval(script, *args)

    async def stats(self) -> BackendStats:
        async def read() -> Any:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zcard(self.prefix + "lru")
                pipe.get(self.prefix + "bytes")
                pipe.get(self.prefix + "evictions")
                return await pipe.execute()

        count, size, evictions = await self._call("stats", read)
        return BackendStats(self.name, int(count or 0), int(size or 0), int(evictions or 0), shared=True,
                            outage=self.outage)


def _resized(meta: EntryMeta, size: int) -> EntryMeta:
    return dataclasses.replace(meta, size=size)

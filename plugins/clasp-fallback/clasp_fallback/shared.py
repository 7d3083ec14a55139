"""The one pooled Redis client shared by breakers and health checks, and what happens
when Redis is down: callers get ``None`` and use local state, the outage is logged
once, and Redis is tried again after a short pause (not on every request, so a dead
Redis costs nothing on the hot path).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger("clasp.fallback")

T = TypeVar("T")

RETRY_REDIS_AFTER = 2.0
"""Seconds to stay on local state after a Redis failure before trying Redis again."""


def safe_url(url: str) -> str:
    """``url`` without its password, for logs and status pages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


class SharedRedis:
    """A pooled ``redis.asyncio`` client with outage handling.

    Create it in ``startup`` (inside the serving event loop) and close it in ``shutdown``.
    """

    def __init__(self, url: str, *, timeout: float, max_connections: int = 64) -> None:
        self.url = safe_url(url)
        # No client-side retries: a slow or dead Redis must not stall requests; the
        # caller falls back to local state instead.
        self._pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            client_name="clasp-fallback",
        )
        self.client = Redis(connection_pool=self._pool)
        self._down_until = 0.0
        self._down_since: float | None = None

    @property
    def available(self) -> bool:
        """False while Redis is considered down (local state is in use)."""
        return self._down_since is None or time.monotonic() >= self._down_until

    @property
    def outage(self) -> bool:
        """True from a failure until the next successful call."""
        return self._down_since is not None

    async def call(self, operation: Callable[[Redis], Awaitable[T]], what: str) -> T | None:
        """Run ``operation(client)``; on any Redis failure return ``None`` (use local state).

        ``operation`` must not itself return ``None`` (``SET NX`` does when the key
        exists: wrap it to return a bool), or success would read as an outage.
        """
        if not self.available:
            return None
        try:
            result = await operation(self.client)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc, what)
            return None
        if self._down_since is not None:
            log.warning(
                "Redis at %s is reachable again after %.1fs: circuit breaker state is shared again",
                self.url, time.monotonic() - self._down_since,
            )
            self._down_since = None
        return result

    def _failed(self, exc: BaseException, what: str) -> None:
        now = time.monotonic()
        if self._down_since is None:
            # Once per outage: every request would otherwise log the same thing.
            log.error(
                "Redis at %s failed (%s: %s) while %s; circuit breakers and health use this "
                "replica's local state until it answers again (retrying every %.0fs)",
                self.url, type(exc).__name__, str(exc)[:200], what, RETRY_REDIS_AFTER,
            )
            self._down_since = now
        self._down_until = now + RETRY_REDIS_AFTER

    async def ping(self) -> bool:
        """Whether Redis answers now (logged like any other failure if not)."""
        return bool(await self.call(lambda r: r.ping(), "connecting at start-up"))

    def register_script(self, source: str) -> Any:
        """A Lua script run with EVALSHA (loaded on first use and after a Redis restart)."""
        return self.client.register_script(source)

    async def close(self) -> None:
        """Close the pool's connections."""
        try:
            await self.client.aclose()
            await self._pool.disconnect()
        except (RedisError, OSError):
            pass

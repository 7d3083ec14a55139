"""The ``authenticate`` hook for virtual keys, its cache, and what keeps the cache true.

Per request the cost is two dict lookups (the first time a process sees a key: a shape
check and a SHA-256): a key seen in the last ``cache.ttl`` seconds is answered from
:class:`.cache.LookupCache`, and its ``last_used_at`` is noted in memory and written
with the others every ``last_used_interval`` (one statement per batch, off the hot path).

What keeps it true: every change (the admin API here, another replica, the CLI when the
state is shared) publishes an invalidation on ``gateway.state`` (``keys:changed``); each
process drops the entries it names. Publication is at most once, so the TTL bounds how
long a missed message matters.

What it refuses, and how:

- a key that is not ``sk-clasp-`` shaped is never looked up (static keys go to the core);
- an unknown virtual key defers to the core (a static key may look like one), except on a
  gateway without static keys where virtual keys exist: then it is a 401 like any wrong
  key, never an open door (and a missing key too);
- revoked: 401 saying so; expired (the key's or its team's expiry): 401 saying when;
- the database down: keys seen before keep working on their stale entry (up to
  ``cache.stale_if_error``), others get a shaped 503 with ``retry-after``; the outage is
  logged once, and its end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from clasp_gateway import (
    AuthenticationError,
    Config,
    GatewayError,
    Principal,
    RequestContext,
    StateBackend,
    StateUnavailable,
    Subscription,
    hookimpl,
    register_secret,
)

from .cache import Entry, LookupCache
from .inputs import iso
from .policy import combine, policy_from_row
from .store import Found, KeyStore
from .tokens import is_virtual_key, key_hash

log = logging.getLogger("clasp.keys")

CHANNEL = "keys:changed"
"""The state channel every change is announced on (JSON: ``key_id``, ``team`` or ``all``)."""
OWNER = "user_id"
"""Where a key's owner travels in :attr:`Principal.metadata` (``ctx.user`` is set from it)."""


class StoreUnavailable(GatewayError):
    """The key database cannot be reached and this key is not in the cache (503)."""

    status = 503
    error_type = "api_error"

    def __init__(self) -> None:
        super().__init__("the gateway cannot check this key right now (its key store is unavailable); "
                         "retry shortly", headers={"retry-after": "2"})


def principal_of(found: Found) -> Principal:
    """The principal a key row (and its team's) stands for."""
    key = found.key
    metadata = dict(key["metadata"] or {})
    if key["user_id"]:
        metadata[OWNER] = key["user_id"]
    team = policy_from_row(found.team) if found.team is not None else None
    return Principal(
        key_id=key["id"], name=key["name"], team=key["team"], metadata=metadata, role=key["role"],
        project=key["project"], tags=dict(key["tags"] or {}), policy=combine(policy_from_row(key), team),
    )


class KeyAuthenticator:
    """One gateway's virtual-key runtime, registered as a plugin object at start-up."""

    def __init__(self, store: KeyStore, state: StateBackend | None, *, static_keys: bool,
                 cache: LookupCache, last_used_interval: float = 30.0, lookup_timeout: float = 5.0,
                 max_lookups: int = 8, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.state = state
        self.static_keys = static_keys
        self.cache = cache
        self.last_used_interval = last_used_interval
        self.lookup_timeout = lookup_timeout
        self.clock = clock
        self.live_keys = True
        """Whether any unrevoked virtual key exists (fail closed until known)."""
        self._lookups = asyncio.Semaphore(max_lookups)
        self._inflight: dict[str, asyncio.Future[Found | None]] = {}
        self._used: dict[str, float] = {}
        self._writing = asyncio.Lock()
        """Held by the background task while it uses the database (``close`` waits for it)."""
        self._digests: dict[str, str] = {}
        """Key -> its hash, for keys found in the store: a client's next requests cost a
        dict read instead of a shape check and a SHA-256 (a digest never goes stale:
        whether the key is still valid is the lookup cache's answer). Only found keys
        are remembered, so made-up keys cannot fill it; bounded like the cache. The keys
        are already held in this process (registered for redaction when first found)."""
        self._outage = False
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._started: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------

    async def ensure_started(self) -> None:
        """Start on first use: the startup hooks run before the gateway opens its
        database and state, so the first request (or admin call) does it, once."""
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self.start())
        await asyncio.shield(self._started)

    async def start(self) -> None:
        await self.refresh_live_keys()
        if self.state is not None:
            try:
                self._subscription = await self.state.subscribe(CHANNEL, self._on_change)
            except Exception:  # StateUnavailable, or a backend's own error: serve on, TTL-bounded
                log.warning("virtual keys: cannot subscribe to changes on the shared state; other replicas' "
                            "changes reach this one within the cache TTL (%gs)", self.cache.ttl)
        self._task = asyncio.get_running_loop().create_task(self._background(), name="clasp-keys-last-used")

    async def close(self) -> None:
        if self._started is not None and not self._started.done():
            self._started.cancel()
        if self._task is not None:
            # Never in the middle of a write: a transaction cancelled half-way leaves its
            # connection holding SQLite's write lock, and later writes (the ledger's
            # flush at shutdown) wait for it until they fail.
            async with self._writing:
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
        if self._subscription is not None:
            try:
                await self._subscription.close()
            except StateUnavailable:  # the state closed first (shutdown order): nothing left to stop
                pass
        await self.flush_last_used()

    async def _background(self) -> None:
        while True:
            await asyncio.sleep(self.last_used_interval)
            async with self._writing:
                await self.flush_last_used()
                await self.refresh_live_keys()

    async def flush_last_used(self) -> None:
        """Write the batched ``last_used_at`` values (kept for the next try on failure)."""
        batch, self._used = self._used, {}
        if not batch:
            return
        try:
            await asyncio.wait_for(self.store.touch(batch), self.lookup_timeout)
        except Exception as exc:  # the database is down: keep the times, bounded
            for key_id, ts in batch.items():
                if len(self._used) < 100_000:
                    self._used[key_id] = max(ts, self._used.get(key_id, 0.0))
            self._note_outage(exc)
        else:
            self._note_recovery()

    async def refresh_live_keys(self) -> None:
        try:
            self.live_keys = await asyncio.wait_for(self.store.has_live_keys(), self.lookup_timeout)
        except Exception as exc:
            self._note_outage(exc)
        else:
            self._note_recovery()

    # --- changes ------------------------------------------------------------------------

    async def announce(self, *, key_id: str | None = None, team: str | None = None) -> None:
        """After a change: drop it here, and tell every other process (best effort)."""
        await self.ensure_started()
        message = {"key_id": key_id} if key_id else {"team": team} if team else {"all": True}
        self._apply(message)
        if self.state is not None:
            try:
                await self.state.publish(CHANNEL, orjson.dumps(message))
            except StateUnavailable:
                log.warning("virtual keys: a change could not be announced to other replicas (shared state down); "
                            "they see it within the cache TTL (%gs)", self.cache.ttl)

    async def _on_change(self, payload: bytes) -> None:
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if isinstance(message, dict):
            self._apply(message)
            if message.get("all") or message.get("key_id"):
                await self.refresh_live_keys()

    def _apply(self, message: dict[str, Any]) -> None:
        key_id, team = message.get("key_id"), message.get("team")
        if isinstance(key_id, str):
            self.cache.invalidate(key_id=key_id)
        elif isinstance(team, str):
            self.cache.invalidate(team=team)
        else:
            self.cache.invalidate()

    # --- per request --------------------------------------------------------------------

    @hookimpl
    async def authenticate(self, api_key: str | None, headers: dict[str, str], config: Config) -> Principal | None:
        """A virtual key's principal; ``None`` defers to the next plugin (static keys)."""
        digest = self._digests.get(api_key) if api_key is not None else None
        if digest is None:
            if not is_virtual_key(api_key):
                if self.static_keys:
                    return None  # a static key (or a wrong one): the core's; nothing to look up
                if self._started is None or not self._started.done():
                    await self.ensure_started()
                self._not_ours(api_key)
                return None
            assert api_key is not None
            digest = key_hash(api_key)
        if self._started is None or not self._started.done():
            await self.ensure_started()
        assert api_key is not None
        entry = self.cache.get(digest)
        if entry is None:
            if self.cache.is_unknown(digest):
                self._not_ours(api_key)
                return None
            entry = await self._load(digest, api_key)
            if entry is None:
                self._not_ours(api_key)
                return None
        if api_key not in self._digests:
            if len(self._digests) >= self.cache.max_entries:
                self._digests.clear()
            self._digests[api_key] = digest
        if entry.status == "revoked":
            raise AuthenticationError("this API key has been revoked")
        now = self.clock()
        if entry.expires_at is not None and entry.expires_at <= now:
            raise AuthenticationError(f"this API key expired at {iso(entry.expires_at)}")
        self._used[entry.key_id] = now
        principal: Principal = entry.principal
        return principal

    def _not_ours(self, api_key: str | None) -> None:
        """Defer to the core, unless that would serve a gateway with virtual keys openly."""
        if self.static_keys or not self.live_keys:
            return None
        if not api_key:
            raise AuthenticationError(
                "missing API key: send it in the x-api-key header or as Authorization: Bearer <key>")
        raise AuthenticationError("invalid API key for this gateway")

    async def _load(self, digest: str, api_key: str) -> Entry | None:
        try:
            found = await self._lookup(digest)
        except Exception as exc:
            self._note_outage(exc)
            stale = self.cache.stale(digest)
            if stale is not None:
                return stale
            raise StoreUnavailable() from None
        self._note_recovery()
        if found is None:
            self.cache.put_unknown(digest)
            return None
        register_secret(api_key)  # from now on no log line of this process can show it
        principal = principal_of(found)
        status = "revoked" if found.key["revoked_at"] is not None else "active"
        entry = Entry(key_id=found.key["id"], team=found.key["team"], status=status, principal=principal,
                      expires_at=principal.policy.expires_at, stored=0.0)
        self.cache.put(digest, entry)
        return entry

    async def _lookup(self, digest: str) -> Found | None:
        """One query per hash at a time (concurrent requests with one new key share
        it), at most ``max_lookups`` at once, each bounded by ``lookup_timeout``."""
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Found | None] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            async with self._lookups:
                found = await asyncio.wait_for(self.store.lookup(digest), self.lookup_timeout)
            future.set_result(found)
            return found
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody warns about it
            raise
        finally:
            del self._inflight[digest]

    def _note_recovery(self) -> None:
        if self._outage:
            self._outage = False
            log.warning("virtual keys: the key store answers again")

    def _note_outage(self, exc: BaseException) -> None:
        if not self._outage:
            self._outage = True
            log.warning("virtual keys: the key store is unavailable (%s: %s); keys seen before keep working, "
                        "new ones get 503 until it answers", type(exc).__name__, str(exc).splitlines()[0][:200]
                        if str(exc) else "")

    @hookimpl(tryfirst=True)
    def before_call(self, ctx: RequestContext, request: Any) -> None:
        """A key with an owner attributes its requests to that owner."""
        owner = ctx.principal.metadata.get(OWNER) if ctx.principal is not None else None
        if isinstance(owner, str) and owner and ctx.principal is not None and ctx.principal.key_id.startswith("key_"):
            ctx.user = owner

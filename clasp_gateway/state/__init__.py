"""Shared state behind one interface: what breakers, rate limits, concurrency slots,
budget reservations, key-cache invalidation and response caches keep.

Why one interface: a module-level dict is invisible to a second worker or replica, so
breakers, limits and budgets would each differ by which process answers. Every consumer
goes through a :class:`StateBackend` instead, owned by the gateway (``gateway.state``,
opened in ``Gateway.start()`` and closed in ``Gateway.close()``), and the deployment
chooses where it lives with the ``state:`` section of clasp.yaml:

* ``memory`` (:mod:`.memory`): this process only. The default with one worker.
* ``sqlite`` (:mod:`.sqlite`): one file shared by the processes of one machine (WAL,
  one writer at a time, work done in a thread). The default when ``server.workers`` > 1
  and no backend is configured, so a machine's workers agree without Redis.
* ``redis`` (:mod:`.redis`): every replica of a deployment. Atomic operations are Lua
  scripts; time comes from Redis (``TIME``), so replicas with skewed clocks agree.

The operations are designed for their consumers:

=========================  =================================================================
``get``/``set``            cached answers, leases (``if_absent=True``), anything with a TTL
``delete``                 by key, by prefix (``delete_prefix``) or by scope
                           (``set(..., scopes=[...])`` then ``delete_scope``): invalidating
                           one team's cache or key without scanning everything
``incr``                   counters that expire (requests per key, errors per minute)
``add_within``             budget reservations and concurrency slots: add ``amount`` only
                           if the total stays within ``limit``; atomic, returns ok + total
``hit``                    sliding-window rate limits: ok, count, retry_after
``run``                    a custom atomic operation (:class:`Script`: a Lua body for Redis,
                           the same logic as a Python function for memory and SQLite);
                           circuit breaker transitions are one
``publish``/``subscribe``  invalidations every process must hear about
=========================  =================================================================

Outages: a shared backend that fails (Redis down, SQLite locked beyond ``timeout``)
raises :class:`StateUnavailable` from the call, logs the outage once (not per call),
and fails fast for a short pause before trying again, so a dead Redis costs nothing on
the hot path. The caller decides what to do meanwhile (local state, fail open, refuse):
that is policy, and it belongs to the consumer. ``outage`` says whether one is under
way (for status pages). The memory backend never has outages.

Keys are strings; the backend adds ``state.prefix`` (default ``clasp:``) to each, and
each consumer should add its own namespace (``fallback:``, ``budgets:``...). Values are
bytes (``str`` is stored as UTF-8); a script may also keep a JSON document per key
(:meth:`ScriptTx.get_json` / :meth:`ScriptTx.set_json`), which the memory backend keeps
as the object itself (no parse or dump per operation) and SQLite as its JSON.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from .outage import StateUnavailable, safe_url
from .settings import BACKENDS, StateSettings, parse_state_settings, state_problems

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("clasp.state")

T = TypeVar("T")

ScriptArg = str | bytes | int | float
"""An argument of a :class:`Script` (Redis receives it as a string; Python unchanged)."""

Handler = Callable[[bytes], Awaitable[None] | None]
"""A subscriber: called with each message's payload (sync or async; keep it quick)."""

EMBEDDED_PATH_ENV = "CLASP_STATE_SQLITE"
"""Set by ``clasp serve --workers N`` for its workers: the SQLite file they share."""


class ScriptTx(Protocol):
    """What a :class:`Script`'s Python function may do, inside one atomic transaction.

    Keys are the full keys (prefix included) the script was given. Expired keys read as
    absent. No I/O and no awaits in a script: it runs under the backend's lock (memory:
    the event loop; SQLite: a write transaction in the backend's thread).
    """

    def now(self) -> float:
        """Seconds on the backend's clock (the same one that expires keys)."""
        ...

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes | str, *, ttl: float | None = None, keep_ttl: bool = False) -> None:
        """Store ``value``; ``ttl`` in seconds (None: no expiry, unless ``keep_ttl``)."""
        ...

    def delete(self, key: str) -> None: ...

    def get_json(self, key: str) -> Any:
        """The JSON document at ``key`` (None when absent or expired).

        For scripts that keep a structured document per key (a budget's spend and
        leases): the memory backend keeps the document itself, so a script reads and
        writes it with no parsing or serialising per operation, while SQLite stores its
        JSON (what :meth:`get` reads there). A value stored with :meth:`set` is parsed.

        On the memory backend the answer is the stored object, not a copy: change it
        only to store it back with :meth:`set_json` in the same script, and return
        plain values (numbers, tuples) to the caller, never the document.
        """
        ...

    def set_json(self, key: str, value: Any, *, ttl: float | None = None, keep_ttl: bool = False) -> None:
        """Store a JSON document (a dict or a list of what JSON holds) at ``key``, as
        :meth:`set` does; :meth:`get` (and ``StateBackend.get``) then read its JSON, on
        every backend."""
        ...


def _same(reply: Any) -> Any:
    return reply


@dataclass(frozen=True, slots=True)
class Script(Generic[T]):
    """A custom atomic operation, written twice: Lua for Redis, Python for the others.

    ``python(tx, keys, args)`` runs under the backend's lock (see :class:`ScriptTx`);
    ``lua`` runs with ``KEYS`` (prefixed) and ``ARGV`` (``args`` as strings), and
    ``decode`` turns its Redis reply into what ``python`` returns, so callers see one
    type whatever the backend. The two must keep the same semantics; run the
    consumer's tests against every backend (``tests/test_state.py`` shows how).
    The two implementations never share stored data (a key lives in one backend), so
    each may store its state in whatever shape suits it (a Redis hash, JSON...).
    """

    name: str
    lua: str
    python: Callable[[ScriptTx, list[str], Sequence[Any]], T]
    decode: Callable[[Any], T] = _same


@dataclass(frozen=True, slots=True)
class Reservation:
    """The answer of :meth:`StateBackend.add_within`."""

    ok: bool
    """Whether ``amount`` was added (False: the total would have exceeded the limit)."""
    total: float
    """The total after the call (unchanged when refused)."""


@dataclass(frozen=True, slots=True)
class RateWindow:
    """The answer of :meth:`StateBackend.hit`."""

    ok: bool
    """Whether the hit was counted (False: over the limit, nothing counted)."""
    count: float
    """The sliding-window estimate of hits in the last ``window`` seconds (after this one if ok)."""
    retry_after: float
    """Seconds until a hit of the same cost would be allowed (0 when ok)."""


@dataclass(slots=True, eq=False)
class Subscription:
    """One handler subscribed to one channel; ``await close()`` to stop receiving."""

    channel: str
    handler: Handler
    backend: StateBackend = field(repr=False)

    async def close(self) -> None:
        """Unsubscribe (idempotent)."""
        await self.backend.unsubscribe(self)


class StateBackend(ABC):
    """Where shared state lives. Every method is async and safe to call concurrently.

    Shared backends raise :class:`StateUnavailable` during an outage (see the module
    docs); nothing here blocks the event loop.
    """

    kind: ClassVar[str]
    """``memory``, ``sqlite`` or ``redis``."""
    shared: ClassVar[bool]
    """Whether other processes see this state (False for memory)."""
    label: ClassVar[str]
    """The store's name in log lines and status pages ("Redis", "SQLite", "memory")."""

    def __init__(self, *, prefix: str = "clasp:") -> None:
        self.prefix = prefix

    # --- lifecycle and status ----------------------------------------------------------

    @property
    def url(self) -> str:
        """Where the state lives, without secrets (a URL or a path; "" for memory)."""
        return ""

    @property
    def describe(self) -> str:
        """For status pages: ``memory``, ``redis (redis://host:6379/0)``, ``sqlite (/path)``."""
        return f"{self.kind} ({self.url})" if self.url else self.kind

    @property
    def outage(self) -> bool:
        """True from a failure until the next successful call (always False for memory)."""
        return False

    async def open(self) -> None:  # noqa: B027 (optional for backends that need nothing)
        """Connect or create the store; idempotent. A shared backend that cannot be
        reached logs the outage once and serves on (calls raise StateUnavailable)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and threads; later calls raise StateUnavailable."""

    # --- values ------------------------------------------------------------------------

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None when absent or expired."""

    @abstractmethod
    async def set(
        self, key: str, value: bytes | str, *, ttl: float | None = None, if_absent: bool = False,
        scopes: Sequence[str] = (),
    ) -> bool:
        """Store ``value`` (``ttl`` seconds, None: no expiry). ``if_absent``: only if the
        key does not exist (a lease); returns whether it was stored. ``scopes``: scope
        names this key belongs to, so ``delete_scope`` can remove it later (a scope
        lives as long as its longest-lived key)."""

    @abstractmethod
    async def delete(self, *keys: str) -> int:
        """Delete ``keys``; returns how many existed."""

    @abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix`` (within this backend's prefix).
        On Redis this SCANs the keyspace: use scopes for anything frequent."""

    @abstractmethod
    async def delete_scope(self, scope: str) -> int:
        """Delete every key stored with ``scopes=[scope]``; returns how many existed."""

    # --- counters and limits (built on :meth:`run`: one implementation per operation) ---

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Add ``amount`` to an integer counter (absent: 0) and return the new value.
        ``ttl`` applies when the counter is created: a fixed window that starts at
        its first increment."""
        from .ops import INCR

        return await self.run(INCR, [key], [amount, _ms(ttl)])

    async def add_within(self, key: str, amount: float, limit: float | None, *, ttl: float | None = None) -> Reservation:
        """Atomically add ``amount`` to a total if it stays ``<= limit``.

        For budget reservations (reserve an upper bound, settle the difference later)
        and concurrency slots (+1 on entry, -1 on exit). A negative ``amount`` (a
        release) and ``limit=None`` (settling a cost that was already spent) always
        apply. The total never goes below 0 (a release after the reservation expired
        must not create credit), and a total of 0 is deleted. ``ttl``: the total
        expires that long after its last change, so slots a crashed process held are
        freed eventually.
        """
        from .ops import ADD_WITHIN

        lim = -1.0 if limit is None else float(limit)
        if limit is not None and (math.isnan(lim) or lim < 0):
            raise ValueError(f"limit must be a non-negative number or None, got {limit!r}")
        return await self.run(ADD_WITHIN, [key], [float(amount), lim, _ms(ttl)])

    async def hit(self, key: str, limit: float, window: float, *, cost: float = 1.0) -> RateWindow:
        """Count a hit against a sliding-window rate limit of ``limit`` per ``window`` seconds.

        The window is the usual two-bucket approximation (the previous fixed window's
        count weighted by how much of it still overlaps, plus the current one): O(1)
        state per key, no burst of 2x at a window boundary. A refused hit counts
        nothing and says when the same hit would fit (``retry_after``); one costing
        more than ``limit`` never fits (``retry_after`` is then ``window``).
        """
        from .ops import HIT

        if window <= 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        return await self.run(HIT, [key], [float(limit), float(window), float(cost)])

    @abstractmethod
    async def run(self, script: Script[T], keys: Sequence[str], args: Sequence[ScriptArg] = ()) -> T:
        """Run ``script`` atomically on ``keys`` (this backend's prefix is added)."""

    # --- pub/sub -----------------------------------------------------------------------

    @abstractmethod
    async def publish(self, channel: str, message: bytes | str) -> None:
        """Send ``message`` to every subscriber of ``channel`` in every process sharing
        this state (this one included). At most once: a subscriber that is not
        listening at that moment misses it, so use it for invalidations, not data."""

    @abstractmethod
    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        """Call ``handler(payload)`` for each message published on ``channel``."""

    @abstractmethod
    async def unsubscribe(self, subscription: Subscription) -> None:
        """Stop a subscription (what :meth:`Subscription.close` calls)."""


def _ms(ttl: float | None) -> int:
    """A TTL as whole milliseconds for scripts (0: none)."""
    if ttl is None:
        return 0
    if ttl <= 0 or math.isnan(ttl):
        raise ValueError(f"ttl must be > 0 seconds or None, got {ttl!r}")
    return max(1, math.ceil(ttl * 1000))


# --- choosing a backend ------------------------------------------------------------------


def embedded_path(directory: str | None = None) -> str:
    """A fresh SQLite path for one ``clasp serve`` run (tmpfs when the machine has one:
    the state is ephemeral, so it never needs the disk)."""
    if directory is None:
        shm = Path("/dev/shm")
        directory = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else tempfile.gettempdir()
    return os.path.join(directory, f"clasp-state-{os.getpid()}.sqlite3")


def create_state(settings: StateSettings, *, clock: Callable[[], float] | None = None) -> StateBackend:
    """A backend for ``settings`` (no I/O yet: ``open()`` connects)."""
    if settings.backend == "redis":
        from .redis import RedisState

        assert settings.url is not None and settings.url.value
        return RedisState(settings.url.value, prefix=settings.prefix, timeout=settings.timeout)
    if settings.backend == "sqlite":
        from .sqlite import SqliteState

        path = settings.path or os.environ.get(EMBEDDED_PATH_ENV)
        # A file of our own choosing is ours to remove; a configured or inherited one is not.
        return SqliteState(path or embedded_path(), prefix=settings.prefix, timeout=settings.timeout,
                           remove_on_close=path is None, **({"clock": clock} if clock is not None else {}))
    from .memory import MemoryState

    return MemoryState(prefix=settings.prefix, **({"clock": clock} if clock is not None else {}))


def state_from_config(config: Config) -> StateBackend:
    """The gateway's backend: ``state:`` when configured; otherwise the SQLite file
    ``clasp serve --workers N`` prepared for its workers (or one of our own when
    ``server.workers`` > 1), else memory. Raises ConfigError for a bad section."""
    settings = parse_state_settings(config)
    if not settings.configured:
        embedded = os.environ.get(EMBEDDED_PATH_ENV)
        if embedded or config.server.workers > 1:
            settings = StateSettings(backend="sqlite", path=embedded or None, prefix=settings.prefix,
                                     timeout=settings.timeout, configured=False)
    return create_state(settings)


def workers_state_problems(config: Config, workers: int) -> list[str]:
    """Why ``config`` cannot be served by ``workers`` processes: the memory backend,
    chosen explicitly, would give each worker its own breakers, limits, budget
    reservations and caches, so answers would depend on which worker took the
    connection. Refused at ``clasp serve`` with this message (no ``state:`` section
    is fine: the workers then share a SQLite file, :func:`workers_share_state`)."""
    settings = parse_state_settings(config)
    if workers > 1 and settings.configured and settings.backend == "memory":
        return [f"state.backend: memory keeps breakers, rate limits, budget reservations and caches inside one "
                f"process, so {workers} workers would each have their own and disagree: remove state: (the "
                f"workers then share a SQLite file), or use backend sqlite or redis"]
    return []


@contextmanager
def workers_share_state(config: Config, workers: int) -> Iterator[str | None]:
    """Around ``uvicorn.run(..., workers=N)``: without a ``state:`` section, give the
    workers one fresh SQLite file (through the environment they inherit) and remove it
    when they are gone. Yields the path, or None when ``state:`` is configured."""
    settings = parse_state_settings(config)
    if settings.configured:
        problems = workers_state_problems(config, workers)
        if problems:
            from ..config import ConfigError

            raise ConfigError(config.source, problems)
        yield None
        return
    path = embedded_path()
    _remove_sqlite(path)
    previous = os.environ.get(EMBEDDED_PATH_ENV)
    os.environ[EMBEDDED_PATH_ENV] = path
    log.info("%d workers share state in %s (SQLite; configure state: for Redis)", workers, path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(EMBEDDED_PATH_ENV, None)
        else:
            os.environ[EMBEDDED_PATH_ENV] = previous
        _remove_sqlite(path)


def _remove_sqlite(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass


__all__ = [
    "BACKENDS", "EMBEDDED_PATH_ENV", "Handler", "RateWindow", "Reservation", "Script", "ScriptArg", "ScriptTx",
    "StateBackend", "StateSettings", "StateUnavailable", "Subscription", "create_state", "embedded_path",
    "parse_state_settings", "safe_url", "state_from_config", "state_problems", "workers_share_state",
    "workers_state_problems",
]

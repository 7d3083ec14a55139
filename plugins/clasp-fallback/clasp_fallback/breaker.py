"""Circuit breakers per deployment: closed → open → half-open (one probe) → closed.

* **closed**: requests flow. It opens after ``failures`` consecutive failures, or when
  ``error_rate`` of the requests seen in the last ``window`` failed (with at least
  ``min_requests`` of them; counts decay exponentially with the window).
* **open**: requests skip the deployment for ``cooldown`` seconds (doubling after
  each failed probe, up to ``max_cooldown``).
* **half-open**: ONE request (the probe) may go through; the others still skip. Its
  success closes the breaker, its failure opens it again. A probe that never reports
  (the request died) frees the slot after ``probe_timeout``.

Health checks feed the same state (:meth:`BreakerStore.report_check`): a failed check
counts as a failure and keeps an open breaker open; a successful real completion
("call" method) after the cooldown closes it.

Two stores share one semantics: :class:`MemoryBreakers` (this process, a plain object
with an injectable clock) and :class:`SharedBreakers`, which keeps the state in the
gateway's state backend (``gateway.state``: memory, SQLite shared by the workers, or
Redis shared by every replica). Each transition there is one atomic
:class:`~clasp_gateway.Script`: the Lua below for Redis, the Python functions of this
module for memory and SQLite. While a shared backend is unavailable, the local
:class:`MemoryBreakers` (kept warm meanwhile) answers. The tests run the same scenarios
against every store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import orjson

from clasp_gateway import Script, ScriptTx, StateBackend, StateUnavailable

from .settings import BreakerSettings

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

TRUST_CLOSED_FOR = 0.1
"""Seconds a closed breaker, as last read from shared state, lets requests through
without asking the store again; also the longest a success on a closed breaker waits
before it is written (successes are coalesced into one write). A closed breaker never
changes by itself (only failures open it), so this bounds how late this process notices
another's failures, and how late others count this one's successes. Failures, probes
and status reads are never delayed: pending successes are written first. It saves the
shared store (a thread handoff for SQLite, a round trip for Redis) on nearly every
request (``bench/state_bench.py``, ``bench/run_bench.py --b-config``)."""


@dataclass(slots=True, frozen=True)
class Ticket:
    """The answer to "may a request go to this deployment now?"."""

    allowed: bool
    probe: bool = False
    """This request is the half-open probe: its outcome decides the breaker's state."""
    state: str = CLOSED


@dataclass(slots=True, frozen=True)
class BreakerView:
    """A deployment's breaker, as status pages and routing strategies see it."""

    state: str = CLOSED
    consecutive_failures: int = 0
    recent_requests: float = 0.0
    recent_errors: float = 0.0
    reopens_in: float = 0.0
    """Seconds until an open breaker lets a probe through (0 when closed or due)."""
    trips: int = 0
    reason: str = ""

    @property
    def recent_error_rate(self) -> float | None:
        return self.recent_errors / self.recent_requests if self.recent_requests >= 1 else None

    @property
    def healthy(self) -> bool:
        return self.state == CLOSED


class BreakerStore(Protocol):
    """Where breaker state lives. Every method is safe to call concurrently."""

    @property
    def describe(self) -> str:
        """Where the state lives, for the status page ("memory", "redis (...)")."""
        ...

    async def acquire(self, key: str) -> Ticket: ...

    async def report(self, key: str, ok: bool, *, probe: bool, rest_for: float = 0.0) -> BreakerView: ...

    async def report_check(self, key: str, ok: bool, *, conclusive: bool) -> BreakerView: ...

    async def view(self, key: str) -> BreakerView: ...

    def peek(self, key: str) -> BreakerView:
        """The last known state, without I/O (routing order; may lag other replicas)."""
        ...

    async def close(self) -> None: ...


# --- the state machine (the Lua script below is its exact mirror) ----------------------------


@dataclass(slots=True)
class Circuit:
    """One deployment's breaker state; times are seconds on the store's clock."""

    state: str = CLOSED
    failures: int = 0
    requests: float = 0.0
    errors: float = 0.0
    updated: float = 0.0
    open_until: float = 0.0
    probe_until: float = 0.0
    trips: int = 0
    reason: str = ""

    def view(self, now: float) -> BreakerView:
        return BreakerView(
            state=self.state,
            consecutive_failures=self.failures,
            recent_requests=self.requests,
            recent_errors=self.errors,
            reopens_in=max(0.0, self.open_until - now) if self.state == OPEN else 0.0,
            trips=self.trips,
            reason=self.reason,
        )


def _cooldown(policy: BreakerSettings, trips: int) -> float:
    return float(min(policy.max_cooldown, policy.cooldown * 2 ** max(0, trips - 1)))


def _trip(c: Circuit, policy: BreakerSettings, now: float, reason: str) -> None:
    c.trips += 1
    c.state = OPEN
    c.open_until = now + _cooldown(policy, c.trips)
    c.probe_until = 0.0
    c.reason = reason


def _close(c: Circuit) -> None:
    c.state, c.failures, c.trips, c.reason = CLOSED, 0, 0, ""
    c.requests = c.errors = c.probe_until = 0.0


def _count(c: Circuit, policy: BreakerSettings, now: float, ok: bool) -> None:
    if c.updated > 0:
        decay = math.exp(-max(0.0, now - c.updated) / policy.window)
        c.requests *= decay
        c.errors *= decay
    c.requests += 1
    if not ok:
        c.errors += 1
    c.updated = now


def _closed_failure(c: Circuit, policy: BreakerSettings, now: float) -> None:
    if c.failures >= policy.failures:
        _trip(c, policy, now, f"{c.failures} consecutive failures")
    elif policy.error_rate and c.requests >= policy.min_requests and c.errors / c.requests >= policy.error_rate:
        _trip(c, policy, now, f"{100 * c.errors / c.requests:.0f}% of ~{c.requests:.0f} recent requests failed")


def acquire(c: Circuit, policy: BreakerSettings, now: float) -> Ticket:
    """May a request go now? Claims the half-open probe slot when it is free."""
    if c.state == OPEN and now >= c.open_until:
        c.state, c.probe_until = HALF_OPEN, 0.0
    if c.state == CLOSED:
        return Ticket(True, False, CLOSED)
    if c.state == HALF_OPEN and c.probe_until <= now:
        c.probe_until = now + policy.probe_timeout
        return Ticket(True, True, HALF_OPEN)
    return Ticket(False, False, c.state)


def report(c: Circuit, policy: BreakerSettings, now: float, ok: bool, probe: bool, rest_for: float) -> None:
    """An attempt ended. ``rest_for`` > 0 opens the breaker for that long (a long retry-after)."""
    _count(c, policy, now, ok)
    c.failures = 0 if ok else c.failures + 1
    if c.state == HALF_OPEN and probe:
        if ok:
            _close(c)
        else:
            _trip(c, policy, now, "the half-open probe failed")
    elif c.state == CLOSED and not ok:
        _closed_failure(c, policy, now)
    if rest_for > 0:
        rest = min(rest_for, policy.max_cooldown)
        if c.state != OPEN:
            c.state, c.probe_until = OPEN, 0.0
            c.trips = max(c.trips, 1)
        if now + rest > c.open_until:
            c.open_until = now + rest
            c.reason = f"rate limited: the provider asked to wait {rest_for:.0f}s"


def report_check(c: Circuit, policy: BreakerSettings, now: float, ok: bool, conclusive: bool) -> None:
    """An active health check ended; ``conclusive`` when it was a real completion."""
    if ok:
        if not conclusive:
            return
        if c.state == CLOSED:
            c.failures = 0
        elif c.state == HALF_OPEN or now >= c.open_until:
            _close(c)
        return
    c.failures += 1
    if c.state == CLOSED:
        _count(c, policy, now, False)
        _closed_failure(c, policy, now)
    elif c.state == HALF_OPEN:
        _trip(c, policy, now, "a health check failed while half-open")
    else:
        # Known dead: do not let a user's request be the probe that finds out again.
        c.open_until = max(c.open_until, now + _cooldown(policy, c.trips))


# --- in memory -------------------------------------------------------------------------------


@dataclass(slots=True)
class MemoryBreakers:
    """Breaker state in this process (one event loop: no locks needed, no awaits inside)."""

    policy: BreakerSettings
    clock: Callable[[], float] = time.monotonic
    circuits: dict[str, Circuit] = field(default_factory=dict)

    @property
    def describe(self) -> str:
        return "memory"

    def _circuit(self, key: str) -> Circuit:
        circuit = self.circuits.get(key)
        if circuit is None:
            circuit = self.circuits[key] = Circuit()
        return circuit

    async def acquire(self, key: str) -> Ticket:
        return acquire(self._circuit(key), self.policy, self.clock())

    async def report(self, key: str, ok: bool, *, probe: bool, rest_for: float = 0.0) -> BreakerView:
        c = self._circuit(key)
        now = self.clock()
        report(c, self.policy, now, ok, probe, rest_for)
        return c.view(now)

    async def report_check(self, key: str, ok: bool, *, conclusive: bool) -> BreakerView:
        c = self._circuit(key)
        now = self.clock()
        report_check(c, self.policy, now, ok, conclusive)
        return c.view(now)

    async def view(self, key: str) -> BreakerView:
        return self.peek(key)

    def peek(self, key: str) -> BreakerView:
        c = self.circuits.get(key)
        return c.view(self.clock()) if c is not None else BreakerView()

    async def close(self) -> None:
        return None


# --- in the gateway's state backend -------------------------------------------------------

# The Redis twin of :func:`_transition`. KEYS[1]: the circuit hash. ARGV: op ("acquire" |
# "report" | "check" | "view"), ok, probe, rest_for, failures, error_rate (0 = off),
# min_requests, window, cooldown, max_cooldown, probe_timeout, ttl_ms, conclusive, times
# (a report of that many outcomes: coalesced successes).
# Returns the state fields as strings (Lua numbers would be truncated to integers),
# then allowed and probe.
_LUA = """
local key = KEYS[1]
local op = ARGV[1]
local ok = ARGV[2] == '1'
local probe = ARGV[3] == '1'
local rest_for = tonumber(ARGV[4])
local threshold = tonumber(ARGV[5])
local rate = tonumber(ARGV[6])
local min_requests = tonumber(ARGV[7])
local window = tonumber(ARGV[8])
local cooldown = tonumber(ARGV[9])
local max_cooldown = tonumber(ARGV[10])
local probe_timeout = tonumber(ARGV[11])
local ttl_ms = tonumber(ARGV[12])
local conclusive = ARGV[13] == '1'
local times = tonumber(ARGV[14]) or 1

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local c = {state='closed', failures=0, requests=0, errors=0, updated=0, open_until=0,
           probe_until=0, trips=0, reason=''}
local raw = redis.call('HGETALL', key)
for i = 1, #raw, 2 do
  local k, v = raw[i], raw[i + 1]
  if k == 'state' or k == 'reason' then c[k] = v else c[k] = tonumber(v) or 0 end
end
local changed = false
local allowed, is_probe = 0, 0

local function cooldown_for(trips)
  return math.min(max_cooldown, cooldown * 2 ^ math.max(0, trips - 1))
end
local function trip(reason)
  c.trips = c.trips + 1
  c.state = 'open'
  c.open_until = now + cooldown_for(c.trips)
  c.probe_until = 0
  c.reason = reason
end
local function close()
  c.state = 'closed'; c.failures = 0; c.trips = 0; c.reason = ''
  c.requests = 0; c.errors = 0; c.probe_until = 0
end
local function count(success)
  if c.updated > 0 then
    local decay = math.exp(-math.max(0, now - c.updated) / window)
    c.requests = c.requests * decay
    c.errors = c.errors * decay
  end
  c.requests = c.requests + 1
  if not success then c.errors = c.errors + 1 end
  c.updated = now
end
local function closed_failure()
  if c.failures >= threshold then
    trip(c.failures .. ' consecutive failures')
  elseif rate > 0 and c.requests >= min_requests and c.errors / c.requests >= rate then
    trip(string.format('%.0f%% of ~%.0f recent requests failed', 100 * c.errors / c.requests, c.requests))
  end
end

if op == 'acquire' then
  if c.state == 'open' and now >= c.open_until then
    c.state = 'half_open'; c.probe_until = 0; changed = true
  end
  if c.state == 'closed' then
    allowed = 1
  elseif c.state == 'half_open' and c.probe_until <= now then
    c.probe_until = now + probe_timeout; allowed = 1; is_probe = 1; changed = true
  end
elseif op == 'report' then
  changed = true
  for i = 1, times do count(ok) end
  if ok then c.failures = 0 else c.failures = c.failures + 1 end
  if c.state == 'half_open' and probe then
    if ok then close() else trip('the half-open probe failed') end
  elseif c.state == 'closed' and not ok then
    closed_failure()
  end
  if rest_for > 0 then
    local rest = math.min(rest_for, max_cooldown)
    if c.state ~= 'open' then
      c.state = 'open'; c.probe_until = 0; c.trips = math.max(c.trips, 1)
    end
    if now + rest > c.open_until then
      c.open_until = now + rest
      c.reason = string.format('rate limited: the provider asked to wait %.0fs', rest_for)
    end
  end
elseif op == 'check' then
  if ok then
    if conclusive then
      changed = true
      if c.state == 'closed' then
        c.failures = 0
      elseif c.state == 'half_open' or now >= c.open_until then
        close()
      end
    end
  else
    changed = true
    c.failures = c.failures + 1
    if c.state == 'closed' then
      count(false)
      closed_failure()
    elseif c.state == 'half_open' then
      trip('a health check failed while half-open')
    else
      c.open_until = math.max(c.open_until, now + cooldown_for(c.trips))
    end
  end
end

if changed then
  redis.call('HSET', key, 'state', c.state, 'failures', c.failures, 'requests', tostring(c.requests),
    'errors', tostring(c.errors), 'updated', tostring(c.updated), 'open_until', tostring(c.open_until),
    'probe_until', tostring(c.probe_until), 'trips', c.trips, 'reason', c.reason)
  redis.call('PEXPIRE', key, ttl_ms)
end
local reopens_in = 0
if c.state == 'open' then reopens_in = math.max(0, c.open_until - now) end
return {c.state, tostring(c.failures), tostring(c.requests), tostring(c.errors), tostring(reopens_in),
        tostring(c.trips), c.reason, tostring(allowed), tostring(is_probe)}
"""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_FIELDS = tuple(f.name for f in dataclasses.fields(Circuit))


def _transition(policy: BreakerSettings, tx: ScriptTx, keys: list[str], args: Sequence[Any]) -> tuple[BreakerView, Ticket]:
    """The Python twin of :data:`_LUA` (memory and SQLite backends): the same state
    machine, the circuit stored as a JSON list, written back when it changed (the same
    rule as the Lua: a report always, a check unless it proved nothing, an acquire when
    it moved the state or claimed the probe)."""
    key, op = keys[0], args[0]
    raw = tx.get(key)
    c = Circuit(*orjson.loads(raw)) if raw else Circuit()
    now = tx.now()
    if op == "acquire":
        state, probe_until = c.state, c.probe_until
        ticket = acquire(c, policy, now)
        changed = c.state != state or c.probe_until != probe_until
    else:
        if op == "report":
            for _ in range(int(args[13])):
                report(c, policy, now, args[1] == "1", args[2] == "1", float(args[3]))
            changed = True
        elif op == "check":
            ok, conclusive = args[1] == "1", args[12] == "1"
            report_check(c, policy, now, ok, conclusive)
            changed = conclusive or not ok
        else:
            changed = False
        ticket = Ticket(False, False, c.state)
    if changed:
        tx.set(key, orjson.dumps([getattr(c, name) for name in _FIELDS]), ttl=policy.key_ttl)
    return c.view(now), ticket


def _decode(reply: Any) -> tuple[BreakerView, Ticket]:
    f = [_text(v) for v in reply]
    view = BreakerView(
        state=f[0], consecutive_failures=int(float(f[1])), recent_requests=float(f[2]),
        recent_errors=float(f[3]), reopens_in=float(f[4]), trips=int(float(f[5])), reason=f[6],
    )
    return view, Ticket(f[7] == "1", f[8] == "1", view.state)


class SharedBreakers:
    """Breaker state in a :class:`~clasp_gateway.StateBackend`, under ``namespace``.

    Keys are ``{state prefix}{namespace}breaker:{deployment id}`` with a TTL, so
    deployments removed from the config leave nothing behind. With a shared backend
    every transition is atomic across processes, and Redis takes the time from
    itself, so replicas with skewed clocks still agree on cooldowns. While a shared
    backend is unavailable the local :class:`MemoryBreakers` answers; it learns from
    every outcome meanwhile, so it is warm when needed.
    """

    def __init__(self, policy: BreakerSettings, state: StateBackend, namespace: str = "fallback:", *,
                 trust_closed_for: float = TRUST_CLOSED_FOR, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.state = state
        self.trust_closed_for = trust_closed_for
        self.clock = clock
        """Times the trust in a closed breaker (the state machine's time is the store's)."""
        self.local = MemoryBreakers(policy)
        self._feed_local = state.shared
        # One Script per policy: the Python twin closes over it (no parsing per call);
        # Redis gets the policy as arguments and caches one SHA for every policy.
        self._script: Script[tuple[BreakerView, Ticket]] = Script(
            name="clasp-fallback.breaker", lua=_LUA, python=partial(_transition, policy), decode=_decode)
        self._mirror: dict[str, BreakerView] = {}
        self._read_at: dict[str, float] = {}
        self._pending: dict[str, int] = {}
        """Successes on a closed breaker not written yet (shared backends only)."""
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._flushes: set[asyncio.Task[None]] = set()
        self._prefix = namespace + "breaker:"
        self._static = [
            str(policy.failures), repr(policy.error_rate or 0), str(policy.min_requests), repr(policy.window),
            repr(policy.cooldown), repr(policy.max_cooldown), repr(policy.probe_timeout),
            str(int(policy.key_ttl * 1000)),
        ]

    @property
    def describe(self) -> str:
        if self.state.outage:
            return f"memory ({self.state.label} at {self.state.url} unreachable)"
        return self.state.describe

    async def _run(self, key: str, op: str, ok: bool = False, probe: bool = False,
                   rest_for: float = 0.0, conclusive: bool = False, times: int = 1) -> tuple[BreakerView, Ticket] | None:
        args = [op, "1" if ok else "0", "1" if probe else "0", repr(rest_for), *self._static, "1" if conclusive else "0",
                str(times)]
        try:
            result = await self.state.run(self._script, [self._prefix + key], args)
        except StateUnavailable:
            return None
        self._mirror[key] = result[0]
        self._read_at[key] = self.clock()
        return result

    async def acquire(self, key: str) -> Ticket:
        known = self._mirror.get(key)
        if known is not None and known.state == CLOSED and not self.state.outage and (
            not self.state.shared or self.clock() - self._read_at[key] < self.trust_closed_for
        ):
            return Ticket(True, False, CLOSED)  # only this process changes unshared state
        result = await self._run(key, "acquire")
        return result[1] if result else await self.local.acquire(key)

    async def report(self, key: str, ok: bool, *, probe: bool, rest_for: float = 0.0) -> BreakerView:
        local = await self.local.report(key, ok, probe=probe, rest_for=rest_for) if self._feed_local else None
        known = self._mirror.get(key)
        if ok and not probe and rest_for <= 0 and self._feed_local and known is not None and known.state == CLOSED \
                and not self.state.outage:
            return self._defer_success(key, known)
        await self._flush(key)
        result = await self._run(key, "report", ok, probe, rest_for)
        if result:
            return result[0]
        return local or await self.local.report(key, ok, probe=probe, rest_for=rest_for)

    def _defer_success(self, key: str, known: BreakerView) -> BreakerView:
        """Count a success now, write it within ``trust_closed_for`` (with the others)."""
        self._pending[key] = self._pending.get(key, 0) + 1
        if key not in self._timers:
            loop = asyncio.get_running_loop()
            self._timers[key] = loop.call_later(self.trust_closed_for, self._flush_later, key)
        view = dataclasses.replace(known, consecutive_failures=0)
        self._mirror[key] = view
        return view

    def _flush_later(self, key: str) -> None:
        task = asyncio.get_running_loop().create_task(self._flush(key))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, key: str) -> None:
        """Write ``key``'s pending successes (before anything that must see them)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        times = self._pending.pop(key, 0)
        if times:
            await self._run(key, "report", True, times=times)  # in an outage: the local state has them

    async def flush(self) -> None:
        """Write every pending success now (status pages, shutdown, tests)."""
        for key in list(self._pending):
            await self._flush(key)

    async def report_check(self, key: str, ok: bool, *, conclusive: bool) -> BreakerView:
        local = await self.local.report_check(key, ok, conclusive=conclusive) if self._feed_local else None
        await self._flush(key)
        result = await self._run(key, "check", ok, conclusive=conclusive)
        if result:
            return result[0]
        return local or await self.local.report_check(key, ok, conclusive=conclusive)

    async def view(self, key: str) -> BreakerView:
        await self._flush(key)
        result = await self._run(key, "view")
        return result[0] if result else self.local.peek(key)

    def peek(self, key: str) -> BreakerView:
        if self.state.outage:
            return self.local.peek(key)
        return self._mirror.get(key) or BreakerView()

    async def close(self) -> None:
        """Write pending successes (the state backend belongs to whoever opened it)."""
        await self.flush()

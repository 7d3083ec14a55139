"""Per-deployment limits for providers that send no rate-limit headers.

A deployment's ``limits:`` in clasp.yaml (``rpm``, ``tpm``, ``rpd``,
``max_concurrency``) are counted in the gateway's state backend (``gateway.state``:
memory, SQLite or Redis), so every replica sees the same counts. One atomic
:class:`~clasp_gateway.Script` per attempt (:data:`LIMITS`) checks every limit and,
only if all of them have room, counts the request: a refused attempt counts nothing,
and the attempt loop moves to the next candidate before the provider would answer
429. Minute and day windows are the two-bucket sliding windows of the core's
``hit``; concurrency is a count of attempts in flight that expires (``slot_ttl``) if
a replica dies holding slots. When an attempt ends, its slot is released and the
tokens it was counted for (an estimate of its input) are replaced by what it used.

A state outage fails open (the provider's own 429 still protects it), logged once by
the backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clasp_gateway import (
    WINDOW_LUA,
    Deployment,
    Script,
    ScriptTx,
    StateBackend,
    StateUnavailable,
    store_window,
    window_counts,
)

WINDOWS = (("rpm", 60.0), ("tpm", 60.0), ("rpd", 86400.0))
"""The windowed limits and their lengths in seconds."""
SLOT_TTL = 960.0
"""Seconds a concurrency count lives after its last change (a total timeout's worth:
slots a crashed replica held come back)."""


@dataclass(slots=True, frozen=True)
class Limits:
    """One deployment's limits (``None``: not limited)."""

    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    max_concurrency: int | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.rpd, self.max_concurrency))


def limits_of(deployment: Deployment) -> Limits | None:
    """``deployment``'s ``limits:`` (validated by the core's schema), or ``None``."""
    raw = deployment.settings.get("limits")
    if not isinstance(raw, dict):
        return None
    limits = Limits(raw.get("rpm"), raw.get("tpm"), raw.get("rpd"), raw.get("max_concurrency"))
    return limits if limits.any else None


@dataclass(slots=True, frozen=True)
class Verdict:
    """The answer of an acquire (or a peek: ``ok`` then says whether one more fits)."""

    ok: bool
    retry_after: float
    """Seconds until the refused limit has room (0 when ok)."""
    reason: str
    """The limit that refused (``rpm``, ``tpm``, ``rpd``, ``max_concurrency``), "" if ok."""
    headroom: float
    """The smallest share left of any limit, after this request if it was counted (0..1)."""


def _fits(value: float, limit: float) -> bool:
    return value - limit <= 1e-9 * max(1.0, abs(limit))


def _window(tx: ScriptTx, key: str, now: float, length: float) -> tuple[int, float, float, float]:
    """(window number, current count, previous count, fraction elapsed): the core's
    sliding window (``window_counts``, the shape ``hit`` keeps too)."""
    w = math.floor(now / length)
    cur, prev = window_counts(tx, key, w)
    return w, cur, prev, (now - w * length) / length


def _limits_script(tx: ScriptTx, keys: list[str], args: Sequence[Any]) -> Verdict:
    """KEYS: rpm, tpm, rpd, concurrency. ARGV: op (acquire | release | peek), the four
    limits (0: none), tokens (acquire: counted; release: the correction, may be < 0),
    slot ttl in ms."""
    op = str(args[0])
    limits = [float(args[1]), float(args[2]), float(args[3])]
    conc_limit, tokens, slot_ms = float(args[4]), float(args[5]), int(args[6])
    now = tx.now()
    costs = [1.0, tokens, 1.0]
    state = []
    headroom = 1.0
    refused: tuple[float, str] | None = None
    for i, (name, length) in enumerate(WINDOWS):
        w, cur, prev, f = _window(tx, keys[i], now, length)
        state.append((w, cur, prev))
        if limits[i] <= 0:
            continue
        estimate = prev * (1 - f) + cur
        cost = costs[i] if op == "acquire" else (costs[i] if op == "peek" and i != 1 else 0.0)
        if op in ("acquire", "peek") and not _fits(estimate + cost, limits[i]):
            if not _fits(cost, limits[i]):
                wait = length
            elif _fits(cur + cost, limits[i]) and prev > 0:
                wait = (estimate + cost - limits[i]) * length / prev
            else:
                wait = (1 - f) * length + max(0.0, 1 - (limits[i] - cost) / max(cur, 1e-9)) * length
            if refused is None or wait > refused[0]:
                refused = (wait, name)
        headroom = min(headroom, max(0.0, 1 - (estimate + (cost if op == "acquire" else 0.0)) / limits[i]))
    raw = tx.get(keys[3])
    inflight = float(raw) if raw is not None else 0.0
    if conc_limit > 0:
        if op in ("acquire", "peek") and not _fits(inflight + 1, conc_limit):
            if refused is None:
                refused = (1.0, "max_concurrency")
        headroom = min(headroom, max(0.0, 1 - (inflight + (1 if op == "acquire" else 0)) / conc_limit))
    if op == "peek":
        return Verdict(refused is None, refused[0] if refused else 0.0, refused[1] if refused else "", headroom)
    if op == "acquire" and refused is not None:
        return Verdict(False, refused[0], refused[1], headroom)
    for i, (_name, length) in enumerate(WINDOWS):
        if limits[i] <= 0:
            continue
        w, cur, prev = state[i]
        delta = costs[i] if op == "acquire" else (tokens if i == 1 else 0.0)
        if delta:
            store_window(tx, keys[i], w, max(0.0, cur + delta), prev, length)
    if conc_limit > 0:
        inflight = inflight + 1 if op == "acquire" else max(0.0, inflight - 1)
        if inflight > 0:
            tx.set(keys[3], repr(inflight), ttl=slot_ms / 1000)
        else:
            tx.delete(keys[3])
    return Verdict(True, 0.0, "", headroom)


def _decode(reply: Any) -> Verdict:
    reason = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
    return Verdict(bool(int(reply[0])), float(reply[1]), reason, float(reply[3]))


_LUA = WINDOW_LUA + """
local op = ARGV[1]
local limits = {tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])}
local conc_limit = tonumber(ARGV[5])
local tokens = tonumber(ARGV[6])
local slot_ms = tonumber(ARGV[7])
local lengths = {60, 60, 86400}
local names = {'rpm', 'tpm', 'rpd'}
local costs = {1, tokens, 1}
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function fits(value, limit)
  return value - limit <= 1e-9 * math.max(1, math.abs(limit))
end
local state = {}
local headroom = 1.0
local wait_r, reason_r = nil, nil
for i = 1, 3 do
  local length = lengths[i]
  local w, cur, prev = window_counts(KEYS[i], length, now)
  local f = (now - w * length) / length
  state[i] = {w, cur, prev}
  if limits[i] > 0 then
    local estimate = prev * (1 - f) + cur
    local cost = 0
    if op == 'acquire' or (op == 'peek' and i ~= 2) then cost = costs[i] end
    if (op == 'acquire' or op == 'peek') and not fits(estimate + cost, limits[i]) then
      local wait
      if not fits(cost, limits[i]) then
        wait = length
      elseif fits(cur + cost, limits[i]) and prev > 0 then
        wait = (estimate + cost - limits[i]) * length / prev
      else
        wait = (1 - f) * length + math.max(0, 1 - (limits[i] - cost) / math.max(cur, 1e-9)) * length
      end
      if wait_r == nil or wait > wait_r then wait_r = wait; reason_r = names[i] end
    end
    local counted = 0
    if op == 'acquire' then counted = cost end
    headroom = math.min(headroom, math.max(0, 1 - (estimate + counted) / limits[i]))
  end
end
local inflight = tonumber(redis.call('GET', KEYS[4]) or '0')
if conc_limit > 0 then
  if (op == 'acquire' or op == 'peek') and not fits(inflight + 1, conc_limit) then
    if wait_r == nil then wait_r = 1; reason_r = 'max_concurrency' end
  end
  local add = 0
  if op == 'acquire' then add = 1 end
  headroom = math.min(headroom, math.max(0, 1 - (inflight + add) / conc_limit))
end
local h = string.format('%.17g', headroom)
if op == 'peek' then
  if wait_r == nil then return {1, '0', '', h} end
  return {0, string.format('%.17g', wait_r), reason_r, h}
end
if op == 'acquire' and wait_r ~= nil then
  return {0, string.format('%.17g', wait_r), reason_r, h}
end
for i = 1, 3 do
  if limits[i] > 0 then
    local delta = 0
    if op == 'acquire' then delta = costs[i] elseif i == 2 then delta = tokens end
    if delta ~= 0 then
      local s = state[i]
      store_window(KEYS[i], s[1], math.max(0, s[2] + delta), s[3], lengths[i])
    end
  end
end
if conc_limit > 0 then
  if op == 'acquire' then inflight = inflight + 1 else inflight = math.max(0, inflight - 1) end
  if inflight > 0 then
    redis.call('SET', KEYS[4], string.format('%.17g', inflight), 'PX', slot_ms)
  else
    redis.call('DEL', KEYS[4])
  end
end
return {1, '0', '', h}
"""

LIMITS: Script[Verdict] = Script(name="clasp-fallback.deployment-limits", lua=_LUA, python=_limits_script, decode=_decode)


class DeploymentLimits:
    """Acquire, release and peek at deployments' limits in a state backend."""

    def __init__(self, state: StateBackend, namespace: str, *, slot_ttl: float = SLOT_TTL) -> None:
        self.state = state
        self.prefix = namespace + "limits:"
        self.slot_ms = int(slot_ttl * 1000)
        self.last: dict[str, Verdict] = {}
        """The latest verdict per deployment id (this replica's view: availability, headroom)."""

    def _keys(self, deployment_id: str) -> list[str]:
        base = self.prefix + deployment_id + ":"
        return [base + "rpm", base + "tpm", base + "rpd", base + "inflight"]

    def _args(self, op: str, limits: Limits, tokens: float) -> list[str | int | float]:
        return [op, limits.rpm or 0, limits.tpm or 0, limits.rpd or 0, limits.max_concurrency or 0,
                float(tokens), self.slot_ms]

    async def acquire(self, deployment_id: str, limits: Limits, tokens: float) -> Verdict:
        """Count one request of about ``tokens`` tokens if every limit has room."""
        try:
            verdict = await self.state.run(LIMITS, self._keys(deployment_id), self._args("acquire", limits, tokens))
        except StateUnavailable:
            return Verdict(True, 0.0, "", 1.0)  # fail open: the provider's own 429 still protects it
        self.last[deployment_id] = verdict
        return verdict

    async def release(self, deployment_id: str, limits: Limits, token_correction: float) -> None:
        """An attempt ended: free its concurrency slot, correct its token count."""
        try:
            await self.state.run(LIMITS, self._keys(deployment_id), self._args("release", limits, token_correction))
        except StateUnavailable:
            pass

    async def peek(self, deployment_id: str, limits: Limits) -> Verdict:
        """Whether one more request would fit now, and the headroom (counts nothing)."""
        try:
            verdict = await self.state.run(LIMITS, self._keys(deployment_id), self._args("peek", limits, 0.0))
        except StateUnavailable:
            return Verdict(True, 0.0, "", 1.0)
        self.last[deployment_id] = verdict
        return verdict

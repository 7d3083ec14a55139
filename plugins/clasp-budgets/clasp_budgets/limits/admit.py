"""One atomic admission: every sliding window and concurrency slot of a request in one
script, so a request costs one round trip to Redis whatever the number of limits, and
two replicas can never both take the last unit of two different windows.

All windows and slots are checked first; only when every one fits is anything counted.
The data stays in the shapes of the core's ``hit`` (``"<window> <current> <previous>"``)
and ``add_within`` (a number) in each backend, so releases and token corrections use
those operations on the same keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clasp_gateway import Script, ScriptTx


@dataclass(slots=True, frozen=True)
class Admitted:
    ok: bool
    failed: int
    """Index of the first window (then slot) that did not fit; -1 when ``ok``."""
    retry_after: float
    counts: tuple[float, ...]
    """Each window's sliding estimate after this request (up to the failed one)."""


def _fits(value: float, limit: float) -> bool:
    return value - limit <= 1e-9 * max(1.0, abs(limit))


def _admit(tx: ScriptTx, keys: list[str], args: Sequence[Any]) -> Admitted:
    windows = int(args[0])
    now = tx.now()
    counts: list[float] = []
    updates: list[tuple[str, str, float]] = []
    i = 1
    for k in range(windows):
        limit, window, cost = float(args[i]), float(args[i + 1]), float(args[i + 2])
        i += 3
        w = math.floor(now / window)
        cur = prev = 0.0
        raw = tx.get(keys[k])
        if raw is not None:
            stored, scur, sprev = raw.split()
            if int(stored) == w:
                cur, prev = float(scur), float(sprev)
            elif int(stored) == w - 1:
                prev = float(scur)
        f = (now - w * window) / window
        estimate = prev * (1 - f) + cur
        if not _fits(estimate + cost, limit):
            if not _fits(cost, limit):
                retry = window
            elif _fits(cur + cost, limit):
                retry = (estimate + cost - limit) * window / prev
            else:
                retry = (1 - f) * window + max(0.0, 1 - (limit - cost) / cur) * window
            return Admitted(False, k, retry, (*counts, estimate))
        counts.append(estimate + cost)
        updates.append((keys[k], f"{w} {cur + cost!r} {prev!r}", 2 * window))
    for k in range(windows, len(keys)):
        limit, ttl_ms = float(args[i]), int(args[i + 1])
        i += 2
        raw = tx.get(keys[k])
        total = (float(raw) if raw is not None else 0.0) + 1
        if not _fits(total, limit):
            return Admitted(False, k, 1.0, tuple(counts))
        updates.append((keys[k], repr(total), ttl_ms / 1000))
    for key, value, ttl in updates:
        tx.set(key, value, ttl=ttl)
    return Admitted(True, -1, 0.0, tuple(counts))


def _decode(reply: Any) -> Admitted:
    return Admitted(bool(int(reply[0])), int(reply[1]), float(reply[2]), tuple(float(c) for c in reply[3:]))


ADMIT: Script[Admitted] = Script(
    name="clasp.limits.admit",
    lua="""
local windows = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local counts = {}
local sets = {}
local i = 2
local function fits(value, limit)
  return value - limit <= 1e-9 * math.max(1, math.abs(limit))
end
local function reply(ok, failed, retry)
  local out = {ok, failed, string.format('%.17g', retry)}
  for _, c in ipairs(counts) do table.insert(out, string.format('%.17g', c)) end
  return out
end
for k = 1, windows do
  local limit, window, cost = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  i = i + 3
  local w = math.floor(now / window)
  local cur, prev = 0, 0
  local raw = redis.call('GET', KEYS[k])
  if raw then
    local sw, scur, sprev = string.match(raw, '^(%S+) (%S+) (%S+)$')
    if tonumber(sw) == w then
      cur = tonumber(scur); prev = tonumber(sprev)
    elseif tonumber(sw) == w - 1 then
      prev = tonumber(scur)
    end
  end
  local f = (now - w * window) / window
  local estimate = prev * (1 - f) + cur
  if not fits(estimate + cost, limit) then
    local retry
    if not fits(cost, limit) then
      retry = window
    elseif fits(cur + cost, limit) then
      retry = (estimate + cost - limit) * window / prev
    else
      retry = (1 - f) * window + math.max(0, 1 - (limit - cost) / cur) * window
    end
    table.insert(counts, estimate)
    return reply(0, k - 1, retry)
  end
  table.insert(counts, estimate + cost)
  table.insert(sets, {KEYS[k], string.format('%.0f %.17g %.17g', w, cur + cost, prev), math.ceil(2000 * window)})
end
for k = windows + 1, #KEYS do
  local limit, ttl = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  i = i + 2
  local total = tonumber(redis.call('GET', KEYS[k]) or '0') + 1
  if not fits(total, limit) then
    return reply(0, k - 1, 1)
  end
  table.insert(sets, {KEYS[k], string.format('%.17g', total), ttl})
end
for _, s in ipairs(sets) do
  redis.call('SET', s[1], s[2], 'PX', s[3])
end
return reply(1, -1, 0)
""",
    python=_admit,
    decode=_decode,
)

"""The two state operations of a limited request: one atomic script when it is admitted
(:data:`ADMIT`) and one when it ends (:data:`SETTLE`), so a request costs two round
trips to Redis whatever the number of limits and runaway subjects.

:data:`ADMIT`, in order:

1. runaway pauses: when a subject (its key, its user) is paused until later than the
   caller's ``now``, nothing is counted and the pause comes back;
2. runaway counters: each subject's ``requests`` counter of this minute (the core's
   ``incr``: the TTL starts with the counter), and whether each subject's runaway
   episode flag exists (so a flagged subject already alerted costs no extra operation);
3. every sliding window and concurrency slot of the request: all are checked first, and
   only when every one fits is anything counted, so two replicas can never both take
   the last unit of two different windows. A refusal keeps the runaway count (a
   refused request is still a request).

:data:`SETTLE`: concurrency slots released (the core's ``add_within(key, -1, None)``),
token windows corrected to the real usage (the core's ``hit`` with an unlimited limit:
the tokens were spent), and each subject's ``spend`` counter of this minute (as in
step 2).

The data stays in the shapes of the core's ``hit`` (a sliding window: the core's
:func:`~clasp_gateway.window_counts` and :func:`~clasp_gateway.store_window` in Python,
``"<window> <current> <previous>"`` in Lua), ``add_within`` (a number) and ``incr`` (an
integer) in each backend, so any of those operations reads and writes the same keys.
The Python twins keep numbers and windows as JSON documents (``ScriptTx.get_json``):
on the memory state those are the Python objects themselves, so a request's scripts
parse and format no text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from clasp_gateway import WINDOW_LUA, Script, ScriptTx, store_window, window_counts


class Admitted(NamedTuple):
    """What :data:`ADMIT` answered."""

    ok: bool
    failed: int
    """Index of the first window (then slot) that did not fit, or of the pause that
    refused; -1 when ``ok``."""
    retry_after: float
    counts: tuple[float, ...]
    """Each window's sliding estimate after this request (up to the failed one)."""
    totals: tuple[int, ...] = ()
    """Each runaway subject's counter after this request (empty when paused)."""
    episodes: tuple[bool, ...] = ()
    """Whether each runaway subject's episode flag exists (it has alerted already)."""
    paused: bytes | None = None
    """The stored pause (``"<until> <why>"``) that refused the request; nothing counted."""


class Tally(NamedTuple):
    """Runaway counters after a count: totals and episode flags, in subject order."""

    totals: tuple[int, ...]
    episodes: tuple[bool, ...]


def _fits(value: float, limit: float) -> bool:
    return value - limit <= 1e-9 * max(1.0, abs(limit))


def _count(tx: ScriptTx, keys: list[str], first: int, subjects: int, amount: int, ttl_ms: int) -> Tally:
    """``incr`` each counter ``keys[first:first + subjects]``; read the flags after them."""
    totals = []
    ttl = ttl_ms / 1000 if ttl_ms else None
    get_json, set_json, get = tx.get_json, tx.set_json, tx.get
    for key in keys[first:first + subjects]:
        value = get_json(key)
        if value is None:
            value = amount
            set_json(key, value, ttl=ttl)
        else:
            value += amount
            set_json(key, value, keep_ttl=True)
        totals.append(value)
    return Tally(tuple(totals), tuple([get(key) is not None for key in keys[first + subjects:first + 2 * subjects]]))


def _admit(tx: ScriptTx, keys: list[str], args: Sequence[Any]) -> Admitted:
    pauses, subjects, windows = int(args[0]), int(args[1]), int(args[2])
    if pauses:
        caller_now = float(args[3])
        for k in range(pauses):
            raw = tx.get(keys[k])
            if raw is not None and float(raw.split(b" ", 1)[0]) > caller_now:
                return Admitted(False, k, 0.0, (), paused=raw)
    totals: tuple[int, ...] = ()
    episodes: tuple[bool, ...] = ()
    if subjects:
        totals, episodes = _count(tx, keys, pauses, subjects, int(args[4]), int(args[5]))
    first = pauses + 2 * subjects
    now = tx.now()
    counts: list[float] = []
    windows_set: list[tuple[str, int, float, float, float]] = []
    i = 6
    for k in range(windows):
        key = keys[first + k]
        limit, window, cost = float(args[i]), float(args[i + 1]), float(args[i + 2])
        i += 3
        w = math.floor(now / window)
        cur, prev = window_counts(tx, key, w)
        f = (now - w * window) / window
        estimate = prev * (1 - f) + cur
        if estimate + cost - limit > 1e-9 * max(1.0, abs(limit)):  # not _fits(estimate + cost, limit)
            if not _fits(cost, limit):
                retry = window
            elif _fits(cur + cost, limit):
                retry = (estimate + cost - limit) * window / prev
            else:
                retry = (1 - f) * window + max(0.0, 1 - (limit - cost) / cur) * window
            return Admitted(False, k, retry, (*counts, estimate), totals, episodes)
        counts.append(estimate + cost)
        windows_set.append((key, w, cur + cost, prev, window))
    slots_set: list[tuple[str, float, float]] = []
    for k in range(windows, len(keys) - first):
        key = keys[first + k]
        limit, ttl_ms = float(args[i]), int(args[i + 1])
        i += 2
        total = (tx.get_json(key) or 0.0) + 1
        if total - limit > 1e-9 * max(1.0, abs(limit)):  # not _fits(total, limit)
            return Admitted(False, k, 1.0, tuple(counts), totals, episodes)
        slots_set.append((key, total, ttl_ms / 1000))
    for key, w, cur, prev, window in windows_set:
        store_window(tx, key, w, cur, prev, window)
    for key, total, ttl in slots_set:
        tx.set_json(key, total, ttl=ttl)
    return Admitted(True, -1, 0.0, tuple(counts), totals, episodes)


def _decode_admitted(reply: Any) -> Admitted:
    subjects = int(reply[4])
    totals = tuple(int(v) for v in reply[5:5 + subjects])
    episodes = tuple(bool(int(v)) for v in reply[5 + subjects:5 + 2 * subjects])
    paused = bytes(reply[3]) if int(reply[0]) == 2 else None
    return Admitted(int(reply[0]) == 1, int(reply[1]), float(reply[2]),
                    tuple(float(c) for c in reply[5 + 2 * subjects:]), totals, episodes, paused)


_LUA_COUNT = """
local function count(first, subjects, amount, ttl)
  local totals, flags = {}, {}
  for s = 1, subjects do
    local key = KEYS[first + s]
    local existed = redis.call('EXISTS', key)
    totals[s] = redis.call('INCRBY', key, amount)
    if existed == 0 and ttl > 0 then redis.call('PEXPIRE', key, ttl) end
    flags[s] = redis.call('EXISTS', KEYS[first + subjects + s])
  end
  return totals, flags
end
"""

ADMIT: Script[Admitted] = Script(
    name="clasp.limits.admit",
    lua=WINDOW_LUA + _LUA_COUNT + """
local pauses, subjects, windows = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for k = 1, pauses do
  local raw = redis.call('GET', KEYS[k])
  if raw and tonumber(string.match(raw, '^(%S+)')) > tonumber(ARGV[4]) then
    return {2, k - 1, '0', raw, 0}
  end
end
local totals, flags = count(pauses, subjects, ARGV[5], tonumber(ARGV[6]))
local first = pauses + 2 * subjects
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local counts = {}
local sets = {}
local i = 7
local function fits(value, limit)
  return value - limit <= 1e-9 * math.max(1, math.abs(limit))
end
local function reply(ok, failed, retry)
  local out = {ok, failed, string.format('%.17g', retry), '', subjects}
  for _, v in ipairs(totals) do table.insert(out, v) end
  for _, v in ipairs(flags) do table.insert(out, v) end
  for _, c in ipairs(counts) do table.insert(out, string.format('%.17g', c)) end
  return out
end
for k = 1, windows do
  local key = KEYS[first + k]
  local limit, window, cost = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  i = i + 3
  local w, cur, prev = window_counts(key, window, now)
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
  table.insert(sets, {key, window_text(w, cur + cost, prev), math.ceil(2000 * window)})
end
for k = windows + 1, #KEYS - first do
  local key = KEYS[first + k]
  local limit, ttl = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  i = i + 2
  local total = tonumber(redis.call('GET', key) or '0') + 1
  if not fits(total, limit) then
    return reply(0, k - 1, 1)
  end
  table.insert(sets, {key, string.format('%.17g', total), ttl})
end
for _, s in ipairs(sets) do
  redis.call('SET', s[1], s[2], 'PX', s[3])
end
return reply(1, -1, 0)
""",
    python=_admit,
    decode=_decode_admitted,
)
"""KEYS: pause keys, runaway counters, their episode flags (one per counter), window
keys, slot keys. ARGV: the number of pauses, of counters, of windows; the caller's
now (pauses compare their end with it); the counters' amount and TTL (ms); then per
window its limit, length (s) and cost; then per slot its limit and lease (ms)."""


def _settle(tx: ScriptTx, keys: list[str], args: Sequence[Any]) -> Tally:
    slots, tokens, subjects = int(args[0]), int(args[1]), int(args[2])
    if slots:
        lease = int(args[3]) / 1000
        for key in keys[:slots]:
            total = (tx.get_json(key) or 0.0) - 1
            if total <= 1e-12:
                tx.delete(key)
            else:
                tx.set_json(key, total, ttl=lease)
    if tokens:
        now = tx.now()
        i = 6
        for key in keys[slots:slots + tokens]:
            window, delta = float(args[i]), float(args[i + 1])
            i += 2
            w = math.floor(now / window)
            cur, prev = window_counts(tx, key, w)
            store_window(tx, key, w, cur + delta, prev, window)
    if not subjects:
        return Tally((), ())
    return _count(tx, keys, slots + tokens, subjects, int(args[4]), int(args[5]))


def _decode_tally(reply: Any) -> Tally:
    subjects = len(reply) // 2
    return Tally(tuple(int(v) for v in reply[:subjects]), tuple(bool(int(v)) for v in reply[subjects:]))


SETTLE: Script[Tally] = Script(
    name="clasp.limits.settle",
    lua=WINDOW_LUA + _LUA_COUNT + """
local slots, tokens, subjects = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for k = 1, slots do
  local total = tonumber(redis.call('GET', KEYS[k]) or '0') - 1
  if total <= 1e-12 then
    redis.call('DEL', KEYS[k])
  else
    redis.call('SET', KEYS[k], string.format('%.17g', total), 'PX', ARGV[4])
  end
end
if tokens > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local i = 7
  for k = slots + 1, slots + tokens do
    local window, delta = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
    i = i + 2
    local w, cur, prev = window_counts(KEYS[k], window, now)
    store_window(KEYS[k], w, cur + delta, prev, window)
  end
end
local totals, flags = count(slots + tokens, subjects, ARGV[5], tonumber(ARGV[6]))
local out = {}
for _, v in ipairs(totals) do table.insert(out, v) end
for _, v in ipairs(flags) do table.insert(out, v) end
return out
""",
    python=_settle,
    decode=_decode_tally,
)
"""KEYS: slot keys, token window keys, runaway counters, their episode flags. ARGV: the
number of slots, of token windows, of counters; the slots' lease (ms); the counters'
amount and TTL (ms); then per token window its length (s) and the correction (real
tokens minus those counted)."""

"""The built-in atomic operations, each written once in Lua (Redis) and once in Python
(memory, SQLite): counters (:data:`INCR`), totals within a limit (:data:`ADD_WITHIN`)
and sliding-window rate limits (:data:`HIT`).

Both twins use the same arithmetic, including the small tolerance that keeps
``0.1 + 0.2`` within a limit of ``0.3``; ``tests/test_state.py`` runs them on every
backend. The twins never read each other's data, so each stores what suits it: Lua
keeps a sliding window as the text ``"<window> <current> <previous>"``, Python as the
JSON document ``[window, current, previous]`` (:func:`window_counts`,
:func:`store_window`: on the memory state a list, with no text to parse or format).
Scripts of plugins that keep sliding windows (limits) use the same two functions, so
``hit`` reads and corrects their windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from . import RateWindow, Reservation, Script, ScriptTx

ZERO = 1e-12
"""A total at or below this is deleted (floating-point dust after releases)."""


def _fits(value: float, limit: float) -> bool:
    """``value <= limit``, forgiving rounding error (relative 1e-9)."""
    return value - limit <= 1e-9 * max(1.0, abs(limit))


# --- INCR ----------------------------------------------------------------------------------

def _incr(tx: ScriptTx, keys: list[str], args: Sequence[Any]) -> int:
    key, amount, ttl_ms = keys[0], int(args[0]), int(args[1])
    raw = tx.get(key)
    if raw is None:
        tx.set(key, str(amount), ttl=ttl_ms / 1000 if ttl_ms else None)
        return amount
    value = int(raw) + amount
    tx.set(key, str(value), keep_ttl=True)
    return value


INCR: Script[int] = Script(
    name="clasp.incr",
    lua="""
local existed = redis.call('EXISTS', KEYS[1])
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return value
""",
    python=_incr,
    decode=int,
)


# --- ADD_WITHIN ----------------------------------------------------------------------------

def _add_within(tx: ScriptTx, keys: list[str], args: Sequence[Any]) -> Reservation:
    key, amount, limit, ttl_ms = keys[0], float(args[0]), float(args[1]), int(args[2])
    raw = tx.get(key)
    total = float(raw) if raw is not None else 0.0
    new = total + amount
    if amount > 0 and limit >= 0 and not _fits(new, limit):
        return Reservation(False, total)
    if new <= ZERO:
        tx.delete(key)
        return Reservation(True, 0.0)
    tx.set(key, repr(new), ttl=ttl_ms / 1000 if ttl_ms else None)
    return Reservation(True, new)


def _decode_reservation(reply: Any) -> Reservation:
    return Reservation(bool(int(reply[0])), float(reply[1]))


ADD_WITHIN: Script[Reservation] = Script(
    name="clasp.add_within",
    lua="""
local amount = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local total = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = total + amount
if amount > 0 and limit >= 0 and new - limit > 1e-9 * math.max(1, math.abs(limit)) then
  return {0, string.format('%.17g', total)}
end
if new <= 1e-12 then
  redis.call('DEL', KEYS[1])
  return {1, '0'}
end
if ttl > 0 then
  redis.call('SET', KEYS[1], string.format('%.17g', new), 'PX', ttl)
else
  redis.call('SET', KEYS[1], string.format('%.17g', new))
end
return {1, string.format('%.17g', new)}
""",
    python=_add_within,
    decode=_decode_reservation,
)


# --- HIT (sliding window) ------------------------------------------------------------------

def window_counts(tx: ScriptTx, key: str, w: int) -> tuple[float, float]:
    """The (current, previous) counts of the sliding window stored at ``key``, as seen
    from fixed window number ``w`` (``floor(now / length)``): a window stored in
    ``w - 1`` is now the previous one, an older one counts nothing.

    For Python script twins (memory, SQLite) that keep sliding windows; the stored
    shape is the document ``[w, current, previous]`` (:func:`store_window`). The text
    an older version stored in a SQLite file (``"<w> <current> <previous>"``, what Lua
    stores) is read too.
    """
    try:
        doc = tx.get_json(key)
    except ValueError:  # not JSON: an older version's text
        raw = tx.get(key)
        assert raw is not None
        text_w, text_cur, text_prev = raw.split()
        doc = (int(text_w), float(text_cur), float(text_prev))
    if doc is None:
        return 0.0, 0.0
    stored = doc[0]
    if stored == w:
        return doc[1], doc[2]
    if stored == w - 1:
        return 0.0, doc[1]
    return 0.0, 0.0


def store_window(tx: ScriptTx, key: str, w: int, current: float, previous: float, length: float) -> None:
    """Store a sliding window's counts in fixed window ``w`` (read back by
    :func:`window_counts`); it expires two window lengths later (then nothing of it
    counts any more)."""
    tx.set_json(key, [w, current, previous], ttl=2 * length)


WINDOW_LUA = """
local function window_counts(key, length, now)
  local w = math.floor(now / length)
  local cur, prev = 0, 0
  local raw = redis.call('GET', key)
  if raw then
    local sw, scur, sprev = string.match(raw, '^(%S+) (%S+) (%S+)$')
    if tonumber(sw) == w then
      cur = tonumber(scur); prev = tonumber(sprev)
    elseif tonumber(sw) == w - 1 then
      prev = tonumber(scur)
    end
  end
  return w, cur, prev
end
local function window_text(w, cur, prev)
  return string.format('%.0f %.17g %.17g', w, cur, prev)
end
local function store_window(key, w, cur, prev, length)
  redis.call('SET', key, window_text(w, cur, prev), 'PX', math.ceil(2000 * length))
end
"""
"""The Lua twins of :func:`window_counts` and :func:`store_window`, for a script that
keeps sliding windows on Redis: put it at the start of the script's Lua. There a window
is the text ``"<w> <current> <previous>"``; ``window_counts(key, length, now)`` answers
``w, current, previous`` (``w = floor(now / length)``), ``store_window(key, w, current,
previous, length)`` writes it to expire two window lengths later (``window_text(w,
current, previous)``: the text alone, for a script that writes later)."""


def _hit(tx: ScriptTx, keys: list[str], args: Sequence[Any]) -> RateWindow:
    key, limit, window, cost = keys[0], float(args[0]), float(args[1]), float(args[2])
    now = tx.now()
    w = math.floor(now / window)
    cur, prev = window_counts(tx, key, w)
    f = (now - w * window) / window
    estimate = prev * (1 - f) + cur
    if _fits(estimate + cost, limit):
        store_window(tx, key, w, cur + cost, prev, window)
        return RateWindow(True, estimate + cost, 0.0)
    if not _fits(cost, limit):
        retry = window  # never fits: say "a window", not "never"
    elif _fits(cur + cost, limit):
        retry = (estimate + cost - limit) * window / prev  # the previous window's share decays
    else:
        # Wait for this window to become the previous one, and for enough of it to decay.
        retry = (1 - f) * window + max(0.0, 1 - (limit - cost) / cur) * window
    return RateWindow(False, estimate, retry)


def _decode_window(reply: Any) -> RateWindow:
    return RateWindow(bool(int(reply[0])), float(reply[1]), float(reply[2]))


HIT: Script[RateWindow] = Script(
    name="clasp.hit",
    lua=WINDOW_LUA + """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local w, cur, prev = window_counts(KEYS[1], window, now)
local function fits(value)
  return value - limit <= 1e-9 * math.max(1, math.abs(limit))
end
local f = (now - w * window) / window
local estimate = prev * (1 - f) + cur
if fits(estimate + cost) then
  cur = cur + cost
  store_window(KEYS[1], w, cur, prev, window)
  return {1, string.format('%.17g', estimate + cost), '0'}
end
local retry
if not fits(cost) then
  retry = window
elseif fits(cur + cost) then
  retry = (estimate + cost - limit) * window / prev
else
  retry = (1 - f) * window + math.max(0, 1 - (limit - cost) / cur) * window
end
return {0, string.format('%.17g', estimate), string.format('%.17g', retry)}
""",
    python=_hit,
    decode=_decode_window,
)

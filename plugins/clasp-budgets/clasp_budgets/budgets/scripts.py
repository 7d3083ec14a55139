"""The budget's atomic operations on the shared state, each a Lua + Python twin.

One budget in one period is one state key holding the settled spend and the open
reservations (leases). On Redis it is a hash (``s``: spent; ``l:<lease>``: "amount
expires charge"; ``w``: until when someone waits); on memory and SQLite a JSON
document with the same content. Every operation first *sweeps*: a lease whose expiry
passed (its process died, SIGKILL) is removed and its ``charge`` (what the process
last reported it had served, plus a margin) is added to the spend, so a dead replica
neither strands budget nor lets what it served go uncounted.

Why one script over all of a request's budgets (key, team, project, user, global):
a request is admitted by all of them or by none, atomically, so no partial
reservation is ever left behind and two requests never deadlock each other.

- :data:`RESERVE`: per budget, ``0`` fits, ``1`` busy (fits once in-flight
  reservations settle: wait), ``2`` exhausted (does not fit even with nothing in
  flight: refuse, or lower ``max_tokens``). Adds the lease only if every budget fits.
- :data:`SETTLE`: remove the lease and add the real cost (if the lease had expired and
  been charged, only the difference). Says per budget whether someone waits, so a
  publish (to wake them) is only paid when useful.
- :data:`REFRESH`: extend running streams' leases and update their charges (batched).
- :data:`SEED`: raise the spend to at least a known figure (rebuilt from the ledger).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from clasp_gateway import Script, ScriptTx

FITS, BUSY, EXHAUSTED = 0, 1, 2
WAIT_MARK = 10.0
"""Seconds a busy reservation marks its budget as waited on (renewed while it waits)."""


def _fits(value: float, limit: float) -> bool:
    """``value <= limit``, forgiving rounding error (as the core's ``add_within``)."""
    return value - limit <= 1e-9 * max(1.0, abs(limit))


class Standing(NamedTuple):
    """One budget's answer to a reservation (a named tuple: one is made per budget
    per request, and a tuple is the cheapest immutable record)."""

    status: int
    """:data:`FITS`, :data:`BUSY` or :data:`EXHAUSTED`."""
    spent: float
    reserved: float
    """Open reservations of other requests (this one's excluded)."""


class Admission(NamedTuple):
    """The answer of :data:`RESERVE` over a request's budgets (in the order given)."""

    ok: bool
    standings: tuple[Standing, ...]


# --- Python twin: one JSON document per budget -------------------------------------------
# {"s": spent, "w": waited on until, "l": {lease: [amount, expires, charge]},
#  "r": the leases' total, "e": the earliest expiry}: "r" and "e" spare a walk over the
# leases unless one may have expired. Kept with ScriptTx.get_json/set_json: on the memory
# state the document itself stays in the state (no parse or dump per request); SQLite
# stores its JSON. A script changes a document only to store it back (every one below
# does), and hands its caller numbers, never the document.

def _load(tx: ScriptTx, key: str) -> dict[str, Any]:
    doc: dict[str, Any] = tx.get_json(key) or {"s": 0.0, "l": {}, "w": 0.0, "r": 0.0, "e": None}
    return doc


def _store(tx: ScriptTx, key: str, doc: dict[str, Any], ttl_ms: int) -> None:
    tx.set_json(key, doc, ttl=ttl_ms / 1000 if ttl_ms else None)


def _sweep(doc: dict[str, Any], now: float) -> float:
    """Charge expired leases to the spend; returns the open reservations' total."""
    earliest = doc.get("e")
    if earliest is not None and earliest > now:
        return max(0.0, float(doc["r"]))
    reserved, first = 0.0, None
    for lease, (amount, expires, charge) in list(doc["l"].items()):
        if expires <= now:
            doc["s"] += charge
            del doc["l"][lease]
        else:
            reserved += amount
            first = expires if first is None or expires < first else first
    doc["r"], doc["e"] = reserved, first
    return reserved


def _add_lease(doc: dict[str, Any], lease: str, amount: float, expires: float, charge: float) -> None:
    old = doc["l"].get(lease)
    if old is not None:
        doc["r"] -= old[0]
    doc["l"][lease] = [amount, expires, charge]
    doc["r"] = doc.get("r", 0.0) + amount
    doc["e"] = expires if doc.get("e") is None else min(doc["e"], expires)


def _drop_lease(doc: dict[str, Any], lease: str) -> bool:
    old = doc["l"].pop(lease, None)
    if old is None:
        return False
    doc["r"] = max(0.0, doc.get("r", 0.0) - old[0])
    if not doc["l"]:
        doc["r"], doc["e"] = 0.0, None
    return True


def _reserve(tx: ScriptTx, keys: list[str], args: Sequence[Any]) -> Admission:
    lease, amount, ttl_ms, charge = str(args[0]), float(args[1]), int(args[2]), float(args[3])
    now = tx.now()
    docs, standings, ok = [], [], True
    for i, key in enumerate(keys):
        limit, key_ttl = float(args[4 + 2 * i]), int(args[5 + 2 * i])
        doc = _load(tx, key)
        reserved = _sweep(doc, now)
        own = doc["l"].get(lease)
        if own is not None:
            reserved -= own[0]
        spent, status = doc["s"], FITS
        if limit >= 0:
            if not _fits(spent + amount, limit):
                status, ok = EXHAUSTED, False
            elif not _fits(spent + reserved + amount, limit):
                status, ok = BUSY, False
                doc["w"] = now + WAIT_MARK
        docs.append((key, doc, key_ttl))
        standings.append(Standing(status, spent, reserved))
    for key, doc, key_ttl in docs:
        if ok:
            _add_lease(doc, lease, amount, now + ttl_ms / 1000, charge)
        _store(tx, key, doc, key_ttl)
    return Admission(ok, tuple(standings))


def _settle(tx: ScriptTx, keys: list[str], args: Sequence[Any]) -> list[tuple[float, bool]]:
    lease, actual, last_charge = str(args[0]), float(args[1]), float(args[2])
    now = tx.now()
    out = []
    for i, key in enumerate(keys):
        key_ttl = int(args[3 + i])
        doc = _load(tx, key)
        _sweep(doc, now)
        if _drop_lease(doc, lease):
            doc["s"] += actual
        else:  # expired and charged meanwhile: only the difference
            doc["s"] = max(0.0, doc["s"] + actual - last_charge)
        _store(tx, key, doc, key_ttl)
        out.append((doc["s"], doc.get("w", 0.0) > now))
    return out


def _refresh(tx: ScriptTx, keys: list[str], args: Sequence[Any]) -> list[bool]:
    """Renew many leases on the same budgets at once (one call per process and tick)."""
    ttl_ms, n = int(args[0]), len(keys)
    key_ttls = [int(a) for a in args[1 : 1 + n]]
    pairs = list(args[1 + n :])
    now = tx.now()
    alive = [True] * (len(pairs) // 2)
    for key, key_ttl in zip(keys, key_ttls, strict=True):
        doc = _load(tx, key)
        _sweep(doc, now)
        for j in range(0, len(pairs), 2):
            lease = str(pairs[j])
            if lease in doc["l"]:
                # A later expiry: "e" may now be early, which only costs one walk later.
                doc["l"][lease][1] = now + ttl_ms / 1000
                doc["l"][lease][2] = float(pairs[j + 1])
            else:
                alive[j // 2] = False
        _store(tx, key, doc, key_ttl)
    return alive


def _seed(tx: ScriptTx, keys: list[str], args: Sequence[Any]) -> float:
    amount, key_ttl = float(args[0]), int(args[1])
    doc = _load(tx, keys[0])
    _sweep(doc, tx.now())
    doc["s"] = max(doc["s"], amount)
    _store(tx, keys[0], doc, key_ttl)
    return float(doc["s"])


def _status(tx: ScriptTx, keys: list[str], args: Sequence[Any]) -> list[tuple[float, float]]:
    """Read-only (the document is not changed; the next write sweeps for real): spent
    with the expired leases' charges, and the open reservations."""
    now = tx.now()
    out = []
    for key in keys:
        doc = tx.get_json(key)
        if doc is None:
            out.append((0.0, 0.0))
            continue
        spent = float(doc["s"])
        earliest = doc.get("e")
        if earliest is not None and earliest > now:
            out.append((spent, max(0.0, float(doc["r"]))))
            continue
        reserved = 0.0
        for amount, expires, charge in doc["l"].values():
            if expires <= now:
                spent += charge
            else:
                reserved += amount
        out.append((spent, reserved))
    return out


# --- Lua twin: one hash per budget ---------------------------------------------------------

_LUA_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function fmt(x) return string.format('%.17g', x) end
local function fits(value, limit) return value - limit <= 1e-9 * math.max(1, math.abs(limit)) end
local function sweep(key)
  local spent = tonumber(redis.call('HGET', key, 's') or '0')
  local reserved = 0
  local all = redis.call('HGETALL', key)
  local changed = false
  for i = 1, #all, 2 do
    local f = all[i]
    if string.sub(f, 1, 2) == 'l:' then
      local a, e, c = string.match(all[i + 1], '^(%S+) (%S+) (%S+)$')
      if tonumber(e) <= now then
        spent = spent + tonumber(c)
        redis.call('HDEL', key, f)
        changed = true
      else
        reserved = reserved + tonumber(a)
      end
    end
  end
  if changed then redis.call('HSET', key, 's', fmt(spent)) end
  return spent, reserved
end
local function expire(key, ttl)
  if tonumber(ttl) > 0 then redis.call('PEXPIRE', key, ttl) else redis.call('PERSIST', key) end
end
"""

_RESERVE_LUA = _LUA_COMMON + """
local lease = 'l:' .. ARGV[1]
local amount = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local out = {1}
local ok = 1
for i = 1, #KEYS do
  local limit = tonumber(ARGV[3 + 2 * i])
  local spent, reserved = sweep(KEYS[i])
  local own = redis.call('HGET', KEYS[i], lease)
  if own then reserved = reserved - tonumber(string.match(own, '^(%S+)')) end
  local status = 0
  if limit >= 0 then
    if not fits(spent + amount, limit) then
      status = 2
    elseif not fits(spent + reserved + amount, limit) then
      status = 1
      redis.call('HSET', KEYS[i], 'w', fmt(now + """ + repr(WAIT_MARK) + """))
    end
  end
  if status ~= 0 then ok = 0 end
  out[#out + 1] = status
  out[#out + 1] = fmt(spent)
  out[#out + 1] = fmt(reserved)
end
out[1] = ok
for i = 1, #KEYS do
  if ok == 1 then
    redis.call('HSET', KEYS[i], lease, fmt(amount) .. ' ' .. fmt(now + ttl / 1000) .. ' ' .. ARGV[4])
  end
  if redis.call('EXISTS', KEYS[i]) == 1 then expire(KEYS[i], ARGV[4 + 2 * i]) end
end
return out
"""

_SETTLE_LUA = _LUA_COMMON + """
local lease = 'l:' .. ARGV[1]
local actual = tonumber(ARGV[2])
local last = tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS do
  local spent = sweep(KEYS[i])
  if redis.call('HDEL', KEYS[i], lease) == 1 then
    spent = spent + actual
  else
    spent = math.max(0, spent + actual - last)
  end
  redis.call('HSET', KEYS[i], 's', fmt(spent))
  expire(KEYS[i], ARGV[3 + i])
  local w = tonumber(redis.call('HGET', KEYS[i], 'w') or '0')
  out[#out + 1] = fmt(spent)
  out[#out + 1] = (w > now) and 1 or 0
end
return out
"""

_REFRESH_LUA = _LUA_COMMON + """
local ttl = tonumber(ARGV[1])
local n = #KEYS
local alive = {}
for j = n + 2, #ARGV, 2 do alive[#alive + 1] = 1 end
for i = 1, n do
  sweep(KEYS[i])
  for j = n + 2, #ARGV, 2 do
    local lease = 'l:' .. ARGV[j]
    local own = redis.call('HGET', KEYS[i], lease)
    if own then
      local a = string.match(own, '^(%S+)')
      redis.call('HSET', KEYS[i], lease, a .. ' ' .. fmt(now + ttl / 1000) .. ' ' .. ARGV[j + 1])
    else
      alive[(j - n) / 2] = 0
    end
  end
  expire(KEYS[i], ARGV[1 + i])
end
return alive
"""

_SEED_LUA = _LUA_COMMON + """
local spent = sweep(KEYS[1])
spent = math.max(spent, tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 's', fmt(spent))
expire(KEYS[1], ARGV[2])
return fmt(spent)
"""

_STATUS_LUA = _LUA_COMMON + """
local out = {}
for i = 1, #KEYS do
  local spent = tonumber(redis.call('HGET', KEYS[i], 's') or '0')
  local reserved = 0
  local all = redis.call('HGETALL', KEYS[i])
  for j = 1, #all, 2 do
    if string.sub(all[j], 1, 2) == 'l:' then
      local a, e, c = string.match(all[j + 1], '^(%S+) (%S+) (%S+)$')
      if tonumber(e) <= now then spent = spent + tonumber(c) else reserved = reserved + tonumber(a) end
    end
  end
  out[#out + 1] = fmt(spent)
  out[#out + 1] = fmt(reserved)
end
return out
"""


def _decode_admission(reply: Any) -> Admission:
    standings = tuple(
        Standing(int(reply[i]), float(reply[i + 1]), float(reply[i + 2])) for i in range(1, len(reply), 3)
    )
    return Admission(bool(int(reply[0])), standings)


def _decode_settle(reply: Any) -> list[tuple[float, bool]]:
    return [(float(reply[i]), bool(int(reply[i + 1]))) for i in range(0, len(reply), 2)]


def _decode_status(reply: Any) -> list[tuple[float, float]]:
    return [(float(reply[i]), float(reply[i + 1])) for i in range(0, len(reply), 2)]


RESERVE: Script[Admission] = Script("clasp.budgets.reserve", _RESERVE_LUA, _reserve, _decode_admission)
SETTLE: Script[list[tuple[float, bool]]] = Script("clasp.budgets.settle", _SETTLE_LUA, _settle, _decode_settle)
REFRESH: Script[list[bool]] = Script("clasp.budgets.refresh", _REFRESH_LUA, _refresh,
                                     lambda r: [bool(int(x)) for x in r])
SEED: Script[float] = Script("clasp.budgets.seed", _SEED_LUA, _seed, float)
STATUS: Script[list[tuple[float, float]]] = Script("clasp.budgets.status", _STATUS_LUA, _status, _decode_status)

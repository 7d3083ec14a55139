"""The state backends' contract, run against memory, SQLite and a real Redis.

Memory and SQLite take an injected clock (time moves when the test says so); Redis
takes its time from itself, so its TTL cases wait real (short) time. Every case runs
on every backend; cross-process cases run on the two shared ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from clasp_gateway.config import ConfigError
from clasp_gateway.state import (
    EMBEDDED_PATH_ENV,
    RateWindow,
    Reservation,
    Script,
    ScriptTx,
    StateBackend,
    StateUnavailable,
    create_state,
    safe_url,
    state_from_config,
    state_problems,
    workers_share_state,
    workers_state_problems,
)
from clasp_gateway.state.memory import MemoryState
from clasp_gateway.state.redis import RedisState
from clasp_gateway.state.sqlite import SqliteState
from clasp_gateway.testing import FakeClock, RedisNamespace, RedisServer, config_from, free_port, redis_server

BACKENDS = ["memory", "sqlite", "redis"]


class Clock:
    """Seconds that move only when told to."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class Harness:
    """A backend under test, and how to let time pass for it."""

    def __init__(self, kind: str, state: StateBackend, clock: Clock | None, unit: float,
                 make_peer: Any = None) -> None:
        self.kind = kind
        self.state = state
        self.clock = clock
        self.unit = unit
        """A TTL/window length that suits the backend (Redis: real seconds)."""
        self._make_peer = make_peer
        self.peers: list[StateBackend] = []

    @property
    def exact_time(self) -> bool:
        return self.clock is not None

    async def advance(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)

    async def peer(self) -> StateBackend:
        """Another instance on the same store (another process would see the same)."""
        assert self._make_peer is not None
        peer: StateBackend = self._make_peer()
        await peer.open()
        self.peers.append(peer)
        return peer


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
def redis_ns(redis: RedisServer) -> Iterator[RedisNamespace]:
    with redis.namespace() as ns:
        yield ns


@pytest.fixture(params=BACKENDS)
async def h(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    kind = request.param
    if kind == "memory":
        clock = Clock(1000.0)
        harness = Harness(kind, MemoryState(clock=clock), clock, unit=10.0)
    elif kind == "sqlite":
        clock = Clock(1_000_000.0)
        path = str(tmp_path / "state.sqlite3")
        harness = Harness(kind, SqliteState(path, clock=clock), clock, unit=10.0,
                          make_peer=lambda: SqliteState(path, clock=clock))
    else:
        ns: RedisNamespace = request.getfixturevalue("redis_ns")
        harness = Harness(kind, RedisState(ns.url, prefix=ns.prefix, timeout=2.0), None, unit=0.5,
                          make_peer=lambda: RedisState(ns.url, prefix=ns.prefix, timeout=2.0))
    await harness.state.open()
    yield harness
    for peer in harness.peers:
        await peer.close()
    await harness.state.close()


# --- values --------------------------------------------------------------------------------


async def test_get_set_delete(h: Harness) -> None:
    s = h.state
    assert await s.get("k") is None
    assert await s.set("k", "v1") is True
    assert await s.get("k") == b"v1"
    assert await s.set("k", b"\x00\xffbinary") is True
    assert await s.get("k") == b"\x00\xffbinary"
    assert await s.delete("k", "absent") == 1
    assert await s.get("k") is None
    assert await s.delete() == 0


async def test_a_value_expires_after_its_ttl(h: Harness) -> None:
    s, u = h.state, h.unit
    await s.set("short", "x", ttl=2 * u)
    await s.set("forever", "y")
    await h.advance(u)
    assert await s.get("short") == b"x"
    await h.advance(1.5 * u)
    assert await s.get("short") is None
    assert await s.get("forever") == b"y"
    assert await s.delete("short") == 0  # an expired key does not count as deleted


async def test_set_if_absent_is_a_lease_that_expires(h: Harness) -> None:
    s, u = h.state, h.unit
    assert await s.set("lease", "a", ttl=2 * u, if_absent=True) is True
    assert await s.set("lease", "b", ttl=2 * u, if_absent=True) is False
    assert await s.get("lease") == b"a"
    await h.advance(2.5 * u)
    assert await s.set("lease", "c", ttl=2 * u, if_absent=True) is True
    assert await s.get("lease") == b"c"


async def test_only_one_of_many_concurrent_claims_wins(h: Harness) -> None:
    results = await asyncio.gather(*(h.state.set("claim", str(i), ttl=60, if_absent=True) for i in range(50)))
    assert results.count(True) == 1


async def test_delete_by_prefix(h: Harness) -> None:
    s = h.state
    for key in ("cache:team-a:1", "cache:team-a:2", "cache:team-b:1", "cache:team-a*", "other"):
        await s.set(key, "v")
    assert await s.delete_prefix("cache:team-a") == 3  # the literal '*' key matches too
    assert await s.get("cache:team-a:1") is None and await s.get("cache:team-a*") is None
    assert await s.get("cache:team-b:1") == b"v" and await s.get("other") == b"v"


async def test_delete_by_scope(h: Harness) -> None:
    s, u = h.state, h.unit
    await s.set("answer:1", "a", ttl=100 * u, scopes=["team:a", "model:x"])
    await s.set("answer:2", "b", ttl=100 * u, scopes=["team:a"])
    await s.set("answer:3", "c", ttl=100 * u, scopes=["team:b"])
    assert await s.delete_scope("team:a") == 2
    assert await s.get("answer:1") is None and await s.get("answer:2") is None
    assert await s.get("answer:3") == b"c"
    assert await s.delete_scope("team:a") == 0
    assert await s.delete_scope("model:x") == 0  # its only key is gone already


async def test_a_scope_outlives_its_longest_key(h: Harness) -> None:
    s, u = h.state, h.unit
    await s.set("long", "x", ttl=4 * u, scopes=["sc"])
    await s.set("short", "y", ttl=1 * u, scopes=["sc"])  # must not shorten the scope
    await h.advance(2 * u)
    assert await s.get("short") is None
    assert await s.delete_scope("sc") == 1
    assert await s.get("long") is None


# --- counters and limits --------------------------------------------------------------------


async def test_incr_counts_and_expires_from_its_first_increment(h: Harness) -> None:
    s, u = h.state, h.unit
    assert await s.incr("n", ttl=2 * u) == 1
    await h.advance(u)
    assert await s.incr("n", 5, ttl=2 * u) == 6  # the ttl is not pushed back
    assert await s.get("n") == b"6"
    await h.advance(1.5 * u)
    assert await s.incr("n", ttl=2 * u) == 1
    assert await s.incr("no-ttl", -2) == -2


async def test_add_within_refuses_what_would_exceed_the_limit(h: Harness) -> None:
    s = h.state
    assert await s.add_within("budget", 0.1, 0.3) == Reservation(True, pytest.approx(0.1))
    assert (await s.add_within("budget", 0.2, 0.3)).ok  # 0.1 + 0.2 fits 0.3 despite rounding
    refused = await s.add_within("budget", 0.05, 0.3)
    assert refused.ok is False and refused.total == pytest.approx(0.3)
    settled = await s.add_within("budget", 0.25, None)  # spent more than reserved: always recorded
    assert settled.ok and settled.total == pytest.approx(0.55)
    released = await s.add_within("budget", -10, 0.3)  # never below zero, and then gone
    assert released == Reservation(True, 0.0)
    assert await s.get("budget") is None


async def test_add_within_ttl_is_refreshed_by_each_change(h: Harness) -> None:
    s, u = h.state, h.unit
    await s.add_within("slots", 1, 2, ttl=2 * u)
    await h.advance(1.2 * u)
    await s.add_within("slots", 1, 2, ttl=2 * u)
    await h.advance(1.2 * u)
    assert (await s.add_within("slots", 0.0, 2, ttl=2 * u)).total == 2  # still there
    assert not (await s.add_within("slots", 1, 2, ttl=2 * u)).ok
    await h.advance(2.5 * u)
    assert (await s.add_within("slots", 1, 2, ttl=2 * u)) == Reservation(True, 1.0)  # a crashed holder's slots freed


async def test_200_concurrent_reservations_never_exceed_the_limit(h: Harness) -> None:
    s = h.state
    results = await asyncio.gather(*(s.add_within("slots", 1, 50, ttl=60) for _ in range(200)))
    assert sum(r.ok for r in results) == 50
    assert max(r.total for r in results) == 50
    assert all(r.total == 50 for r in results if not r.ok)
    await asyncio.gather(*(s.add_within("slots", -1, 50) for _ in range(50)))
    assert await s.get("slots") is None


async def test_hit_counts_within_a_window_and_says_when_to_retry(h: Harness) -> None:
    s, u = h.state, h.unit
    window = 20 * u  # long: the cases below never cross a third of it
    if h.clock is not None:
        h.clock.now = 100 * window  # at a window's start
    results = [await s.hit("rate", 4, window) for _ in range(4)]
    assert [r.ok for r in results] == [True] * 4
    assert [r.count for r in results] == pytest.approx([1, 2, 3, 4], abs=0.01)
    refused = await s.hit("rate", 4, window)
    assert refused.ok is False and refused.count == pytest.approx(4, abs=0.01)
    assert 0 < refused.retry_after <= 2 * window
    assert not (await s.hit("rate", 4, window, cost=5)).ok  # never fits
    if h.exact_time:
        # Next window: the 4 hits count (1 - elapsed share); one more fits once 3 remain.
        assert refused.retry_after == pytest.approx(window + 0.25 * window)
        await h.advance(refused.retry_after - 0.01 * window)
        assert not (await s.hit("rate", 4, window)).ok
        await h.advance(0.02 * window)
        allowed = await s.hit("rate", 4, window)
        assert allowed.ok and allowed.count == pytest.approx(4, abs=0.1)
        again = await s.hit("rate", 4, window)  # now the previous window's share must decay
        assert not again.ok and 0 < again.retry_after <= 0.25 * window


async def test_hit_forgets_after_two_windows(h: Harness) -> None:
    s, u = h.state, h.unit
    assert (await s.hit("rate", 1, u)).ok
    assert not (await s.hit("rate", 1, u)).ok
    await h.advance(2.1 * u)
    assert (await s.hit("rate", 1, u)) == RateWindow(True, pytest.approx(1.0), 0.0)


@pytest.mark.parametrize("h", ["memory", "sqlite"], indirect=True)  # the Python twins' case (Lua keeps the text)
async def test_hit_reads_the_window_text_an_older_version_stored(h: Harness) -> None:
    """Python twins keep a window as ``[w, current, previous]``; a SQLite file an older
    version wrote holds ``"<w> <current> <previous>"`` (what Lua keeps): still read."""
    assert h.clock is not None
    s, window = h.state, 20 * h.unit
    h.clock.now = 100 * window  # at the start of window 100: the previous one still counts whole
    await s.set("old-rate", "100 3.0 1.0")
    assert (await s.hit("old-rate", 10, window, cost=1)).count == pytest.approx(5.0)
    assert (await s.hit("old-rate", 10, window, cost=0)).count == pytest.approx(5.0)


# --- custom atomic operations -----------------------------------------------------------------


def _append(tx: ScriptTx, keys: list[str], args: Sequence[Any]) -> int:
    items = json.loads(tx.get(keys[0]) or b"[]")
    items.append(args[0])
    tx.set(keys[0], json.dumps(items), ttl=float(args[1]))
    return len(items)


APPEND: Script[int] = Script(
    name="test.append",
    lua="""
local raw = redis.call('GET', KEYS[1])
local items = raw and cjson.decode(raw) or {}
table.insert(items, ARGV[1])
redis.call('SET', KEYS[1], cjson.encode(items), 'PX', math.floor(tonumber(ARGV[2]) * 1000))
return #items
""",
    python=_append,
    decode=int,
)


async def test_a_script_is_one_atomic_read_modify_write(h: Harness) -> None:
    lengths = await asyncio.gather(*(h.state.run(APPEND, ["log"], [str(i), 60]) for i in range(200)))
    assert sorted(lengths) == list(range(1, 201))  # no two runs saw the same list
    stored = json.loads(await h.state.get("log") or b"[]")
    assert sorted(stored, key=int) == [str(i) for i in range(200)]


def _append_doc(tx: ScriptTx, keys: list[str], args: Sequence[Any]) -> int:
    doc = tx.get_json(keys[0]) or {"items": []}
    doc["items"].append(args[0])
    tx.set_json(keys[0], doc, ttl=float(args[1]))
    return len(doc["items"])


APPEND_DOC: Script[int] = Script(
    name="test.append_doc",
    lua="""
local raw = redis.call('GET', KEYS[1])
local doc = raw and cjson.decode(raw) or {items = {}}
table.insert(doc.items, ARGV[1])
redis.call('SET', KEYS[1], cjson.encode(doc), 'PX', math.floor(tonumber(ARGV[2]) * 1000))
return #doc.items
""",
    python=_append_doc,
    decode=int,
)


async def test_a_script_keeps_a_json_document(h: Harness) -> None:
    """get_json/set_json: the memory state keeps the document itself, SQLite its JSON;
    either way ``get`` reads JSON, a value stored as bytes is parsed, and the TTL holds."""
    await h.state.set("doc", b'{"items": ["seed"]}')
    lengths = await asyncio.gather(*(h.state.run(APPEND_DOC, ["doc"], [str(i), 2 * h.unit]) for i in range(50)))
    assert sorted(lengths) == list(range(2, 52))
    stored = json.loads(await h.state.get("doc") or b"{}")
    assert stored["items"][0] == "seed" and sorted(stored["items"][1:], key=int) == [str(i) for i in range(50)]
    assert await h.state.delete("doc") == 1
    assert await h.state.run(APPEND_DOC, ["doc"], ["again", h.unit]) == 1
    await h.advance(1.5 * h.unit)
    assert await h.state.get("doc") is None
    assert await h.state.run(APPEND_DOC, ["doc"], ["fresh", h.unit]) == 1


def _failing(tx: ScriptTx, keys: list[str], args: Sequence[Any]) -> None:
    tx.set(keys[0], "half-written")
    raise ValueError("a bug in the script")


FAILING: Script[None] = Script(name="test.failing", lua="return redis.error_reply('a bug in the script')",
                               python=_failing)


async def test_a_failing_script_is_an_error_not_an_outage(h: Harness) -> None:
    with pytest.raises(Exception, match="a bug in the script") as info:
        await h.state.run(FAILING, ["k"])
    assert not isinstance(info.value, StateUnavailable)
    assert not h.state.outage
    if h.kind != "memory":  # memory has no rollback: a script must not fail after writing
        assert await h.state.get("k") is None


# --- pub/sub ----------------------------------------------------------------------------------


async def wait_for(condition: Any, seconds: float = 5.0) -> None:
    """Poll ``condition()`` until true (bounded; delivery is asynchronous by design)."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_publish_reaches_subscribers_of_that_channel(h: Harness) -> None:
    got: list[bytes] = []
    other: list[bytes] = []

    async def async_handler(payload: bytes) -> None:
        got.append(b"async:" + payload)

    sub = await h.state.subscribe("invalidate", got.append)
    await h.state.subscribe("invalidate", async_handler)
    await h.state.subscribe("elsewhere", other.append)
    await h.state.publish("invalidate", "team:a")
    await wait_for(lambda: len(got) == 2)
    assert sorted(got) == [b"async:team:a", b"team:a"] and other == []
    await sub.close()
    await h.state.publish("invalidate", b"team:b")
    await wait_for(lambda: len(got) == 3)
    assert got[-1] == b"async:team:b"


async def test_a_failing_subscriber_does_not_stop_the_others(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    got: list[bytes] = []

    def broken(payload: bytes) -> None:
        raise RuntimeError("subscriber bug")

    await h.state.subscribe("ch", broken)
    await h.state.subscribe("ch", got.append)
    await h.state.publish("ch", "x")
    await h.state.publish("ch", "y")
    await wait_for(lambda: got == [b"x", b"y"])
    assert "subscriber bug" in caplog.text


@pytest.mark.parametrize("h", ["sqlite", "redis"], indirect=True)
async def test_another_instance_on_the_same_store_hears_and_sees_everything(h: Harness) -> None:
    peer = await h.peer()
    got: list[bytes] = []
    await h.state.subscribe("invalidate", got.append)
    await peer.publish("invalidate", "key:123")
    await wait_for(lambda: got == [b"key:123"])
    await peer.set("shared", "yes")
    assert await h.state.get("shared") == b"yes"
    await h.state.add_within("slots", 3, 4)
    assert not (await peer.add_within("slots", 2, 4)).ok


# --- across processes -----------------------------------------------------------------------------

RESERVE = textwrap.dedent("""
    import asyncio, sys
    from clasp_gateway.state.redis import RedisState
    from clasp_gateway.state.sqlite import SqliteState

    async def main() -> None:
        kind, where, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
        state = SqliteState(where, prefix=prefix, timeout=5) if kind == "sqlite" else RedisState(where, prefix=prefix, timeout=5)
        await state.open()
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        sys.stdin.readline()  # both processes start together
        results = await asyncio.gather(*(state.add_within("slots", 1, 150, ttl=60) for _ in range(100)))
        await state.close()
        print(sum(r.ok for r in results))

    asyncio.run(main())
""")


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_reservations_from_two_processes_never_exceed_the_limit(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "redis":
        ns: RedisNamespace = request.getfixturevalue("redis_ns")
        where, prefix = ns.url, ns.prefix
    else:
        where, prefix = str(tmp_path / "state.sqlite3"), "clasp:"
    procs = [subprocess.Popen([sys.executable, "-c", RESERVE, kind, where, prefix], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        granted = [int(proc.communicate(timeout=60)[0].strip()) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert sum(granted) == 150 and all(g > 0 for g in granted), granted


# --- outages ------------------------------------------------------------------------------------


def outage_errors(caplog: pytest.LogCaptureFixture, label: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(f"{label} at") and "failed" in r.getMessage()]


async def test_a_dead_redis_raises_unavailable_fast_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    state = RedisState(f"redis://:hunter2-secret@127.0.0.1:{port}/0", timeout=0.2)
    await state.open()  # logs, does not raise: serving goes on
    try:
        for _ in range(10):
            with pytest.raises(StateUnavailable) as info:
                await state.incr("n")
            assert "hunter2" not in str(info.value)
        with pytest.raises(StateUnavailable):
            await state.run(APPEND, ["log"], ["x", 1])
        assert state.outage
        assert state.describe == f"redis (redis://:***@127.0.0.1:{port}/0)"
        sub = await state.subscribe("ch", lambda payload: None)  # does not hang in an outage
        await sub.close()
    finally:
        await state.close()
    assert len(outage_errors(caplog, "Redis")) == 1
    assert "hunter2" not in caplog.text


async def test_redis_comes_back_after_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clasp.state")
    with redis_server(own=True) as own:
        state = RedisState(own.url, timeout=0.5)
        state._outage.retry_after = 0.2  # the pub/sub reader's (real) retry interval stays short
        pause = state._outage.clock = FakeClock()  # the pause after a failure passes when moved
        got: list[bytes] = []
        try:
            await state.subscribe("ch", got.append)
            assert await state.incr("n") == 1
            own.stop()
            with pytest.raises(StateUnavailable):
                await state.incr("n")
            own.restart()
            with pytest.raises(StateUnavailable):  # within the pause: not even tried
                await state.incr("n")
            pause.advance(0.21)
            assert await state.incr("n") == 1  # a fresh server: the count restarted
            assert not state.outage
            assert any("reachable again" in r.getMessage() for r in caplog.records)
            # The reader resubscribed on its own.
            for _ in range(100):
                await state.publish("ch", "after")
                if got:
                    break
                await asyncio.sleep(0.05)
            assert got and got[0] == b"after"
        finally:
            await state.close()
    assert len(outage_errors(caplog, "Redis")) == 1


async def test_a_locked_sqlite_file_is_an_outage_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "state.sqlite3")
    state = SqliteState(path, timeout=0.05)
    pause = state._outage.clock = FakeClock()
    await state.open()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for _ in range(5):
            with pytest.raises(StateUnavailable):
                await state.incr("n")
        assert state.outage
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with pytest.raises(StateUnavailable):  # unlocked, but within the pause: not even tried
        await state.incr("n")
    pause.advance(2.01)
    assert await state.incr("n") == 1 and not state.outage
    await state.close()
    assert len(outage_errors(caplog, "SQLite")) == 1


@pytest.mark.parametrize("h", BACKENDS, indirect=True)
async def test_a_closed_backend_raises_unavailable(h: Harness) -> None:
    await h.state.close()
    with pytest.raises(StateUnavailable):
        await h.state.get("k")
    with pytest.raises(StateUnavailable):
        await h.state.incr("k")


def test_safe_url_hides_the_password() -> None:
    assert safe_url("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert safe_url("redis://:pw@host/0") == "redis://:***@host/0"
    assert safe_url("redis://host:6379") == "redis://host:6379"


# --- configuration and choosing a backend -----------------------------------------------------------


def test_the_state_section_is_validated_with_precise_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLASP_TEST_UNSET_REDIS", raising=False)

    def problems(raw: Any) -> list[str]:
        return state_problems(raw)[1]

    assert problems(None) == [] and problems({}) == []
    assert problems("redis") == ["state: expected a mapping, got 'redis'"]
    assert problems({"backend": "mongo", "ttl": 3}) == [
        "state.ttl: unknown key (expected one of: backend, prefix, timeout, url)",
        "state.backend: expected one of memory, redis, sqlite, got 'mongo'",
    ]
    assert problems({"backend": "redis"}) == [
        "state.url: required with backend redis (e.g. redis://127.0.0.1:6379/0 or ${REDIS_URL})"]
    assert problems({"url": "${CLASP_TEST_UNSET_REDIS}"}) == [
        "state.url: ${CLASP_TEST_UNSET_REDIS} is not set: set CLASP_TEST_UNSET_REDIS, or remove state: to keep "
        "state in memory"]
    assert problems({"backend": "redis", "url": "http://cache:6379"}) == [
        "state.url: expected a redis://, rediss:// or unix:// URL with backend redis"]
    assert problems({"backend": "memory", "url": "redis://x"}) == [
        "state.url: the memory backend takes no url (remove it, or choose backend redis or sqlite)"]
    assert problems({"backend": "sqlite", "url": "postgres://x"}) == [
        "state.url: expected sqlite:///relative.db, sqlite:////absolute.db or a file path"]
    assert problems({"prefix": [3], "timeout": "soon"}) == [
        "state.prefix: expected a string, got list",
        "state.timeout: expected a duration >= 0.001s (a number of seconds, or e.g. '500ms', '30s', '5m'), got 'soon'",
    ]
    assert problems({"timeout": 0}) == [
        "state.timeout: expected a duration >= 0.001s (a number of seconds, or e.g. '500ms', '30s', '5m'), got 0"]
    assert state_problems({"timeout": "250ms", "prefix": "team-a:"})[0].timeout == 0.25


def test_settings_infer_the_backend_from_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASP_TEST_REDIS", "redis://:pw@127.0.0.1:6379/3")
    settings, problems = state_problems({"url": "${CLASP_TEST_REDIS}", "timeout": "500ms", "prefix": "team:"})
    assert problems == [] and settings.backend == "redis" and settings.configured
    assert settings.url is not None and settings.url.value == "redis://:pw@127.0.0.1:6379/3"
    assert settings.timeout == 0.5 and settings.prefix == "team:"
    sqlite, _ = state_problems({"url": "sqlite:////var/run/clasp.db"})
    assert sqlite.backend == "sqlite" and sqlite.path == "/var/run/clasp.db"
    relative, _ = state_problems({"backend": "sqlite", "url": "sqlite:///state.db"})
    assert relative.path == "state.db"
    defaults, _ = state_problems({"prefix": "x:"})
    assert defaults.backend == "memory" and not defaults.configured


def test_the_default_is_memory_with_one_worker_and_sqlite_with_several(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(EMBEDDED_PATH_ENV, raising=False)
    assert isinstance(state_from_config(config_from({})), MemoryState)
    several = state_from_config(config_from({"server": {"workers": 3}}))
    assert isinstance(several, SqliteState) and several.path.endswith(".sqlite3")
    explicit = state_from_config(config_from({"server": {"workers": 3}, "state": {"backend": "memory"}}))
    assert isinstance(explicit, MemoryState)
    # `clasp serve --workers N` hands its workers one file through the environment.
    monkeypatch.setenv(EMBEDDED_PATH_ENV, str(tmp_path / "shared.sqlite3"))
    worker = state_from_config(config_from({}))
    assert isinstance(worker, SqliteState) and worker.path == str(tmp_path / "shared.sqlite3")
    redis = state_from_config(config_from({"state": {"url": "redis://127.0.0.1:6379/0", "prefix": "p:"}}))
    assert isinstance(redis, RedisState) and redis.prefix == "p:"


def test_workers_share_one_fresh_file_for_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EMBEDDED_PATH_ENV, raising=False)
    with workers_share_state(config_from({}), 2) as path:
        assert path is not None and path.endswith(".sqlite3")
        assert os.environ[EMBEDDED_PATH_ENV] == path
        Path(path).write_text("")  # the workers create it
    assert EMBEDDED_PATH_ENV not in os.environ and not Path(path).exists()
    with workers_share_state(config_from({"state": {"backend": "sqlite"}}), 2) as none:
        assert none is None and EMBEDDED_PATH_ENV not in os.environ
    # Memory, chosen explicitly, would give each worker its own breakers: refused, saying why.
    with pytest.raises(ConfigError) as refused, workers_share_state(config_from({"state": {"backend": "memory"}}), 2):
        pass
    assert "state.backend: memory" in str(refused.value) and "2 workers would each have their own" in str(refused.value)
    assert workers_state_problems(config_from({"state": {"backend": "memory"}}), 1) == []


def test_a_file_the_backend_chose_itself_is_removed_on_close(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``state: {backend: sqlite}`` without url: a fresh file per run, gone afterwards
    (a configured file, or the one ``clasp serve`` gave its workers, stays)."""
    monkeypatch.delenv(EMBEDDED_PATH_ENV, raising=False)

    async def use(state: StateBackend) -> bool:
        await state.open()
        await state.set("k", "v")
        assert isinstance(state, SqliteState)
        existed = Path(state.path).exists()  # noqa: ASYNC240 (a test's tmp file)
        await state.close()
        return existed

    chosen = create_state(state_problems({"backend": "sqlite"})[0])
    assert isinstance(chosen, SqliteState)
    assert asyncio.run(use(chosen)) and not Path(chosen.path).exists()
    configured = create_state(state_problems({"backend": "sqlite", "url": str(tmp_path / "kept.db")})[0])
    assert asyncio.run(use(configured)) and (tmp_path / "kept.db").exists()


def test_create_state_builds_what_the_settings_say(tmp_path: Path) -> None:
    settings, _ = state_problems({"backend": "sqlite", "url": str(tmp_path / "x.db"), "timeout": 1})
    state = create_state(settings)
    assert isinstance(state, SqliteState) and state.timeout == 1.0 and state.describe == f"sqlite ({tmp_path / 'x.db'})"
    assert MemoryState().describe == "memory"

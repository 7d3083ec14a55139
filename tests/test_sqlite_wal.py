"""Two processes opening a new SQLite file at once (``workers: 2``) both get a working
state and database: the loser of the race to switch the file to WAL waits for the
winner instead of failing (``clasp_gateway.sqlite_wal``)."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from clasp_gateway import Database
from clasp_gateway.sqlite_wal import enable_wal, is_locked
from clasp_gateway.storage import database
from clasp_gateway.storage.settings import storage_problems

RACES = {"state": 100, "database": 20}
"""Fresh files raced per kind. Before the fix about one state race in ten failed, so a
hundred clean races are a real test (0.9 ** 100 is about 3e-5). The database's
connections open through aiosqlite's thread and lost the race far more rarely (none
in 100 here), and each race costs 0.2 s: a few races check it still works, and
:func:`test_the_database_opens_once_another_connection_lets_go` and
:func:`test_the_database_waits_through_the_event_loop` check the retry itself."""

RACER = textwrap.dedent("""
    import asyncio, multiprocessing, sys

    kind, folder, races = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "state":
        from clasp_gateway.state.sqlite import SqliteState
    else:
        from clasp_gateway import Database
        from clasp_gateway.storage.settings import storage_problems
        import sqlalchemy  # imported once here, not in each child

    async def use(path):
        if kind == "state":
            state = SqliteState(path, timeout=0.25)
            await state.open()
            try:
                if state.outage:
                    return "the state is in an outage after opening"
                await state.set("k", "v")
                return None if await state.get("k") == b"v" else "the value was lost"
            finally:
                await state.close()
        settings, problems = storage_problems({"url": f"sqlite:///{path}"})
        db = Database(settings)
        try:
            async with db.connect() as conn:
                mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
                return None if mode == "wal" else f"journal mode {mode}"
        finally:
            await db.dispose()

    def child(path, barrier, answers):
        barrier.wait()
        try:
            answers.put(asyncio.run(use(path)))
        except BaseException as exc:
            answers.put(f"{type(exc).__name__}: {exc}")

    context = multiprocessing.get_context("fork")
    failures = []
    for race in range(races):
        path = f"{folder}/{race}.db"
        barrier, answers = context.Barrier(2), context.Queue()
        children = [context.Process(target=child, args=(path, barrier, answers)) for _ in range(2)]
        for c in children:
            c.start()
        for c in children:
            c.join(60)
        failures += [a for a in (answers.get(timeout=5), answers.get(timeout=5)) if a]
    print(len(failures), failures[:3])
""")


@pytest.mark.parametrize("kind", ["state", "database"])
def test_two_processes_opening_a_new_file_at_once_both_work(kind: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", RACER, kind, str(tmp_path), str(RACES[kind])],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("0 "), done.stdout


def test_enable_wal_retries_only_a_lock_and_only_until_its_deadline() -> None:
    calls: list[str] = []
    pauses: list[float] = []

    def locked_twice(sql: str) -> None:
        calls.append(sql)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")

    enable_wal(locked_twice, wait=5, sleep=pauses.append)
    assert calls == ["PRAGMA journal_mode=WAL"] * 3 and pauses == [0.005, 0.01]

    def broken(sql: str) -> None:
        calls.append(sql)
        raise sqlite3.OperationalError("disk I/O error")

    calls.clear()
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        enable_wal(broken, wait=5, sleep=pauses.append)
    assert len(calls) == 1  # not a lock: raised at once

    def always_locked(sql: str) -> None:
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        enable_wal(always_locked, wait=0.05)  # real pauses: gives up after about 50 ms
    assert is_locked(sqlite3.OperationalError("database is locked"))
    assert not is_locked(sqlite3.OperationalError("no such table: kv")) and not is_locked(ValueError("locked"))


async def test_the_database_waits_through_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The database's connections switch to WAL in the event loop's greenlet: a lost
    race pauses with ``asyncio.sleep`` (other requests go on), then the connection works."""
    pauses: list[tuple[float, int]] = []
    ticks = 0

    def first_try_locked(execute: Any, *, wait: float, sleep: Any) -> None:
        tries = iter([sqlite3.OperationalError("database is locked")])

        def flaky(sql: str) -> Any:
            error = next(tries, None)
            if error is not None:
                raise error
            return execute(sql)

        def pause(seconds: float) -> None:
            before = ticks
            sleep(seconds)
            pauses.append((seconds, ticks - before))  # the loop ran other tasks meanwhile

        enable_wal(flaky, wait=wait, sleep=pause)

    monkeypatch.setattr(database, "enable_wal", first_try_locked)
    settings, problems = storage_problems({"url": f"sqlite:///{tmp_path / 'clasp.db'}"})
    db = Database(settings)

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    beside = asyncio.get_running_loop().create_task(ticker())
    try:
        async with db.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        beside.cancel()
        await db.dispose()
    assert problems == [] and [p[0] for p in pauses] == [0.005] and pauses[0][1] > 0


async def test_the_database_opens_once_another_connection_lets_go(tmp_path: Path) -> None:
    """The real error, through aiosqlite and SQLAlchemy's adapter: a file another
    connection holds past ``busy_timeout`` when the first connection switches it to
    WAL is waited for (up to 5 s), not a failed start-up."""
    path = tmp_path / "clasp.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    settings, problems = storage_problems({"url": f"sqlite:///{path}", "busy_timeout": "50ms"})
    db = Database(settings)
    loop = asyncio.get_running_loop()
    loop.call_later(0.4, holder.execute, "COMMIT")
    started = loop.time()
    try:
        async with db.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        await db.dispose()
        holder.close()
    assert problems == [] and loop.time() - started >= 0.35

"""Switching a SQLite file to WAL when several processes open it at once.

``PRAGMA journal_mode=WAL`` needs every other connection to the file out of the way,
and when one is not, SQLite fails it at once with "database is locked": it does not
call the busy handler there (that could deadlock), so neither ``sqlite3.connect``'s
``timeout`` nor ``PRAGMA busy_timeout`` helps. Two workers opening a new file together
(``clasp serve`` with ``workers: 2``) hit it one time in seven to twelve: racing two
processes on 200 fresh files failed 17 and 30 times in two runs. WAL is a property of
the file once one connection sets it, so the loser only has to try again until the
winner is done.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

OPEN_WAIT = 5.0
"""Seconds a connection opening the file waits for another process's at most (its
``busy_timeout`` when that is longer)."""
FIRST_PAUSE = 0.005
"""Seconds before the first retry (doubled after each, up to :data:`LONGEST_PAUSE`)."""
LONGEST_PAUSE = 0.1


def is_locked(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's "database is locked" (another connection is in the
    way: SQLITE_BUSY or SQLITE_LOCKED), not a real error."""
    return isinstance(exc, sqlite3.OperationalError) and "is locked" in str(exc)


def enable_wal(execute: Callable[[str], Any], *, wait: float,
               sleep: Callable[[float], Any] = time.sleep) -> None:
    """Run ``PRAGMA journal_mode=WAL`` through ``execute`` (a connection's or cursor's
    ``execute``), retrying while another process holds the file, for up to ``wait``
    seconds; then the last error is raised. ``sleep`` pauses between tries (an event
    loop's caller passes one that yields instead of blocking)."""
    deadline = time.monotonic() + wait
    pause = FIRST_PAUSE
    while True:
        try:
            execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not is_locked(exc) or time.monotonic() + pause > deadline:
                raise
        sleep(pause)
        pause = min(pause * 2, LONGEST_PAUSE)


__all__ = ["OPEN_WAIT", "enable_wal", "is_locked"]

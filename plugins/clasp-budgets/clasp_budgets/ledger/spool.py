"""The local spool: ledger rows the database could not take, kept on disk in order.

An append-only file of JSON lines (``{"t": "r"|"a", "row": {...}}``: a request or an
attempt row), fsync'd after each batch so an acknowledged batch survives a crash.
Replay reads it from the start in batches; the writer deletes it once every line is
in the database. Replaying the same lines twice is harmless: inserts ignore rows
whose primary key exists. A line cut short by a crash (the last one) is skipped.

The file is bounded (``spool_max_bytes``): a batch that does not fit is dropped and
logged as an error, loudly, with the number of rows lost. All methods block (disk
I/O): the writer calls them in a worker thread.

Each writer has its own spool (``ledger-spool.<pid>-<token>.jsonl``: workers share a
data dir), held with an exclusive ``flock`` on its ``.lock`` file while the
process lives. A spool whose lock nobody holds belongs to a process that died (a
crash, SIGKILL): :meth:`Spool.orphans` hands it to the next writer that replays.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("clasp.ledger")

Row = tuple[str, dict[str, Any]]
"""``("r", request_row)`` or ``("a", attempt_row)``."""


def spool_file(base: Path, owner: str) -> Path:
    """A writer's own spool beside ``base`` (``ledger-spool.jsonl`` ->
    ``ledger-spool.<owner>.jsonl``; ``owner``: the pid and a random token)."""
    return base.with_name(f"{base.stem}.{owner}{base.suffix}")


class Spool:
    """The spool file at ``path``, at most ``max_bytes`` long."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.dropped = 0
        """Rows lost because the spool was full (or could not be written)."""
        self._lock_fd: int | None = None

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")

    def acquire(self) -> bool:
        """Hold this spool's lock (``True``), or say another live process does."""
        if self._lock_fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def release(self, *, remove: bool = False) -> None:
        """Let the lock go (``remove``: delete the lock file too, the spool being empty)."""
        if self._lock_fd is None:
            return
        if remove:
            try:
                self.lock_path.unlink()
            except FileNotFoundError:
                pass
        os.close(self._lock_fd)
        self._lock_fd = None

    def orphans(self) -> list[Spool]:
        """Other processes' spools beside this one whose lock is free (their process
        died), each locked for the caller, oldest first."""
        stem = self.path.stem.rsplit(".", 1)[0]
        found: list[Spool] = []
        try:
            candidates = sorted(self.path.parent.glob(f"{stem}.*{self.path.suffix}"), key=lambda p: p.stat().st_mtime)
        except OSError:
            return found
        for path in candidates:
            if path == self.path:
                continue
            other = Spool(path, self.max_bytes)
            if other.acquire():
                found.append(other)
        return found

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def pending(self) -> bool:
        """Whether rows wait in the spool."""
        return self.size() > 0

    def append(self, rows: list[Row]) -> int:
        """Append ``rows`` and fsync; returns how many were kept (0 when the batch
        does not fit: it is dropped whole and logged as an error)."""
        if not rows:
            return 0
        data = b"".join(orjson.dumps({"t": kind, "row": row}) + b"\n" for kind, row in rows)
        size = self.size()
        if size + len(data) > self.max_bytes:
            self.dropped += len(rows)
            log.error(
                "LEDGER ROWS LOST: the spool %s is full (%d of %d bytes): %d row(s) dropped (%d so far); "
                "bring the database back or raise ledger.spool_max_bytes",
                self.path, size, self.max_bytes, len(rows), self.dropped,
            )
            return 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.dropped += len(rows)
            log.error("LEDGER ROWS LOST: cannot write the spool %s: %s: %d row(s) dropped", self.path, exc, len(rows))
            return 0
        return len(rows)

    def batches(self, size: int) -> Generator[list[Row], None, None]:
        """The spooled rows in order, ``size`` at a time (skipping a torn line)."""
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return
        with handle:
            batch: list[Row] = []
            for number, line in enumerate(handle, 1):
                try:
                    item = orjson.loads(line)
                    kind, row = item["t"], item["row"]
                    if kind not in ("r", "a") or not isinstance(row, dict):
                        raise ValueError(kind)
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    log.warning("ledger spool %s: line %d is not a row (cut by a crash?): skipped", self.path, number)
                    continue
                batch.append((kind, row))
                if len(batch) >= size:
                    yield batch
                    batch = []
            if batch:
                yield batch

    def clear(self) -> None:
        """Delete the spool (every row is in the database)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

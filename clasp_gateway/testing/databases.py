"""Real databases for tests: a fresh PostgreSQL database (created, then dropped) and
SQLite files, so a plugin's storage is tested on both dialects it will meet.

```python
with postgres_server() as pg, pg.database() as url:   # postgresql://postgres@127.0.0.1:5432/clasp_test_…
    config = {"storage": {"url": url}, ...}
with sqlite_file() as url:                            # sqlite:////tmp/…/clasp.db
    ...
```

PostgreSQL is the machine's (``$CLASP_TEST_POSTGRES_URL``, default
``postgresql://postgres@127.0.0.1:5432/postgres``: trust auth); when it does not
answer, :func:`postgres_server` starts the local cluster (``pg_ctlcluster``) and
says what to do if it cannot. Databases are named ``clasp_test_<random>``, so
parallel runs never meet, and are dropped with their connections (``WITH (FORCE)``).

As pytest fixtures (:mod:`.pytest_plugin`): ``postgres_server`` (session),
``postgres_url`` and ``sqlite_url`` (a fresh database per test module) and
``database_url``, the same module parametrised over both dialects.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")

ADMIN_URL_ENV = "CLASP_TEST_POSTGRES_URL"
"""A PostgreSQL URL with the right to create databases (the maintenance database)."""
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _in_thread(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to the end on a loop of its own, in a thread: callable from a
    sync fixture, a sync test or code already inside an event loop alike."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = asyncio.run(make())  # type: ignore[arg-type]
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=run, name="clasp-test-db", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]  # type: ignore[no-any-return]


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _start_local_cluster() -> str:
    """Start the machine's PostgreSQL clusters (Debian's ``pg_ctlcluster``); returns
    what was tried, for the error if it did not come up."""
    tool = shutil.which("pg_ctlcluster")
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if tool is None or not versions:
        return "no local cluster to start (pg_ctlcluster or /etc/postgresql missing)"
    tried = []
    for version in versions:
        command = [tool, "--skip-systemctl-redirect", version, "main", "start"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        tried.append(f"{' '.join(command)}: exit {done.returncode} {done.stderr.strip()}")
    return "; ".join(tried)


class PostgresServer:
    """A reachable PostgreSQL server; :meth:`database` hands out fresh databases."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        parts = urlsplit(admin_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 5432

    def url_for(self, name: str) -> str:
        """The URL of database ``name`` on this server (same user and password)."""
        parts = urlsplit(self.admin_url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))

    async def _execute(self, *statements: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.admin_url.replace("postgresql+asyncpg://", "postgresql://"), timeout=10)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    def create(self, name: str | None = None) -> str:
        """Create a database (``clasp_test_<random>`` by default); returns its URL."""
        name = name or f"clasp_test_{uuid.uuid4().hex[:12]}"
        _in_thread(lambda: self._execute(f'CREATE DATABASE "{name}"'))
        return self.url_for(name)

    def drop(self, url: str) -> None:
        """Drop the database at ``url``, closing whatever is still connected to it."""
        name = urlsplit(url).path.lstrip("/")
        _in_thread(lambda: self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    @contextmanager
    def database(self) -> Iterator[str]:
        """A fresh, empty database for the block; its URL (``postgresql://...``)."""
        url = self.create()
        try:
            yield url
        finally:
            self.drop(url)


@contextmanager
def postgres_server(admin_url: str | None = None, *, start_timeout: float = 30.0) -> Iterator[PostgresServer]:
    """The machine's PostgreSQL (``$CLASP_TEST_POSTGRES_URL`` or the local default);
    started when it does not answer. Raises ``RuntimeError`` saying what was tried
    when it cannot be reached: tests that need PostgreSQL fail, they do not skip."""
    server = PostgresServer(admin_url or os.environ.get(ADMIN_URL_ENV) or DEFAULT_ADMIN_URL)
    if not _answers(server.host, server.port):
        tried = _start_local_cluster() if server.host in ("127.0.0.1", "localhost", "::1") else "a remote server"
        deadline = time.monotonic() + start_timeout
        while not _answers(server.host, server.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL at {server.host}:{server.port} does not answer ({tried}); start it, "
                                   f"or set {ADMIN_URL_ENV} to a server where this user may create databases")
            time.sleep(0.2)
    yield server


@contextmanager
def sqlite_file(directory: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """A SQLite database file in a fresh directory (removed after, with its WAL
    files); its URL (``sqlite:////…/clasp.db``)."""
    folder = Path(tempfile.mkdtemp(prefix="clasp-db-", dir=directory))
    try:
        yield "sqlite:///" + str(folder / "clasp.db")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


__all__ = ["ADMIN_URL_ENV", "PostgresServer", "postgres_server", "sqlite_file"]

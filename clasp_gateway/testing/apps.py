"""Serve an aiohttp application on 127.0.0.1 in a thread of its own (and load a
test's sibling module, such as its fake, with :func:`load_module`).

The loop a plugin's own fake upstream needs (a provider's wire format the bundled
fakes do not speak): build the :class:`aiohttp.web.Application` with its routes, and
:class:`AppThread` serves it on a free port until stopped, so a synchronous test, the
gateway in its own thread and the fake all run side by side::

    server = AppThread(lambda: make_app(), name="FakeAcme")
    port = server.start()
    ...
    server.stop()
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from types import ModuleType

from aiohttp import web


class AppThread:
    """One aiohttp application served on 127.0.0.1 (a free port) by a daemon thread."""

    def __init__(self, build: Callable[[], web.Application], *, name: str = "fake-upstream") -> None:
        self._build = build
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self, timeout: float = 10.0) -> int:
        """Start serving; returns the port (raises RuntimeError if it did not start)."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            runner = web.AppRunner(self._build(), access_log=None)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"{self._name} did not start within {timeout:g}s")
        return self.port

    def stop(self) -> None:
        """Stop serving and wait for the thread (idempotent)."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop = self._thread = None


def load_module(path: str | os.PathLike[str], name: str) -> ModuleType:
    """The module in file ``path``, loaded once under ``name`` (and kept in
    ``sys.modules``, where dataclasses look their module up).

    For a test that needs a sibling file such as its own fake upstream: under pytest's
    ``--import-mode=importlib`` test modules cannot import each other by name."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]

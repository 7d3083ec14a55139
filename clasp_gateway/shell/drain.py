"""Running uvicorn for ``clasp serve``: the drain deadline, exit codes and signals.

uvicorn already drains on SIGTERM in the right order: it closes its listening socket,
closes idle kept-alive connections (a busy one answers with ``connection: close``),
waits for requests in progress, and only then runs the app's lifespan shutdown (where
plugins flush: the ledger writes its last rows after the requests that made them).
What this module adds:

- a deadline: ``server.drain_seconds`` (uvicorn's ``timeout_graceful_shutdown``; its
  default waits for ever for a stream that never ends);
- exit code 0 after a drain (uvicorn re-raises the SIGTERM it caught once it is done,
  which the default handler turns into death by signal, status 143);
- with ``server.workers`` > 1, a supervisor that passes SIGHUP on to every worker, so
  each reloads its configuration in place (:mod:`.reload`), where uvicorn's own would
  replace the workers (a bad file then fails them one by one, with its reasons lost).

The app's side of the drain (``/ready`` 503 at once, a shaped retryable 503 for a
request that still arrives) is :meth:`.reload.ServingApp.begin_drain`, which the app
chains onto uvicorn's signal handlers when it starts.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from uvicorn import Config as UvicornConfig
from uvicorn import Server
from uvicorn.supervisors.multiprocess import Multiprocess

from .reload import SUPERVISED_ENV

__all__ = ["Supervisor", "serve"]

log = logging.getLogger("clasp.server")


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor, with SIGHUP passed on to the workers (reload in
    place) instead of replacing them."""

    def handle_hup(self) -> None:
        log.info("SIGHUP: every worker reloads the configuration")
        for process in self.processes:
            pid = process.pid
            # A worker still starting reads the file as it is now: it needs no signal.
            if pid is None or not process.process.is_alive() or not process.is_ready(timeout=2):
                continue
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass


def _exit_quietly(sig: int, frame: Any) -> None:
    """SIGTERM/SIGINT outside uvicorn's own handling (before it starts, or the signal it
    re-raises after a graceful shutdown): exit 0, the drain (if any) is done."""
    raise SystemExit(0)


def serve(app: Any, options: dict[str, Any], *, workers: int, drain_seconds: float) -> int:
    """Run ``app`` (an ASGI app, or the import string of a factory with ``workers`` > 1)
    until SIGTERM/SIGINT, drained within ``drain_seconds``. Returns the exit status."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_quietly)
    if workers == 1:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the app takes it (reload), once started
    config = UvicornConfig(app, workers=workers, timeout_graceful_shutdown=max(1, round(drain_seconds)),
                           factory=workers > 1, **options)
    if workers > 1:
        os.environ[SUPERVISED_ENV] = str(os.getpid())  # inherited by the workers: where a reload is passed on
        try:
            sock = config.bind_socket()
            Supervisor(config, sockets=[sock]).run()
        finally:
            os.environ.pop(SUPERVISED_ENV, None)
        return 0
    server = Server(config)
    server.run()
    return 0 if server.started else 3

"""Configuration reload without a restart, and the drain at shutdown: the app ``clasp serve`` runs.

:class:`ServingApp` is the ASGI app uvicorn serves. It holds a :class:`Generation`: one
app built by :func:`~clasp_gateway.shell.app.create_app` from one clasp.yaml (its own
plugin manager, plugin state and :class:`~clasp_gateway.pipeline.Gateway`), started
through its ASGI lifespan. A request takes the generation current when it arrives and
keeps it to its end, so a reload is atomic for every request: all old or all new.

A reload (SIGHUP, or ``POST /admin/reload`` with an admin key) builds the next
generation beside the current one: the file is read and validated whole (every
problem at once, as ``clasp check`` reports them), the app built and started. Only
then is it swapped in for new requests; the previous generation serves its in-flight
requests to their end and is then shut down (its plugins flush, its connections
close). Anything wrong (a bad file, a change that needs a restart, a plugin failing
to start) rejects the reload whole: the reasons are logged and answered, and the
current generation keeps serving untouched.

What a reload may change: everything but :data:`RESTART_SECTIONS` (models and
deployments, routes and routing, keys and teams, limits, budgets, prices, cache,
fallback, analytics, classes, context, server tools...; ``file:`` secrets are read
again). What needs a restart: ``server:`` (listen address, workers, TLS, connection
and request limits, timeouts, drain), ``plugins:`` (code that is loaded cannot be
unloaded), ``state:`` and ``storage:`` (where breakers, limits and the ledger live;
a reload adopts the running state backend, so breakers, limits and cached answers
survive it). Plugins keep what must not start from nothing through the running
configuration's :class:`~clasp_gateway.handover.Handover`, handed to the new one: the
memory cache's answers (while the settings that shape its keys are unchanged) and the
Prometheus counters (never going backwards). Environment variables are the process's:
they change with a restart.

With ``server.workers`` > 1, ``clasp serve``'s supervisor passes SIGHUP on to every
worker (:mod:`.drain`), and ``POST /admin/reload`` on one worker, once applied there,
asks the supervisor to do so; that worker ignores the echo (same file, already applied).

Drain (:meth:`ServingApp.begin_drain`, called on SIGTERM and SIGINT): ``/ready``
answers 503 at once, a request that still arrives on an open connection gets a
shaped 503 with ``connection: close`` (a load balancer retries it elsewhere), while
uvicorn stops accepting connections and lets in-flight requests finish for up to
``server.drain_seconds``; then the lifespan shutdown closes every generation (the
ledger flushes last, after the requests that write it), and the process exits 0.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ..config import Config, ConfigError
from ..errors import GatewayError
from .admin import require_role
from .heap import settle_heap, thaw_and_settle
from .http import error_response, json_response

log = logging.getLogger("clasp.reload")

RESTART_SECTIONS = ("server", "plugins", "state", "storage")
"""Top-level sections a reload may not change (module docstring says why)."""

RETIRE_AFTER = 900.0
"""Longest a previous generation waits for its in-flight requests before it is shut
down anyway (a stream still running on it then fails). Finite, and far above any
answer's normal length."""

SUPERVISED_ENV = "CLASP_SUPERVISOR_PID"
"""Set by ``clasp serve`` for its workers (``server.workers`` > 1): the supervisor
that passes SIGHUP on to every worker."""

PROBES = frozenset({"/health", "/ready"})


@dataclass(slots=True)
class ReloadResult:
    """What a reload did: applied (``ok``), or rejected with every reason."""

    ok: bool
    generation: int
    changed: list[str] = field(default_factory=list)
    """Top-level sections that differ from the previous configuration."""
    problems: list[str] = field(default_factory=list)
    unchanged: bool = False
    """The file was already applied (an echo of our own reload): nothing done."""

    def as_dict(self) -> dict[str, Any]:
        return {"status": "reloaded" if self.ok else "rejected", "generation": self.generation,
                "changed": self.changed, "problems": self.problems, "unchanged": self.unchanged}


class _Lifespan:
    """Drives one generation's ASGI lifespan (start-up and shutdown hooks, the
    gateway's start and close) the way a server would, from inside the process."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def _send(self, message: Message) -> None:
        await self.outbox.put(message)

    async def _reply(self) -> Message:
        assert self.task is not None
        getter = asyncio.ensure_future(self.outbox.get())
        await asyncio.wait({getter, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        error = self.task.exception()
        raise RuntimeError(f"{type(error).__name__}: {error}" if error else "the app ended its lifespan early")

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self.task = asyncio.create_task(self.app(scope, self.inbox.get, self._send))
        await self.inbox.put({"type": "lifespan.startup"})
        reply = await self._reply()
        if reply["type"] != "lifespan.startup.complete":
            raise RuntimeError(reply.get("message") or "start-up failed")

    async def shutdown(self) -> None:
        if self.task is None or self.task.done():
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        try:
            reply = await self._reply()
            if reply["type"] != "lifespan.shutdown.complete":
                log.error("shutdown of a configuration failed: %s", reply.get("message") or "?")
        except RuntimeError as exc:
            log.error("shutdown of a configuration failed: %s", exc)
        await asyncio.gather(self.task, return_exceptions=True)


class Generation:
    """One configuration's app, started once, and its requests in flight."""

    def __init__(self, app: Any, number: int, digest: str) -> None:
        self.app = app
        self.number = number
        self.digest = digest
        """sha256 of the clasp.yaml bytes it was built from."""
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.lifespan = _Lifespan(app)

    @property
    def starlette_app(self) -> Any:
        return self.app.starlette_app

    @property
    def config(self) -> Config:
        return self.app.starlette_app.state.config  # type: ignore[no-any-return]

    @property
    def gateway(self) -> Any:
        return self.app.starlette_app.state.gateway


def file_digest(path: str) -> str:
    """The sha256 of a file's bytes ("" when it cannot be read)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def restart_problems(old: Config, new: Config) -> list[str]:
    """Changes a reload may not make: one problem per changed :data:`RESTART_SECTIONS` entry."""
    problems = []
    for name in RESTART_SECTIONS:
        if old.raw.get(name) != new.raw.get(name):
            problems.append(f"{name}: changed, and {name}: changes need a restart (clasp serve); "
                            "restore the running value to reload the rest")
    return problems


def changed_sections(old: Config, new: Config) -> list[str]:
    """Top-level sections whose value differs (for the log line and the answer)."""
    names = set(old.raw) | set(new.raw)
    return sorted(name for name in names if old.raw.get(name) != new.raw.get(name))


def load_checked(path: str) -> Config:
    """Read and validate clasp.yaml as ``clasp serve`` does at start-up (the file,
    then ``state:`` and ``storage:``); raises ConfigError with every problem."""
    from ..config import load_config
    from ..state import parse_state_settings
    from ..storage.settings import parse_storage_settings

    config = load_config(path)
    problems: list[str] = []
    for parse in (parse_state_settings, parse_storage_settings):
        try:
            parse(config)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(config.source, problems)
    return config


class ServingApp:
    """The ASGI app ``clasp serve`` runs: the current :class:`Generation`, reloads,
    and the drain (module docstring).

    ``app`` is the first generation's app (built, not started: uvicorn's lifespan
    starts it). ``build`` makes the app of a new configuration (``create_app``).
    ``tune_heap``: tune the process's garbage collector once the app has started
    (``heap.py``), and again when a reload retires a configuration; ``clasp serve``
    sets it (the process is the gateway's alone), tests and embedders leave it off."""

    def __init__(self, app: Any, *, build: Callable[[Config], Any] | None = None, tune_heap: bool = False) -> None:
        self.build = build
        self.tune_heap = tune_heap
        self.current = Generation(app, 1, file_digest(app.starlette_app.state.config.source))
        self.retiring: set[Generation] = set()
        self.draining = False
        self.drain_started: float | None = None
        self._lock: asyncio.Lock | None = None
        self._echo: str | None = None
        self._retire_tasks: set[asyncio.Task[None]] = set()
        self._reload_tasks: set[asyncio.Task[ReloadResult]] = set()
        self._signals: dict[int, tuple[Any, Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._adopt(self.current)

    def _adopt(self, generation: Generation) -> None:
        generation.starlette_app.state.serving = self

    @property
    def starlette_app(self) -> Any:
        """The current generation's Starlette app (its ``state``: config, gateway, pm)."""
        return self.current.starlette_app

    @property
    def config(self) -> Config:
        return self.current.config

    # --- requests ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if self.draining and kind == "http":
            path = scope.get("path", "")
            if path == "/ready":
                await json_response({"status": "draining"}, status=503)(scope, receive, send)
                return
            if path not in PROBES:
                await _refuse_draining(scope, receive, send)
                return
        generation = self.current
        generation.inflight += 1
        generation.idle.clear()
        try:
            await generation.app(scope, receive, send)
        finally:
            generation.inflight -= 1
            if not generation.inflight:
                generation.idle.set()

    # --- lifespan ------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        try:
            await self.current.lifespan.startup()
        except Exception as exc:
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        self._loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        self._install_signals()
        if self.tune_heap:
            settle_heap()
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown: uvicorn has drained the requests (or hit its deadline)
        self.draining = True  # no reload starts from now on
        self._restore_signals()
        async with self._lock:  # a reload under way ends first (its generation is then current)
            for task in list(self._reload_tasks):
                task.cancel()  # waiting for the lock: it would be refused anyway
            for generation in list(self.retiring):
                generation.idle.set()  # their requests were drained or cut: retire them now
            await asyncio.gather(*self._retire_tasks, return_exceptions=True)
            await self.current.lifespan.shutdown()
        await send({"type": "lifespan.shutdown.complete"})

    def _install_signals(self) -> None:
        """Chain the drain onto the server's SIGTERM/SIGINT handlers and take SIGHUP
        (reload). Only in the main thread (an app served in a test's thread has no signals)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            mine = self._on_exit_signal(previous)
            self._signals[sig] = (previous, mine)
            signal.signal(sig, mine)
        self._signals[signal.SIGHUP] = (signal.getsignal(signal.SIGHUP), self._on_hup)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _restore_signals(self) -> None:
        """Put back the handlers found at start-up, where ours are still installed."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, (previous, mine) in self._signals.items():
            if signal.getsignal(sig) == mine:
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._signals.clear()

    def _on_exit_signal(self, previous: Any) -> Callable[[int, Any], None]:
        def handler(sig: int, frame: Any) -> None:
            self.begin_drain(signal.Signals(sig).name)
            if callable(previous):
                previous(sig, frame)

        return handler

    def _on_hup(self, sig: int, frame: Any) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._reload_in_background)

    def _reload_in_background(self) -> None:
        task = asyncio.ensure_future(self.reload(trigger="SIGHUP"))
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

    # --- drain ---------------------------------------------------------------------------

    def begin_drain(self, reason: str = "shutdown") -> None:
        """Stop taking requests: ``/ready`` answers 503, new requests a retryable 503.
        The server (uvicorn) stops accepting connections and waits for in-flight ones."""
        if self.draining:
            return
        self.draining = True
        self.drain_started = time.monotonic()
        inflight = self.current.inflight + sum(g.inflight for g in self.retiring)
        log.info("%s: draining: /ready answers 503; %d request(s) in flight may finish within "
                 "server.drain_seconds (%gs), then the ledger and plugins flush",
                 reason, inflight, self.config.server.drain_seconds)

    # --- reload --------------------------------------------------------------------------

    async def reload(self, *, trigger: str = "admin", propagate: bool = False) -> ReloadResult:
        """Build, validate and start the configuration in the current file, and swap
        it in; or reject it whole (module docstring). Serialized: one at a time."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            result = await self._reload(trigger)
        if result.ok and not result.unchanged and propagate and os.environ.get(SUPERVISED_ENV):
            self._echo = self.current.digest
            try:
                os.kill(int(os.environ[SUPERVISED_ENV]), signal.SIGHUP)  # the supervisor tells every worker
            except (OSError, ValueError) as exc:
                log.error("reload: could not ask the supervisor to reload the other workers: %s", exc)
        return result

    async def _reload(self, trigger: str) -> ReloadResult:
        old = self.current
        source = old.config.source
        if self.draining:
            return self._rejected(trigger, old, ["the gateway is shutting down"])
        digest = await asyncio.to_thread(file_digest, source)
        if trigger == "SIGHUP" and self._echo is not None and digest == self._echo:
            self._echo = None  # our own reload, passed back by the supervisor
            return ReloadResult(True, old.number, unchanged=True)
        self._echo = None
        try:
            config = await asyncio.to_thread(load_checked, source)
        except ConfigError as exc:
            return self._rejected(trigger, old, exc.problems)
        problems = restart_problems(old.config, config)
        if problems:
            return self._rejected(trigger, old, problems)
        try:
            app = self._build(config)
        except ConfigError as exc:
            return self._rejected(trigger, old, exc.problems)
        except Exception as exc:  # a plugin's or the core's bug while building
            return self._rejected(trigger, old, [f"the gateway could not be built: {type(exc).__name__}: {exc}"])
        new = Generation(app, old.number + 1, digest)
        self._adopt(new)
        new_gateway, old_gateway = new.gateway, old.gateway
        # Breakers, limits and cached answers live on: the new gateway uses the running
        # state backend (state: is unchanged), handed over once the new one has started.
        new_gateway.state = old_gateway.state
        new_gateway.owns_state = False
        # What plugins keep across reloads (an in-memory cache, Prometheus counters):
        # their start-up adopts it from the running configuration (handover.py).
        new_gateway.handover = old_gateway.handover
        new_gateway.handover.begin()
        try:
            await new.lifespan.startup()
        except Exception as exc:
            await new.lifespan.shutdown()
            new_gateway.handover.rollback()
            return self._rejected(trigger, old, [f"the new configuration failed to start: {exc}"])
        new_gateway.handover.commit()
        new_gateway.owns_state, old_gateway.owns_state = True, False
        self.current = new
        self.retiring.add(old)
        task = asyncio.ensure_future(self._retire(old, wait=RETIRE_AFTER))
        self._retire_tasks.add(task)
        task.add_done_callback(self._retire_tasks.discard)
        changed = changed_sections(old.config, config)
        log.info("reload (%s): %s applied as configuration %d (changed: %s); %d request(s) finish on the previous one",
                 trigger, source, new.number, ", ".join(changed) or "nothing", old.inflight)
        return ReloadResult(True, new.number, changed)

    def _build(self, config: Config) -> Any:
        if self.build is not None:
            return self.build(config)
        from .app import create_app

        return create_app(config)

    def _rejected(self, trigger: str, old: Generation, problems: list[str]) -> ReloadResult:
        log.error("reload (%s) rejected, configuration %d keeps serving: %d problem(s):\n  %s",
                  trigger, old.number, len(problems), "\n  ".join(problems))
        return ReloadResult(False, old.number, problems=problems)

    async def _retire(self, generation: Generation, *, wait: float) -> None:
        """Shut a replaced generation down once its requests are done (or after ``wait``)."""
        if wait > 0:
            try:
                await asyncio.wait_for(generation.idle.wait(), wait)
            except TimeoutError:
                log.warning("configuration %d still had %d request(s) after %gs; shutting it down",
                            generation.number, generation.inflight, wait)
        if generation in self.retiring:
            self.retiring.discard(generation)
            await generation.lifespan.shutdown()
            if self.tune_heap:  # its objects were frozen at start-up: let them go
                thaw_and_settle()


async def _refuse_draining(scope: Scope, receive: Receive, send: Send) -> None:
    """A request that arrived while draining: a shaped 503 a load balancer or SDK retries."""
    from .app import error_shape

    error = GatewayError("this gateway is shutting down; retry the request (another replica will answer)",
                         status=503, error_type="overloaded_error",
                         headers={"connection": "close", "retry-after": "0", "x-should-retry": "true"})
    await error_response(error, error_shape(scope.get("path", "")))(scope, receive, send)


async def reload_endpoint(request: Request) -> Response:
    """Reload clasp.yaml now (with several workers, every worker reloads).
    ---
    summary: Reload clasp.yaml without a restart, atomically, or reject it whole
    responses:
      200: {description: "{status: reloaded, generation, changed: [section], unchanged}"}
      400: {description: "rejected: error.problems lists every reason; the running configuration keeps serving"}
      401: {description: no or invalid key}
      403: {description: not an admin key}
      409: {description: not running under clasp serve}
    """
    request_id = request.scope.get("state", {}).get("request_id")
    try:
        await require_role(request, "admin")
    except GatewayError as exc:
        return error_response(exc, "anthropic", request_id)
    serving: ServingApp | None = getattr(request.app.state, "serving", None)
    if serving is None:
        error = GatewayError("reload is available when the gateway runs under `clasp serve`", status=409,
                             error_type="invalid_request_error")
        return error_response(error, "anthropic", request_id)
    result = await serving.reload(trigger="admin", propagate=True)
    if result.ok:
        return json_response(result.as_dict())
    error = GatewayError("reload rejected, the running configuration keeps serving: " + "; ".join(result.problems),
                         status=400, error_type="invalid_request_error")
    body = error.anthropic_body()
    body["error"]["problems"] = result.problems
    if request_id:
        body["request_id"] = request_id
    return json_response(body, status=400)

"""The HTTP server's own limits, enforced where the bytes arrive.

uvicorn's httptools protocol is the fast one (the project's CPU per request depends
on it), but on its own it bounds nothing a client controls: a request head of any size
(httptools joins a long header by ``bytes +=``, so a 64 MB header cost 6 s of CPU with
every other request stalled), no time limit on a head, a body or a fresh connection,
no cap on open connections (each is a file descriptor), and a client that stops
reading its answer parks the request forever. :class:`GatewayHttpProtocol` is
uvicorn's protocol with those bounds added from ``server:`` in clasp.yaml:

- head: ``max_header_bytes`` (request line and headers) and ``max_headers``, counted
  as bytes arrive, so an oversized head costs at most one network read of parsing.
  Answered ``431`` with a shaped error and ``connection: close``.
- ``timeouts.header``: a new connection, and then each request from its first byte,
  must complete its head in time (``408``); ``timeouts.body``: longest gap while the
  body arrives (``408``); ``timeouts.keep_alive``: uvicorn's idle timeout between
  requests; ``timeouts.send``: a client that leaves its answer unread that long (the
  transport's buffer stays full) is dropped, which ends the request (the upstream call
  is closed and the spend recorded by the route, see ``http.EventStreamResponse``).
- ``max_connections``: open connections per worker. One more is answered ``503`` and
  closed at once. The cap is lowered to what the process's open-file limit can hold
  (each client connection may need an upstream one), after raising the soft limit as
  far as the hard limit allows.
- ``max_concurrent_requests``: requests in progress per worker; one more gets a
  shaped ``529 overloaded_error`` with ``retry-after`` (``/health`` and ``/ready``
  are exempt, so an overloaded worker is not mistaken for a dead one).

Every refusal is logged, at most once per 10 s per kind with a count (``limits.LimitLog``).
The checks cost nothing per request on the common path: timers are armed only when
a head or body does not arrive in one read.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from asyncio import TimerHandle
from typing import Any

import httptools
from uvicorn.config import Config as UvicornConfig
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from ..config import ServerConfig
from ..errors import GatewayError, OverloadedError
from .limits import LimitLog

__all__ = ["PROTOCOL", "GatewayHttpProtocol", "connection_cap", "uvicorn_options"]

log = logging.getLogger("clasp.server")

PROTOCOL = "clasp_gateway.shell.server:GatewayHttpProtocol"
"""uvicorn's ``http`` option: an import string, so worker processes can load it."""

EXEMPT_PATHS = frozenset({"/health", "/ready"})
"""Paths never refused for concurrency: probes must tell busy from dead."""

FD_RESERVE = 64
"""File descriptors kept for everything but client connections (listening socket,
event loop, logs, the token files, DNS...)."""

LINGER = 2.0
"""Seconds a refused connection keeps reading (and discarding) after its error answer
and FIN, so the client reads the answer instead of a reset."""

MAX_LINGERING = 64
"""Connections refused over ``max_connections`` that may linger at once; more are
closed at once (a flood of them must not hold descriptors)."""


def uvicorn_options(server: ServerConfig) -> dict[str, Any]:
    """Options for ``uvicorn.run`` that enforce ``server:`` (both for one process and
    for the ``workers > 1`` factory path, whose workers load :data:`PROTOCOL`)."""
    connection_cap(server.max_connections)  # raise the open-file limit, say so at start-up if short
    return {
        "http": PROTOCOL,
        "timeout_keep_alive": server.timeouts.keep_alive,
        # guard.py reads X-Forwarded-For, and only from server.trusted_proxies: uvicorn
        # must not rewrite the client address from it (it trusts 127.0.0.1 by default).
        "proxy_headers": False,
        # Only used if someone selects uvicorn's h11 parser instead.
        "h11_max_incomplete_event_size": server.max_header_bytes,
    }


def connection_cap(wanted: int, *, quiet: bool = False) -> int:
    """The number of client connections this process can hold: ``wanted``, or less
    when the open-file limit cannot hold that many (two descriptors per connection,
    its own and an upstream one, plus :data:`FD_RESERVE`). Raises the soft limit
    towards the hard one first."""
    needed = 2 * wanted + FD_RESERVE
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover - no rlimits on this platform
        return wanted
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (OSError, ValueError):
                pass
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    cap = max(1, (soft - FD_RESERVE) // 2)
    if quiet:
        return cap
    log.warning(
        "server.max_connections %d needs about %d open files, but this process may open %d "
        "(ulimit -n): accepting at most %d connections", wanted, needed, soft, cap,
    )
    return cap


def _server_config(app: Any) -> ServerConfig:
    """The gateway's ``server:`` settings, found on the app uvicorn loaded (through
    any middleware uvicorn or a plugin wrapped around it)."""
    for _ in range(16):
        starlette_app = getattr(app, "starlette_app", None)
        if starlette_app is not None:
            config = getattr(starlette_app.state, "config", None)
            if config is not None:
                return config.server  # type: ignore[no-any-return]
        app = getattr(app, "app", None)
        if app is None:
            break
    return ServerConfig()  # not a gateway app: still bounded, by the defaults


class _Limits:
    """The limits and the refusal log, shared by every connection of one server."""

    __slots__ = ("max_header_bytes", "max_headers", "max_connections", "max_requests",
                 "header_timeout", "body_timeout", "send_timeout", "log", "overloaded", "lingering")

    def __init__(self, server: ServerConfig) -> None:
        self.max_header_bytes = server.max_header_bytes
        self.max_headers = server.max_headers
        self.max_connections = connection_cap(server.max_connections, quiet=True)  # logged at start-up
        self.max_requests = server.max_concurrent_requests
        self.header_timeout = server.timeouts.header
        self.body_timeout = server.timeouts.body
        self.send_timeout = server.timeouts.send
        self.log = LimitLog(log)
        self.overloaded = _overloaded_app(self.max_requests)
        self.lingering = 0  # refused-at-connect connections lingering now


def _shape(path: str) -> str:
    from .app import error_shape  # the app module imports this one's users, not this one

    return error_shape(path)


def _path_of(url: bytes) -> str:
    """The path of a (maybe partial) request target, for choosing an error shape."""
    return url.split(b"?", 1)[0][:256].decode("latin-1")


def error_bytes(status: int, error: GatewayError, path: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole HTTP/1.1 response carrying ``error`` shaped for ``path``'s API, with
    ``connection: close``: written straight to the transport when no ASGI cycle can."""
    from .http import error_body

    body = error_body(error, _shape(path))
    head = [STATUS_LINE[status]]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    for header, text in error.headers.items():
        head += [header.encode("latin-1"), b": ", text.encode("latin-1"), b"\r\n"]
    head += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(),
             b"\r\nconnection: close\r\n\r\n", body]
    return b"".join(head)


def _overloaded_app(limit: int) -> Any:
    """The ASGI app answering a request over ``max_concurrent_requests`` (shaped 529)."""

    async def overloaded(scope: Any, receive: Any, send: Any) -> None:
        from .http import error_response

        error = OverloadedError(
            f"this gateway is already handling its maximum of {limit} requests; retry shortly",
            headers={"retry-after": "1"},
        )
        await error_response(error, _shape(scope.get("path", "")))(scope, receive, send)

    return overloaded


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of ``server:`` (module docstring)."""

    def __init__(
        self,
        config: UvicornConfig,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits: _Limits | None = getattr(server_state, "clasp_limits", None)
        if limits is None:
            limits = _Limits(_server_config(self.app))
            server_state.clasp_limits = limits  # type: ignore[attr-defined]
        self.limits = limits
        self.refused = False
        self.url = b""  # uvicorn sets it at the first request; the head timer reads it before
        self._in_message = False  # a request has begun (its first byte arrived) and not ended
        self._head_done = False
        self._head_bytes = 0  # bytes of the current head seen in reads that held only it
        self._head_size = 0  # exact size of the current head, from the parser's callbacks
        self._head_count = 0
        self._completed = 0  # requests whose message ended (to tell reads apart)
        self._refusal: tuple[int, str, GatewayError] | None = None
        self._head_timer: TimerHandle | None = None
        self._body_timer: TimerHandle | None = None
        self._body_seen = 0.0
        self._send_timer: TimerHandle | None = None
        self._linger: TimerHandle | None = None
        self._lingering = False  # refused at connect and counted in limits.lingering

    # -- connections --

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limits = self.limits
        if len(self.connections) >= limits.max_connections:
            self.transport = transport
            self.refused = True
            peer = transport.get_extra_info("peername")
            limits.log.hit(
                "connections",
                f"{len(self.connections)} open connections (server.max_connections {limits.max_connections}); "
                f"refused one from {peer[0] if peer else '?'} with 503",
            )
            error = GatewayError(
                "this gateway has too many open connections; retry shortly", status=503,
                error_type="overloaded_error", headers={"retry-after": "1"},
            )
            transport.write(error_bytes(503, error, "", self.server_state.default_headers))
            if limits.lingering < MAX_LINGERING and transport.can_write_eof():
                limits.lingering += 1
                self._lingering = True
                transport.write_eof()
                self._linger = self.loop.call_later(LINGER / 4, transport.close)
            else:  # a flood: close at once, the client may see a reset
                transport.close()
            return
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lingering:
            self._lingering = False
            self.limits.lingering -= 1
        for timer in (self._head_timer, self._body_timer, self._send_timer, self._linger):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._send_timer = self._linger = None
        super().connection_lost(exc)

    # -- reading --

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # lingering after an error answer: discard
        self._unset_keepalive_if_required()
        completed = self._completed
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refusal is not None:
                status, kind, error = self._refusal
                self._refuse(status, kind, error)
                return
            msg = "Invalid HTTP request received."
            self.limits.log.hit("malformed request", f"from {self._peer()}: answered 400")
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        limits = self.limits
        if self._in_message and not self._head_done:
            if self._completed != completed:
                self._head_bytes = 0  # the next head began inside this read: the callbacks count it
            else:
                self._head_bytes += len(data)
                if self._head_bytes > limits.max_header_bytes:
                    self._refuse(431, "header size", self._head_error(f"more than {limits.max_header_bytes} bytes"))
                    return
            if self._head_timer is None:  # a head spread over reads: from its first byte
                self._head_timer = self.loop.call_later(limits.header_timeout, self._head_timed_out)
        elif self._in_message and self._body_timer is None:
            # A body spread over reads: watch the gaps between its pieces.
            self._body_timer = self.loop.call_later(limits.body_timeout, self._body_check)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message = True
        self._head_size = 0
        self._head_count = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        self._head_size += len(name) + len(value) + 4
        if self._head_count > self.limits.max_headers:
            self._refusal = (431, "header count", self._head_error(f"more than {self.limits.max_headers} headers"))
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_done = True
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        limits = self.limits
        if self._head_size > limits.max_header_bytes:
            self._refusal = (431, "header size", self._head_error(f"more than {limits.max_header_bytes} bytes"))
            raise _Refused
        self._body_seen = self.loop.time()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_seen = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._head_done = False
        self._completed += 1
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        limits = self.limits
        if len(self.tasks) >= limits.max_requests and cycle.scope["path"] not in EXEMPT_PATHS:
            limits.log.hit(
                "concurrent requests",
                f"{len(self.tasks)} requests in progress (server.max_concurrent_requests {limits.max_requests}); "
                "answered 529",
            )
            app = limits.overloaded
        super()._start_asgi_task(cycle, app)

    # -- writing --

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None and not self.refused:
            self._send_timer = self.loop.call_later(self.limits.send_timeout, self._send_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    # -- timers --

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.refused or self.transport.is_closing() or self._head_done:
            return
        timeout = self.limits.header_timeout
        if self.cycle is not None and not self.cycle.response_complete:
            # The previous answer is still being written: the next head waits for it.
            self._head_timer = self.loop.call_later(timeout, self._head_timed_out)
            return
        if not self._in_message:
            self.refused = True
            self.transport.close()  # a connection that never sent a byte: nothing to answer
            self.limits.log.hit("header timeout", f"{self._peer()} sent nothing for {timeout:g}s; closed")
            return
        error = GatewayError(f"request headers incomplete after {timeout:g}s (server.timeouts.header)",
                             status=408, error_type="timeout_error")
        self._refuse(408, "header timeout", error)

    def _body_check(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if self.refused or self.transport.is_closing() or cycle is None or not self._head_done:
            return
        timeout = self.limits.body_timeout
        if self.flow.read_paused:
            # The app has not taken what arrived yet: not the client's delay.
            self._body_timer = self.loop.call_later(timeout, self._body_check)
            return
        idle = self.loop.time() - self._body_seen
        if idle < timeout:
            self._body_timer = self.loop.call_later(timeout - idle, self._body_check)
            return
        error = GatewayError(f"request body stalled: nothing arrived for {timeout:g}s (server.timeouts.body)",
                             status=408, error_type="timeout_error")
        self._refuse(408, "body timeout", error, body=True)

    def _send_timed_out(self) -> None:
        self._send_timer = None
        if self.transport.is_closing():
            return
        self.limits.log.hit(
            "send timeout",
            f"{self._peer()} left its answer unread for {self.limits.send_timeout:g}s (server.timeouts.send); dropped",
        )
        # abort, not close: close would wait for the unread buffer to drain.
        self.transport.abort()

    # -- refusing --

    def _head_error(self, what: str) -> GatewayError:
        return GatewayError(
            f"request headers too large: {what} (server.max_header_bytes, server.max_headers)",
            status=431, error_type="request_too_large",
        )

    def _refuse(self, status: int, kind: str, error: GatewayError, *, body: bool = False) -> None:
        """Stop reading requests from this connection, answer ``error`` if the
        connection is between answers, and close it after a short linger (so the
        client reads the answer, not a reset); log it (rate-limited).

        ``body``: the request whose body stalled is the current one, and the app may
        be waiting for it (it then sees a disconnect). Otherwise the refused request
        is a new head, and an earlier answer still under way is cut instead."""
        self.refused = True
        self._refusal = None
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None
        self.limits.log.hit(kind, f"{self._peer()}: {error.message}; answered {status}")
        transport = self.transport
        cycle = self.cycle
        if cycle is not None and (cycle.response_started or not body) and not cycle.response_complete:
            transport.abort()  # an answer is under way: no room for another one
            return
        if body and cycle is not None:
            if cycle.response_complete:
                transport.close()  # answered already (e.g. 401 before reading the body)
                return
            cycle.disconnected = True  # the app stops waiting for the body
            cycle.message_event.set()
        transport.write(error_bytes(status, error, _path_of(self.url), self.server_state.default_headers))
        if transport.can_write_eof():
            transport.write_eof()
            self._linger = self.loop.call_later(LINGER, transport.close)
        else:  # pragma: no cover - TLS transports
            transport.close()

    def _peer(self) -> str:
        return self.client[0] if self.client else "?"


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a request that broke a limit."""

"""The HTTP server's limits (issue 7, defects 13 and 14), on a real ``clasp serve``.

Each gateway here is its own ``clasp serve`` process with small limits configured,
driven over raw sockets the way a slow or hostile client would. Nothing asserts a
duration: every wait is bounded and generous, and the assertions are on outcomes
(the status answered, the connection closed, the line logged).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from clasp_gateway.config import ServerConfig, ServerTimeouts, parse_config
from clasp_gateway.shell.limits import LimitLog
from clasp_gateway.shell.server import connection_cap
from clasp_gateway.testing import GATEWAY_KEY, FakeUpstream, Hang, Text, free_port

ROOT = Path(__file__).parent.parent
WAIT = 30.0  # generous bound on anything the gateway should do "after a timeout of 1 s"


class Served:
    """A ``clasp serve`` process and its log."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.base_url = f"http://127.0.0.1:{port}"

    def connect(self, **options: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        for name, value in options.items():
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, name), value)
        sock.settimeout(WAIT)
        sock.connect(("127.0.0.1", self.port))
        return sock

    def text(self) -> str:
        return self.log.read_text()

    def wait_for_log(self, fragment: str) -> str:
        """The first log line containing ``fragment`` (bounded wait)."""
        deadline = time.monotonic() + WAIT
        while True:
            for line in self.text().splitlines():
                if fragment in line:
                    return line
            assert time.monotonic() < deadline, f"no log line with {fragment!r}:\n{self.text()}"
            time.sleep(0.05)


@contextlib.contextmanager
def serve(tmp: Path, server: dict[str, Any], models: dict[str, Any], *, nofile: int | None = None) -> Iterator[Served]:
    """Run ``clasp serve`` with ``server:`` settings until the generator is closed."""
    config = {"keys": [{"key": GATEWAY_KEY, "name": "tests"}], "server": server, "models": models}
    path = tmp / "clasp.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", CLASP_LOAD_PLUGINS="claude")

    def limit_files() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clasp_gateway.cli", "serve", "--config", str(path), "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=limit_files,
        )
    served = Served(proc, port, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(served.base_url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, served.text()
            assert time.monotonic() < deadline, "gateway did not become ready:\n" + served.text()
            time.sleep(0.1)
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the gateway sends until it closes the connection (bounded)."""
    data = b""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not piece:
            return data
        data += piece
    raise AssertionError(f"the gateway kept the connection open: {data[:300]!r}")


def answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    """Status, headers and JSON body of one raw HTTP response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


def request_bytes(path: str = "/health", method: str = "GET", headers: dict[str, str] | None = None,
                  body: bytes = b"", close: bool = False) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: gateway"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"content-length: {len(body)}")
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def messages_body(stream: bool = True, text: str = "hi") -> bytes:
    return json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": stream,
                       "messages": [{"role": "user", "content": text}]}).encode()


# --- the shipped defaults ---------------------------------------------------------------------


def test_every_shipped_limit_is_finite() -> None:
    """No limit is "unlimited" by default: every number of ``server:`` and
    ``server.timeouts`` is a positive finite value, as built and as parsed."""
    for server in (ServerConfig(), parse_config({}, "x").server):
        for section in (server, server.timeouts):
            for field in dataclasses.fields(section):  # type: ignore[arg-type]
                value = getattr(section, field.name)
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                assert math.isfinite(value) and value > 0, f"{field.name} = {value!r}"
    names = {f.name for f in dataclasses.fields(ServerTimeouts)}
    assert names == {"header", "body", "keep_alive", "send"}
    numbers = {f.name for f in dataclasses.fields(ServerConfig) if f.type in ("int", "float")}
    assert {"max_header_bytes", "max_headers", "max_connections", "max_concurrent_requests",
            "max_messages", "max_request_bytes", "auth_failures_per_minute"} <= numbers


def test_limit_log_reports_once_per_interval_with_a_count() -> None:
    import logging

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("clasp.test.limitlog")
    logger.addHandler(Keep())
    logger.propagate = False
    now = [100.0]
    limit_log = LimitLog(logger, interval=10, clock=lambda: now[0])
    assert limit_log.hit("header size", "a") is True
    for _ in range(4):
        assert limit_log.hit("header size", "b") is False
    assert limit_log.hit("connections", "c") is True  # kinds are reported apart
    now[0] += 10
    assert limit_log.hit("header size", "d") is True
    assert records[0].endswith("(1 time(s) since the last report)")
    assert records[-1] == "limit hit: header size: d (5 time(s) since the last report)"


def test_a_cap_the_open_file_limit_holds_is_kept() -> None:
    assert connection_cap(10) == 10  # (a too small limit: test_an_open_file_limit_too_small...)


# --- a gateway with tight timeouts and a small head limit ---------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as up:
        yield up


def _models(upstream: FakeUpstream) -> dict[str, Any]:
    return {"*": [{"model": "openai/gpt-4o", "api_base": upstream.base_url, "api_key": "sk-upstream-test-1234567890"}]}


@pytest.fixture(scope="module")
def tight(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = {
        "max_header_bytes": 8192, "max_headers": 20,
        "timeouts": {"header": 1, "body": 1, "keep_alive": 1, "send": 1},
    }
    with serve(tmp_path_factory.mktemp("tight"), server, _models(upstream)) as served:
        yield served


def test_an_oversized_head_gets_431_at_once(tight: Served) -> None:
    # 1 MB in one header, no key: refused after the first few KB, shaped by route.
    for path, shape in (("/v1/messages", "anthropic"), ("/v1/chat/completions", "openai")):
        with tight.connect() as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nhost: gateway\r\nx-filler: ".encode() + b"a" * 1_000_000)
            status, headers, body = answer(read_until_closed(sock))
        assert status == 431 and headers["connection"] == "close"
        if shape == "anthropic":
            assert body["type"] == "error" and body["error"]["type"] == "request_too_large"
            assert "max_header_bytes" in body["error"]["message"]
        else:
            assert body["error"]["code"] == "request_too_large"
    # Many small headers count too.
    with tight.connect() as sock:
        sock.sendall(request_bytes(headers={f"x-h{i}": "1" for i in range(40)}))
        status, _, body = answer(read_until_closed(sock))
    assert status == 431 and "more than 20 headers" in body["error"]["message"]
    # A head just under the limit is served.
    with tight.connect() as sock:
        sock.sendall(request_bytes(headers={"x-filler": "a" * 7000}, close=True))
        assert answer(read_until_closed(sock))[0] == 200
    assert "limit hit: header size" in tight.wait_for_log("limit hit: header size")


def test_half_sent_headers_are_answered_408_and_closed(tight: Served) -> None:
    with tight.connect() as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: gateway\r\nx-api-key: ")
        status, headers, body = answer(read_until_closed(sock))
    assert status == 408 and headers["connection"] == "close"
    assert body["error"]["type"] == "timeout_error" and "server.timeouts.header" in body["error"]["message"]
    # A connection that never sends a byte is closed too.
    with tight.connect() as sock:
        assert read_until_closed(sock) == b""
    tight.wait_for_log("limit hit: header timeout")
    # And the gateway still serves.
    assert httpx.get(tight.base_url + "/health", timeout=WAIT).status_code == 200


def test_a_stalled_body_is_answered_408_and_closed(tight: Served) -> None:
    with tight.connect() as sock:
        head = request_bytes("/v1/messages", "POST", {"x-api-key": GATEWAY_KEY, "content-type": "application/json"})
        sock.sendall(head.replace(b"content-length: 0", b"content-length: 500") + b'{"model": "claude')
        status, _, body = answer(read_until_closed(sock))
    assert status == 408 and "server.timeouts.body" in body["error"]["message"]
    tight.wait_for_log("limit hit: body timeout")


def test_an_idle_kept_alive_connection_is_closed(tight: Served) -> None:
    with tight.connect() as sock:
        sock.sendall(request_bytes("/health"))
        raw = read_until_closed(sock)  # the answer, then the close after keep_alive
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b'{"status":"ok"}')


def test_a_client_that_stops_reading_is_dropped_and_its_request_recorded(
    tight: Served, upstream: FakeUpstream
) -> None:
    # A long answer to a client that never reads: the gateway's buffers fill up.
    upstream.queue(Text("x" * 16_000_000, chunk_size=65536))
    with tight.connect(SO_RCVBUF=4096) as sock:
        sock.sendall(request_bytes("/v1/messages", "POST", {"x-api-key": GATEWAY_KEY}, messages_body()))
        tight.wait_for_log("limit hit: send timeout")
        # The request ended as a client that left (499), the upstream call closed.
        line = tight.wait_for_log("status=499")
    assert " cut" in line


# --- connection and request caps ------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = {"max_connections": 20, "max_concurrent_requests": 3,
              "timeouts": {"header": 60, "body": 60, "keep_alive": 60, "send": 60}}
    with serve(tmp_path_factory.mktemp("capped"), server, _models(upstream)) as served:
        yield served


def _until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def _health_on_new_connection(served: Served) -> int:
    try:
        with served.connect() as sock:
            sock.sendall(request_bytes("/health", close=True))
            return answer(read_until_closed(sock))[0]
    except OSError:
        return 0


def test_connections_over_the_cap_are_refused_until_others_close(capped: Served) -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(20):  # anonymous, half-sent requests
            sock = capped.connect()
            sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: gateway\r\n")
            held.append(sock)
        # The 21st gets a shaped 503 and is closed; the gateway itself is fine.
        with capped.connect() as sock:
            sock.sendall(request_bytes("/health"))
            status, headers, body = answer(read_until_closed(sock))
        assert status == 503 and headers["retry-after"] == "1"
        assert body["error"]["type"] == "overloaded_error"
        capped.wait_for_log("limit hit: connections")
        for sock in held[:5]:
            sock.close()
        _until(lambda: _health_on_new_connection(capped) == 200)
    finally:
        for sock in held:
            sock.close()


def test_requests_over_the_concurrency_cap_get_529(capped: Served, upstream: FakeUpstream) -> None:
    upstream.reset()
    upstream.queue(*[Hang(3600, reply=Text("hello there"), after_chunks=2) for _ in range(3)])
    streams: list[socket.socket] = []
    try:
        for _ in range(3):
            sock = capped.connect()
            sock.sendall(request_bytes("/v1/messages", "POST", {"x-api-key": GATEWAY_KEY}, messages_body()))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # streaming, then stalled upstream
            streams.append(sock)
        for path, body in (("/v1/messages", messages_body(stream=False)),
                           ("/v1/chat/completions", messages_body(stream=False))):
            response = httpx.post(capped.base_url + path, content=body, timeout=WAIT,
                                  headers={"x-api-key": GATEWAY_KEY, "content-type": "application/json"})
            assert response.status_code == 529 and response.headers["retry-after"] == "1"
            error = response.json()["error"]
            assert error["type"] in ("overloaded_error", "service_unavailable")
        assert httpx.get(capped.base_url + "/health", timeout=WAIT).status_code == 200  # probes are exempt
        capped.wait_for_log("limit hit: concurrent requests")
        assert len(upstream.requests) == 3  # the refused ones never reached the provider
    finally:
        for sock in streams:
            sock.close()  # the clients leave: their requests end, upstream calls closed
    capped.wait_for_log("status=499")

    def served() -> bool:
        response = httpx.post(capped.base_url + "/v1/messages", content=messages_body(stream=False),
                              headers={"x-api-key": GATEWAY_KEY}, timeout=WAIT)
        return response.status_code == 200

    _until(served)


def test_an_open_file_limit_too_small_for_the_cap_lowers_it(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    # 1,000 connections (the default) cannot fit in 200 open files: the gateway says
    # so and caps itself, instead of failing every request once descriptors run out.
    server = {"timeouts": {"header": 60}}
    with serve(tmp_path, server, _models(upstream), nofile=200) as served:
        line = served.wait_for_log("accepting at most")
        cap = int(line.rsplit("accepting at most ", 1)[1].split()[0])
        assert 0 < cap < 100
        held: list[socket.socket] = []
        try:
            for _ in range(cap):
                sock = served.connect()
                sock.sendall(b"POST /v1/messages HTTP/1.1\r\n")
                held.append(sock)
            assert _health_on_new_connection(served) == 503
            for sock in held:
                sock.close()
            held = []
            _until(lambda: _health_on_new_connection(served) == 200)
            # Upstream calls still get their descriptors.
            response = httpx.post(served.base_url + "/v1/messages", content=messages_body(stream=False),
                                  headers={"x-api-key": GATEWAY_KEY}, timeout=WAIT)
            assert response.status_code == 200
        finally:
            for sock in held:
                sock.close()
        assert "Too many open files" not in served.text()


def test_the_limits_hold_with_several_workers(upstream: FakeUpstream, tmp_path: Path) -> None:
    # workers > 1: uvicorn's workers load the app from a factory and the protocol by name.
    server = {"workers": 2, "max_header_bytes": 4096, "timeouts": {"header": 1}}
    with serve(tmp_path, server, _models(upstream)) as served:
        for _ in range(4):  # both workers, whichever accepts
            with served.connect() as sock:
                sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: gateway\r\nx-filler: " + b"a" * 100_000)
                assert answer(read_until_closed(sock))[0] == 431
        with served.connect() as sock:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\n")
            assert answer(read_until_closed(sock))[0] == 408
        served.wait_for_log("limit hit: header size")

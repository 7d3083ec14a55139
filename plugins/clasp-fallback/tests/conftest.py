"""Fixtures for the fallback plugin's tests: a real Redis, fake upstreams, real gateways.

Only the plugins a test names are loaded (``CLASP_LOAD_PLUGINS``), so these tests do
not depend on what else is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from clasp_gateway import hookimpl  # noqa: E402
from clasp_gateway.plugins import PluginManager  # noqa: E402
from clasp_gateway.shell.app import create_app  # noqa: E402
from tests.fakes import FakeUpstream, Text  # noqa: E402
from tests.support import GATEWAY_KEY, GatewayServer, config_from, free_port  # noqa: E402

UPSTREAM_KEY = "sk-upstream-test-1234567890"


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_redis(port: int) -> subprocess.Popen[bytes]:
    """Our own redis-server on ``port`` (the test stops it by its pid)."""
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        if port_open("127.0.0.1", port):
            return proc
        time.sleep(0.025)
    proc.terminate()
    raise RuntimeError(f"redis-server did not start on port {port}")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: the machine's on 6379 (started if down), else our own server."""
    if not port_open("127.0.0.1", 6379) and shutil.which("redis-server"):
        subprocess.run(
            ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
             "--save", "", "--appendonly", "no"],
            check=False, capture_output=True,
        )
        for _ in range(50):
            if port_open("127.0.0.1", 6379):
                break
            time.sleep(0.1)
    if port_open("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/14"
        return
    proc = start_redis(free_port())
    try:
        yield f"redis://127.0.0.1:{proc.args[4]}/0"  # type: ignore[index]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class OwnRedis:
    """A redis-server this test starts and stops (by its pid) on a fixed port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start_redis(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    """A private Redis the test may kill and restart."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    server = OwnRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix of its own, so tests never see each other's breakers."""
    return f"clasp-test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture(autouse=True)
def only_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load only this plugin (tests that need the Claude plugin add it)."""
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "fallback")


class Events:
    """A test plugin that keeps every ``record`` event."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    @hookimpl
    def record(self, ctx: Any, event: dict[str, Any]) -> None:
        self.items.append(event)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.items if e["kind"] == kind]


class Served:
    """A running gateway with an httpx client and its recorded events."""

    def __init__(self, server: GatewayServer, events: Events) -> None:
        self.server = server
        self.events = events
        self.base_url = server.base_url
        self.http = httpx.Client(base_url=server.base_url, headers={"x-api-key": GATEWAY_KEY}, timeout=10)

    def chat(self, content: str = "hi", *, stream: bool = False, model: str = "chain", **body: Any) -> httpx.Response:
        """POST /v1/chat/completions; a streamed answer is read whole."""
        payload = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream, **body}
        return self.http.post("/v1/chat/completions", json=payload)

    def text(self, response: httpx.Response) -> str:
        """The answer's text, from a JSON completion or an SSE stream."""
        assert response.status_code == 200, response.text
        if "text/event-stream" not in response.headers.get("content-type", ""):
            return str(response.json()["choices"][0]["message"]["content"])
        parts = []
        for line in response.text.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                for choice in chunk.get("choices") or ():
                    parts.append(choice["delta"].get("content") or "")
        assert response.text.rstrip().endswith("data: [DONE]")
        return "".join(parts)

    def status(self) -> dict[str, Any]:
        """GET /health/providers, by deployment id."""
        response = self.http.get("/health/providers")
        assert response.status_code == 200, response.text
        data = response.json()
        data["by_id"] = {d["id"]: d for d in data["deployments"]}
        return data  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.http.close()
        self.server.stop()


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """Start gateways: ``serve(chain, fallback={...})`` or ``serve(models={...}, ...)``."""
    started: list[Served] = []

    def start(
        chain: list[dict[str, Any]] | None = None,
        *,
        fallback: dict[str, Any] | None = None,
        models: dict[str, Any] | None = None,
        plugins: list[Any] = (),  # type: ignore[assignment]
    ) -> Served:
        config = config_from({"models": models or {"chain": chain}, "fallback": fallback or {}})
        pm = PluginManager()
        pm.load(config.plugin_paths)
        events = Events()
        pm.register(events, name="test-events")
        for i, plugin in enumerate(plugins):
            pm.register(plugin, name=f"test-plugin-{i}")
        served = Served(GatewayServer(config, create_app(config, pm)).start(), events)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


@pytest.fixture
def up() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    """A primary and a secondary fake upstream; the secondary answers "from secondary"."""
    with FakeUpstream("openai") as primary, FakeUpstream("openai") as secondary:
        secondary.script = lambda body, rec: Text("from secondary")
        yield primary, secondary


class Kit:
    """Helpers for building chains; a fixture (``kit``) because test folders are not
    importable packages under ``--import-mode=importlib``."""

    Served = Served
    UPSTREAM_KEY = UPSTREAM_KEY

    @staticmethod
    def deployment(base_url: str, ident: str, **extra: Any) -> dict[str, Any]:
        """A deployment entry for clasp.yaml pointing at a fake (or dead) upstream."""
        entry: dict[str, Any] = {
            "id": ident,
            "model": "openai/gpt-4o-mini",
            "api_base": base_url,
            "api_key": UPSTREAM_KEY,
            "timeouts": {"connect": 1, "first_byte": 0.5, "idle": 1, "total": 5},
        }
        entry.update(extra)
        return entry

    @staticmethod
    def dead_url() -> str:
        """An api_base where nobody listens (connection refused)."""
        return f"http://127.0.0.1:{free_port()}/v1"

    def pair(self, primary: FakeUpstream | str, secondary: FakeUpstream, **primary_extra: Any) -> list[dict[str, Any]]:
        """The usual chain: ``primary`` (a fake, or a dead URL) then ``secondary``."""
        base = primary if isinstance(primary, str) else primary.base_url
        return [self.deployment(base, "primary", **primary_extra), self.deployment(secondary.base_url, "secondary")]

    @staticmethod
    def chat_requests(up: FakeUpstream) -> int:
        """How many chat calls a fake received (health checks' GET /models excluded)."""
        return sum(1 for r in up.requests if r.path.endswith("/chat/completions"))


@pytest.fixture
def kit() -> Kit:
    return Kit()

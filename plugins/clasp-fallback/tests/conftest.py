"""Fixtures for the fallback plugin's tests: a real Redis, fake upstreams, real gateways
(in this process, or as real ``clasp serve`` processes through ``clasp_gateway.testing``).

Only the plugins a test names are loaded (``CLASP_LOAD_PLUGINS``), so these tests do
not depend on what else is installed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from clasp_gateway import hookimpl  # noqa: E402
from clasp_gateway.plugins import PluginManager  # noqa: E402
from clasp_gateway.shell.app import create_app  # noqa: E402
from clasp_gateway.testing import (  # noqa: E402
    GATEWAY_KEY,
    FakeClock,
    FakeUpstream,
    GatewayProcesses,
    GatewayServer,
    RedisNamespace,
    RedisServer,
    Text,
    config_from,
    free_port,
    redis_server,
)

UPSTREAM_KEY = "sk-upstream-test-1234567890"


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    """A real Redis: the machine's on 6379 when it answers, else our own (stopped after)."""
    with redis_server() as server:
        yield server


@pytest.fixture
def redis_ns(redis: RedisServer) -> Iterator[RedisNamespace]:
    """A key prefix of this test's own on that Redis (its keys deleted after)."""
    with redis.namespace() as ns:
        yield ns


@pytest.fixture
def redis_url(redis_ns: RedisNamespace) -> str:
    return redis_ns.url


@pytest.fixture
def key_prefix(redis_ns: RedisNamespace) -> str:
    """A Redis key prefix of its own, so tests never see each other's breakers."""
    return redis_ns.prefix


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A private redis-server the test may stop and restart (stopped after)."""
    with redis_server(own=True) as server:
        yield server


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
        clock: FakeClock | None = None,
    ) -> Served:
        """``clock``: the gateway's state backend (memory: where the breakers keep
        their time) reads it, so a test moves past a cooldown instead of sleeping."""
        config = config_from({"models": models or {"chain": chain}, "fallback": fallback or {}})
        pm = PluginManager()
        pm.load(config.plugin_paths)
        events = Events()
        pm.register(events, name="test-events")
        for i, plugin in enumerate(plugins):
            pm.register(plugin, name=f"test-plugin-{i}")
        app = create_app(config, pm)
        if clock is not None:
            state = app.starlette_app.state.gateway.state
            assert state.kind == "memory", "a clock is for the memory state backend"
            state.clock = clock
        served = Served(GatewayServer(config, app).start(), events)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


class Replicas:
    """Real ``clasp serve`` processes on one config (from ``clasp_gateway.testing``),
    with an httpx client for the gateway key."""

    def __init__(self, processes: GatewayProcesses) -> None:
        self.processes = processes
        self.urls = [p.base_url for p in processes]
        self.http = httpx.Client(headers={"x-api-key": GATEWAY_KEY}, timeout=10)

    def chat(self, index: int = 0, content: str = "hi", *, model: str = "chain") -> httpx.Response:
        payload = {"model": model, "messages": [{"role": "user", "content": content}]}
        return self.http.post(self.urls[index] + "/v1/chat/completions", json=payload)

    @staticmethod
    def text(response: httpx.Response) -> str:
        """The text of a non-streamed chat completion."""
        assert response.status_code == 200, response.text
        return str(response.json()["choices"][0]["message"]["content"])

    def status(self, index: int = 0, *, new_connection: bool = False) -> dict[str, Any]:
        """GET /health/providers (``new_connection``: may reach another worker)."""
        url = self.urls[index] + "/health/providers"
        if new_connection:
            response = httpx.get(url, headers={"x-api-key": GATEWAY_KEY}, timeout=10)
        else:
            response = self.http.get(url)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        data["by_id"] = {d["id"]: d for d in data["deployments"]}
        return data


@pytest.fixture
def replicas() -> Iterator[Callable[..., Replicas]]:
    """``replicas(chain, count=2, fallback={...}, state={...}, server={...})``: gateways as
    real processes (stopped after), with only this plugin loaded."""
    started: list[Replicas] = []

    def start(chain: list[dict[str, Any]], *, count: int = 1, fallback: dict[str, Any] | None = None,
              state: dict[str, Any] | None = None, server: dict[str, Any] | None = None) -> Replicas:
        config: dict[str, Any] = {
            "server": {"log_level": "info", **(server or {})},
            "keys": [{"key": GATEWAY_KEY, "name": "tests", "team": "qa"}],
            "models": {"chain": chain},
            "fallback": fallback or {},
        }
        if state is not None:
            config["state"] = state
        processes = GatewayProcesses(config, count=count, env={"CLASP_LOAD_PLUGINS": "fallback"})
        replicas = Replicas(processes.start())
        started.append(replicas)
        return replicas

    yield start
    for replicas in started:
        replicas.http.close()
        replicas.processes.stop()


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

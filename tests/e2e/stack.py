"""A fake upstream of one flavor behind a running gateway, ready to play scenarios."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import FakeUpstream, GatewayServer, config_from, openai_models

from .claude import ClaudeRun, ScriptedModel, Step, run_claude

UPSTREAM_KEY = "sk-upstream-test-1234567890"


def models_for(up: FakeUpstream) -> tuple[dict[str, Any], int]:
    """The ``models:`` section serving every public name from ``up``, and the output
    limit the gateway must clamp ``max_tokens`` to."""
    if up.flavor == "azure":
        deployment: dict[str, Any] = {
            "model": "azure/my-gpt4o",
            "api_base": up.origin,
            "api_key": UPSTREAM_KEY,
            "api_version": "2024-10-21",
            "base_model": "gpt-4o",
        }
        return {"*": [deployment]}, 16384
    if up.flavor == "ollama":
        # No catalogue limit for local models: the clasp.yaml override is the limit.
        local = {"model": "ollama/llama3.2:latest", "api_base": up.origin + "/v1", "max_output_tokens": 8192}
        return {"*": [local]}, 8192
    return openai_models(up.base_url), 16384  # openai, json_stream, fragmented: gpt-4o


@dataclass
class ClientExchange:
    """One HTTP request the CLI made to the gateway, and the response status."""

    method: str
    path: str
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


class ClientLog:
    """An ASGI wrapper around the gateway app recording what the CLI asked and got."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.exchanges: list[ClientExchange] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:  # starlette_app, state... of the real app
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = ClientExchange(scope["method"], scope["path"])
        with self._lock:
            self.exchanges.append(exchange)

        async def record(message: Any) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                exchange.headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
            await send(message)

        await self.app(scope, receive, record)

    def messages(self) -> list[ClientExchange]:
        """The ``POST /v1/messages`` exchanges, in order."""
        with self._lock:
            return [e for e in self.exchanges if e.method == "POST" and e.path == "/v1/messages"]

    def clear(self) -> None:
        with self._lock:
            self.exchanges.clear()


@dataclass
class Stack:
    """A fake upstream of one flavor behind a running gateway."""

    upstream: FakeUpstream
    gateway: GatewayServer
    max_tokens: int
    client: ClientLog
    """What the CLI sent to the gateway and the statuses it got back."""

    @property
    def flavor(self) -> str:
        return self.upstream.flavor

    def play(self, root: Path, prompt: str, steps: Sequence[Step], **kwargs: Any) -> tuple[ClaudeRun, ScriptedModel]:
        """Reset the upstream, script it with ``steps``, run the CLI once."""
        model = ScriptedModel(list(steps))
        self.upstream.reset()
        self.client.clear()
        self.upstream.script = model
        run = run_claude(self.gateway.base_url, prompt, root, **kwargs)
        assert not self.upstream.errors, f"fake upstream errors: {self.upstream.errors!r}"
        return run, model


def open_stack(flavor: str) -> Iterator[Stack]:
    with FakeUpstream(flavor) as up:
        models, limit = models_for(up)
        config = config_from({"models": models})
        client = ClientLog(create_app(config))
        with GatewayServer(config, app=client) as gw:
            yield Stack(up, gw, limit, client)

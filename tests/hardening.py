"""Helpers shared by the hardening tests (tests/test_hardening_*.py): a gateway with
test plugins registered for one test, both client APIs spoken over plain httpx, and
a fake upstream that breaks a stream in ways the standard fakes do not."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from clasp_gateway import hookimpl
from clasp_gateway.plugins import PluginManager
from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import GATEWAY_KEY, FakeUpstream, GatewayServer, config_from

UPSTREAM_KEY = "sk-upstream-test-1234567890"
APIS = ["anthropic", "openai"]


def deployment(base_url: str, ident: str, **extra: Any) -> dict[str, Any]:
    """A deployment of the test chain, pointing at a fake upstream."""
    return {"id": ident, "model": "openai/gpt-4o-mini", "api_base": base_url, "api_key": UPSTREAM_KEY, **extra}


def chain(primary: str, secondary: str | None = None, **primary_extra: Any) -> dict[str, Any]:
    """``models:`` with one public name, ``chain``: primary, then (maybe) secondary."""
    deployments = [deployment(primary, "primary", **primary_extra)]
    if secondary is not None:
        deployments.append(deployment(secondary, "secondary"))
    return {"chain": deployments}


class Witness:
    """Records every event and request id it sees (to show other plugins still run)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    @hookimpl
    def record(self, ctx: Any, event: dict[str, Any]) -> None:
        self.events.append(event)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == kind]


@contextmanager
def serving(models: dict[str, Any], *plugins: Any, **config: Any) -> Iterator[GatewayServer]:
    """A real gateway (installed plugins, the Claude one included) with ``plugins``
    registered for the duration, then unregistered."""
    pm = PluginManager()
    pm.load(entry_points=True)
    for plugin in plugins:
        pm.register(plugin)
    try:
        cfg = config_from({"models": models, **config})
        with GatewayServer(cfg, create_app(cfg, pm)) as server:
            yield server
    finally:
        for plugin in plugins:
            if pm.is_registered(plugin):
                pm.unregister(plugin)


def call(
    server: GatewayServer, api: str, *, stream: bool = False, key: str | None = GATEWAY_KEY,
    model: str = "chain", content: str = "hi", raw: bytes | None = None,
) -> httpx.Response:
    """One request on ``api`` ("anthropic": /v1/messages, "openai": /v1/chat/completions)."""
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["x-api-key" if api == "anthropic" else "authorization"] = key if api == "anthropic" else f"Bearer {key}"
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}
    if api == "anthropic":
        body["max_tokens"] = 256
        path = "/v1/messages"
    else:
        path = "/v1/chat/completions"
    data = raw if raw is not None else orjson.dumps(body)
    return httpx.post(server.base_url + path, content=data, headers=headers, timeout=30)


def sse_data(response: httpx.Response) -> list[Any]:
    """The ``data:`` payloads of an SSE answer, parsed (``[DONE]`` kept as a string)."""
    out: list[Any] = []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            payload = line[6:]
            out.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return out


def answer_text(api: str, stream: bool, response: httpx.Response) -> str:
    """The assistant text of an answer, in either API, streamed or not."""
    assert response.status_code == 200, response.text
    if not stream:
        data = response.json()
        if api == "anthropic":
            return "".join(b.get("text", "") for b in data["content"] if b["type"] == "text")
        return str(data["choices"][0]["message"]["content"] or "")
    text = []
    for item in sse_data(response):
        if not isinstance(item, dict):
            continue
        if api == "anthropic":
            if item.get("type") == "content_block_delta" and item["delta"].get("type") == "text_delta":
                text.append(item["delta"]["text"])
        else:
            for choice in item.get("choices") or ():
                text.append(choice["delta"].get("content") or "")
    return "".join(text)


def ended_cleanly(api: str, response: httpx.Response) -> bool:
    """Whether a streamed answer ends with its terminal event (and no error event)."""
    data = sse_data(response)
    if api == "anthropic":
        types = [d.get("type") for d in data if isinstance(d, dict)]
        return bool(types) and types[-1] == "message_stop" and "error" not in types
    return bool(data) and data[-1] == "[DONE]" and not any(isinstance(d, dict) and "error" in d for d in data)


def chat_requests(up: FakeUpstream) -> int:
    """How many chat calls a fake upstream received."""
    return sum(1 for r in up.requests if r.path.endswith("/chat/completions"))


def access_lines(caplog: pytest.LogCaptureFixture, request_id: str, *, wait: float = 5.0) -> list[str]:
    """The ``clasp.access`` lines of ``request_id`` (the line is written just after the
    answer ended, so wait for it to appear)."""
    deadline = time.monotonic() + wait
    while True:
        lines = [r.getMessage() for r in caplog.records
                 if r.name == "clasp.access" and r.getMessage().startswith(request_id + " ")]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


class BrokenStreamUpstream:
    """An OpenAI-compatible upstream whose streams say a valid role-only chunk, then
    fail in one of three ways: ``"error"`` (an in-stream ``{"error": ...}`` event),
    ``"garbage"`` (bytes that are not JSON) or ``"cut"`` (the connection is reset)."""

    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.calls = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        await request.read()
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        role = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        await response.write(b"data: " + orjson.dumps(role) + b"\n\n")
        await asyncio.sleep(0.01)
        if self.fault == "error":
            error = {"error": {"message": "the model is overloaded", "type": "server_error", "code": 503}}
            await response.write(b"data: " + orjson.dumps(error) + b"\n\n")
        elif self.fault == "garbage":
            await response.write(b'data: {"choices": [{"delta": {"content": "trunc\n\n')
        else:
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def __enter__(self) -> BrokenStreamUpstream:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self.port = int(sock.getsockname()[1])
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self._handle)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

"""Every hook in hookspecs.py, exercised through a real gateway by a test plugin."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import openai
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from clasp_gateway import hookimpl, registrations
from clasp_gateway.errors import AuthenticationError, RateLimitError
from clasp_gateway.plugins import PluginManager
from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import GATEWAY_KEY, Error, FakeUpstream, GatewayServer, Text, config_from, openai_models
from clasp_gateway.types import Principal


class EchoProvider:
    """A provider adapter registered by a plugin: answers with the last user message."""

    async def open(self, deployment: Any, body: dict[str, Any], *, stream: bool) -> AsyncIterator[dict[str, Any]]:
        text = body["messages"][-1]["content"]
        yield {"choices": [{"index": 0, "delta": {"role": "assistant", "content": f"echo: {text}"}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


class Recorder:
    """Implements every hook and remembers what it saw."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.chunks = 0
        self.skip: set[str] = set()
        self.retry_once = False
        self.exhausted_answer: Any = None

    @hookimpl
    def register_routes(self, register: Callable[..., None]) -> None:
        async def hello(request: Request) -> PlainTextResponse:
            return PlainTextResponse("hello from a plugin")

        register("/x-hello", hello, methods=["GET"])

    @hookimpl
    def register_providers(self, register: Callable[..., None]) -> None:
        register("echo", EchoProvider())

    @hookimpl
    def register_routing_strategies(self, register: Callable[..., None]) -> None:
        register("reverse", lambda ctx, deployments: list(reversed(deployments)))

    @hookimpl
    def register_commands(self, register: Callable[..., None]) -> None:
        register("hello", lambda argv, config_path: 0, "say hello")

    @hookimpl
    def register_cache_backends(self, register: Callable[..., None]) -> None:
        register("dict", lambda **options: dict(options))

    @hookimpl
    def startup(self, app: Any, config: Any) -> Any:
        async def start() -> None:
            self.calls.append("startup")

        return start()

    @hookimpl
    def shutdown(self, app: Any) -> None:
        self.calls.append("shutdown")

    @hookimpl
    def asgi_wrapper(self, config: Any) -> Any:
        def wrap(app: Any) -> Any:
            async def wrapped(scope: Any, receive: Any, send: Any) -> None:
                async def send_with_header(message: Any) -> None:
                    if message["type"] == "http.response.start":
                        message.setdefault("headers", []).append((b"x-wrapped", b"yes"))
                    await send(message)

                await app(scope, receive, send_with_header)

            return wrapped

        return wrap

    @hookimpl
    def authenticate(self, api_key: str | None, headers: dict[str, str], config: Any) -> Principal | None:
        if api_key == "plugin-key":
            return Principal(key_id="p1", name="from-plugin", team="plugins")
        if api_key == "banned":
            raise AuthenticationError("this key is banned by a plugin")
        return None

    @hookimpl
    def resolve_route(self, ctx: Any, request: Any, candidates: list[Any]) -> list[Any] | None:
        self.calls.append("resolve_route")
        if request["messages"][-1].get("content") == "reverse":
            return list(reversed(candidates))
        return None

    @hookimpl
    def before_call(self, ctx: Any, request: Any) -> Any:
        if request["messages"][-1].get("content") == "cached":
            return [{"choices": [{"index": 0, "delta": {"content": "from cache"}, "finish_reason": "stop"}]}]
        return None

    @hookimpl
    def before_attempt(self, ctx: Any, deployment: Any, attempt_number: int) -> bool:
        self.calls.append(f"before_attempt:{deployment.id}")
        return deployment.id not in self.skip

    @hookimpl
    def on_error(self, ctx: Any, deployment: Any, error: Exception, attempt_number: int) -> Any:
        self.calls.append(f"on_error:{attempt_number}")
        if self.retry_once and attempt_number == 1:
            return 0.0
        return None

    @hookimpl
    def on_exhausted(self, ctx: Any, request: Any, error: Exception) -> Any:
        self.calls.append(f"on_exhausted:{type(error).__name__}")
        if self.exhausted_answer == "canned":
            ctx.response_headers["x-clasp-degraded"] = "canned-by-test"
            return [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": "canned"},
                                  "finish_reason": "stop"}]}]
        return self.exhausted_answer

    @hookimpl
    def after_attempt(self, ctx: Any, attempt: Any) -> None:
        self.calls.append(f"after_attempt:{attempt.ok}")

    @hookimpl
    def on_stream_chunk(self, ctx: Any, chunk: Any) -> None:
        self.chunks += 1

    @hookimpl
    def record(self, ctx: Any, event: dict[str, Any]) -> None:
        self.events.append(event)


@pytest.fixture
def setup() -> Any:
    with FakeUpstream("openai") as first, FakeUpstream("openai") as second:
        recorder = Recorder()
        pm = PluginManager()
        pm.load(entry_points=False)
        pm.register(recorder, name="recorder")
        models = {
            "chain": openai_models(first.base_url)["*"] + openai_models(second.base_url, {"*": "gpt-4o-mini"})["*"],
            "echo": [{"model": "echo/anything"}],
        }
        config = config_from({"models": models})
        with GatewayServer(config, create_app(config, pm)) as server:
            yield server, recorder, first, second
        assert recorder.calls[-1] == "shutdown"


def chat(server: GatewayServer, content: str, model: str = "chain", key: str = GATEWAY_KEY, stream: bool = False) -> Any:
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)
    messages = [{"role": "user", "content": content}]
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=model, messages=messages, stream=True) if c.choices)  # type: ignore[arg-type]
    return client.chat.completions.create(model=model, messages=messages).choices[0].message.content  # type: ignore[arg-type]


def test_registration_and_lifecycle_hooks(setup: Any) -> None:
    server, recorder, _, _ = setup
    assert recorder.calls[0] == "startup"
    response = httpx.get(server.base_url + "/x-hello")
    assert response.text == "hello from a plugin" and response.headers["x-wrapped"] == "yes"
    assert "reverse" in server.gateway.strategies
    backend = server.gateway.cache_backends["dict"]  # what a cache plugin builds its store with
    assert backend.plugin == "recorder" and backend.factory(limits=1) == {"limits": 1}
    assert [(r.name, r.help, r.plugin) for r in registrations.commands(server.gateway.pm)] == [
        ("hello", "say hello", "recorder")]
    assert chat(server, "hi", model="echo") == "echo: hi"
    names = {p["name"] for p in httpx.get(server.base_url + "/-/plugins",
                                           headers={"x-api-key": GATEWAY_KEY}).json()}
    assert {"recorder", "clasp_gateway.defaults"} <= names


def test_authenticate_hook_precedes_the_default(setup: Any) -> None:
    server, recorder, first, _ = setup
    first.queue(Text("ok"))
    assert chat(server, "hi", key="plugin-key") == "ok"
    assert recorder.events[-1]["team"] == "plugins"
    with pytest.raises(openai.AuthenticationError, match="banned by a plugin"):
        chat(server, "hi", key="banned")


def test_route_cache_and_attempt_hooks(setup: Any) -> None:
    server, recorder, first, second = setup
    second.queue(Text("second first"))
    assert chat(server, "reverse") == "second first"
    assert chat(server, "cached") == "from cache"
    assert not first.requests

    recorder.skip = {server.gateway.config.models[0].deployments[0].id}
    second.queue(Text("skipped the first"))
    assert chat(server, "hi") == "skipped the first"
    recorder.skip = set()

    recorder.retry_once = True
    first.queue(Error(500), Text("after a retry"))
    assert chat(server, "hi", stream=True) == "after a retry"
    assert "on_error:1" in recorder.calls
    assert recorder.chunks > 0
    # The client has the whole stream before the gateway finishes recording it.
    deadline = time.monotonic() + 10
    while not any(e["kind"] == "request" and len(e["attempts"]) == 2 for e in recorder.events):
        assert time.monotonic() < deadline, recorder.events
        time.sleep(0.01)
    kinds = [e["kind"] for e in recorder.events]
    assert "attempt" in kinds and "request" in kinds
    last = [e for e in recorder.events if e["kind"] == "request"][-1]
    assert [a["ok"] for a in last["attempts"]] == [False, True]
    assert "after_attempt:False" in recorder.calls and "after_attempt:True" in recorder.calls


def test_on_exhausted_hook_degrades_or_replaces_the_error(setup: Any) -> None:
    server, recorder, first, second = setup
    client = httpx.Client(base_url=server.base_url, headers={"x-api-key": GATEWAY_KEY})
    body = {"model": "chain", "messages": [{"role": "user", "content": "hi"}]}

    first.queue(Error(503))
    second.queue(Error(503))
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 529 and "on_exhausted:UpstreamError" in recorder.calls

    recorder.exhausted_answer = "canned"
    first.queue(Error(500))
    second.queue(Error(500))
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "canned"
    assert response.headers["x-clasp-degraded"] == "canned-by-test"

    # Nothing tried at all (every deployment skipped): the hook sees a 529.
    recorder.skip = {d.id for d in server.gateway.config.models[0].deployments}
    recorder.exhausted_answer = RateLimitError("replaced by a plugin")
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 429 and "replaced by a plugin" in response.text
    assert "on_exhausted:OverloadedError" in recorder.calls
    recorder.skip = set()
    client.close()

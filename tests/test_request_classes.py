"""Request classes through a real gateway: computed once per request, in the core,
for both APIs, and read by everyone (``record`` events, the access line, server tools,
clasp-fallback's ``tasks``).

Unit tests of the classifier itself are in ``test_classes.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from clasp_gateway import ConfigError, RequestFeatures, hookimpl
from clasp_gateway.plugins import PluginManager
from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import GATEWAY_KEY, FakeUpstream, GatewayServer, Text, ToolCalls, config_from, openai_models
from tests.hardening import access_lines
from tests.test_context import SYSTEM, TOOLS, claude_code_messages

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
UPSTREAM_KEY = "sk-upstream-test-1234567890"
OPENAI_TOOLS = [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                                  "parameters": t["input_schema"]}} for t in TOOLS]
LONG = "a sentence of a long document that goes on. " * 100  # ~1,100 tokens by the estimate


class Witness:
    """Records every event and the class the context had when each hook ran."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.routed: list[tuple[str, frozenset[str]]] = []

    @hookimpl
    def resolve_route(self, ctx: Any, request: Any, candidates: list[Any]) -> None:
        self.routed.append((ctx.request_class, ctx.traits))

    @hookimpl
    def record(self, ctx: Any, event: dict[str, Any]) -> None:
        self.events.append(event)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]


class ReviewClass:
    """A plugin class: a coding turn before any tool ran (the start of a review)."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def register_request_classes(self, register: Callable[..., Any]) -> None:
        register("review", self.review, "a coding turn before any tool ran")
        register(name="counted", predicate=self.count, after="background")

    def review(self, features: RequestFeatures) -> bool:
        return features.tools > 0 and features.tool_results == 0 and features.max_tokens == 777

    def count(self, features: RequestFeatures) -> bool:
        self.calls += 1
        return False


def serve(upstream: FakeUpstream, *plugins: tuple[str, Any], entry_points: bool = False, **top: Any) -> GatewayServer:
    pm = PluginManager()
    pm.load(entry_points=entry_points)
    for name, plugin in plugins:
        pm.register(plugin, name=name)
    config = config_from({"models": openai_models(upstream.base_url), **top})
    return GatewayServer(config, create_app(config, pm))


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only clasp-claude of the installed plugins (the Anthropic route)."""
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "claude")


def anthropic_body(kind: str) -> dict[str, Any]:
    user: Any = "What is a monad?"
    body: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 1000}
    if kind == "background":
        body["max_tokens"] = 1  # Claude Code's quota probe
    elif kind == "long_context":
        user = LONG
    elif kind == "images":
        user = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                {"type": "text", "text": "What is in this picture?"}]
    elif kind == "thinking":
        body.update(max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 2000})
    elif kind == "coding":
        body.update(system=SYSTEM, tools=TOOLS)
        user = "Run the tests."
    return {**body, "messages": [{"role": "user", "content": user}]}


def openai_body(kind: str) -> dict[str, Any]:
    user: Any = "What is a monad?"
    body: dict[str, Any] = {"model": "gpt-4o", "max_tokens": 1000}
    if kind == "background":
        body["max_tokens"] = 30  # a title
    elif kind == "long_context":
        user = LONG
    elif kind == "images":
        user = [{"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]
    elif kind == "thinking":
        body["reasoning_effort"] = "high"
    elif kind == "coding":
        body["tools"] = OPENAI_TOOLS
        user = "Run the tests."
    return {**body, "messages": [{"role": "user", "content": user}]}


def post(server: GatewayServer, api: str, body: dict[str, Any]) -> httpx.Response:
    if api == "anthropic":
        headers = {"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"}
        return httpx.post(server.base_url + "/v1/messages", json=body, headers=headers, timeout=30)
    headers = {"authorization": f"Bearer {GATEWAY_KEY}"}
    return httpx.post(server.base_url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


CLASSES = ["background", "long_context", "images", "thinking", "coding", "question"]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as fake:
        yield fake


@pytest.mark.parametrize("api", ["anthropic", "openai"])
def test_each_class_reaches_the_record_events_and_the_access_line(
    api: str, upstream: FakeUpstream, claude: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clasp.access")
    witness = Witness()
    # A small long-context threshold, so a test request can be one (``classes:``).
    with serve(upstream, ("witness", witness), entry_points=True, classes={"long_context_tokens": 1000}) as server:
        for kind in CLASSES:
            response = post(server, api, anthropic_body(kind) if api == "anthropic" else openai_body(kind))
            assert response.status_code == 200, response.text
            request = witness.kind("request")[-1]
            attempt = witness.kind("attempt")[-1]
            assert (request["request_class"], attempt["request_class"]) == (kind, kind), (api, request)
            assert kind in request["traits"] and "question" in request["traits"]
            assert witness.routed[-1][0] == kind  # already set when routing ran
            [line] = access_lines(caplog, response.headers["request-id"])
            assert f" class={kind} " in line
    # A request that never reached the pipeline has no class: the line says so.
    with serve(upstream, entry_points=True) as server:
        response = post(server, api, {"model": "gpt-4o"})
        assert response.status_code == 400
        [line] = access_lines(caplog, response.headers["request-id"])
        assert " class=- " in line


def test_traits_hold_every_class_that_matched(upstream: FakeUpstream, claude: None) -> None:
    witness = Witness()
    with serve(upstream, ("witness", witness), entry_points=True, classes={"long_context_tokens": 1000}) as server:
        body = anthropic_body("coding")
        body["messages"][0]["content"] = [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                       "data": PNG}}, {"type": "text", "text": LONG}]
        assert post(server, "anthropic", body).status_code == 200
    event = witness.kind("request")[-1]
    assert event["request_class"] == "long_context"
    assert event["traits"] == ["coding", "images", "long_context", "question"]


def test_a_plugin_class_takes_priority_over_the_built_in_ones(upstream: FakeUpstream, claude: None) -> None:
    witness, review = Witness(), ReviewClass()
    with serve(upstream, ("witness", witness), ("review", review), entry_points=True) as server:
        gateway = server.gateway
        assert gateway.classifier.names[:3] == ["review", "background", "counted"]
        for api, make in (("anthropic", anthropic_body), ("openai", openai_body)):
            body = make("coding")
            body["max_tokens"] = 777
            assert post(server, api, body).status_code == 200
            event = witness.kind("request")[-1]
            assert event["request_class"] == "review" and {"review", "coding"} <= set(event["traits"])
            assert post(server, api, make("coding")).status_code == 200  # other max_tokens: not a review
            assert witness.kind("request")[-1]["request_class"] == "coding"


def test_fallback_tasks_route_by_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fallback.tasks`` keys are request classes: built-in ones and a plugin's."""
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "fallback,claude")
    with FakeUpstream("openai") as main, FakeUpstream("openai") as cheap, FakeUpstream("openai") as strong:
        for fake, text in ((main, "main"), (cheap, "cheap"), (strong, "strong")):
            fake.script = lambda body, rec, text=text: Text(f"from {text}")

        def dep(fake: FakeUpstream, ident: str) -> dict[str, Any]:
            return {"id": ident, "model": "openai/gpt-4o", "api_base": fake.base_url, "api_key": UPSTREAM_KEY}

        models = {"claude-sonnet-4-5": [dep(main, "main")], "gpt-4o": [dep(main, "main")],
                  "cheap": [dep(cheap, "cheap")], "strong": [dep(strong, "strong")]}
        pm = PluginManager()
        pm.load()
        pm.register(ReviewClass(), name="review")
        tasks = {"background": ["cheap"], "review": {"chain": ["strong"], "then_model_chain": False}}
        config = config_from({"models": models, "fallback": {"tasks": tasks}})
        with GatewayServer(config, create_app(config, pm)) as server:
            for api, make in (("anthropic", anthropic_body), ("openai", openai_body)):
                def text(response: httpx.Response, api: str = api) -> str:
                    data = response.json()
                    return str(data["content"][0]["text"] if api == "anthropic" else data["choices"][0]["message"]["content"])

                assert text(post(server, api, make("background"))) == "from cheap"
                assert text(post(server, api, make("question"))) == "from main"
                review = make("coding")
                review["max_tokens"] = 777
                assert text(post(server, api, review)) == "from strong"

        # A task chain for a class nobody defines is a configuration error.
        pm = PluginManager()
        pm.load()
        with pytest.raises(ConfigError, match=r"fallback.tasks.review: not a request class"):
            create_app(config, pm)


def test_a_request_is_classified_once_with_server_tools_and_a_context_summary(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """One client request: a summariser call, two upstream rounds (a server tool ran
    between them). The classifier ran once, and every event carries its answer."""
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "claude")

    class Tools:
        @hookimpl
        def register_tools(self, register: Callable[..., Any]) -> None:
            register("whoami", "Who is calling", {"type": "object", "properties": {}}, lambda args, ctx: "qa")

    witness, review = Witness(), ReviewClass()
    with FakeUpstream("openai") as up, FakeUpstream("openai") as cheap:
        cheap.script = lambda body, rec: Text("The user fixed handlers 0-5.")
        up.queue(ToolCalls([("whoami", {})]), Text("Done."))
        models = {
            "claude-*": {"deployments": [{"id": "small", "model": "openai/small-model", "api_base": up.base_url,
                                          "api_key": UPSTREAM_KEY, "max_input_tokens": 3000, "max_output_tokens": 512}],
                         "context": {"summarize_with": "summarizer", "summary_max_tokens": 200}},
            "cheap": [{"id": "summarizer", "model": "openai/cheap-model", "api_base": cheap.base_url,
                       "api_key": UPSTREAM_KEY}],
        }
        pm = PluginManager()
        pm.load()
        for name, plugin in (("witness", witness), ("review", review), ("tools", Tools())):
            pm.register(plugin, name=name)
        config = config_from({"models": models, "server_tools": {"enabled": ["whoami"]}})
        with GatewayServer(config, create_app(config, pm)) as server:
            body = {"model": "claude-sonnet-4-5", "max_tokens": 400, "system": SYSTEM, "tools": TOOLS,
                    "messages": claude_code_messages(8)}
            response = post(server, "anthropic", body)
            assert response.status_code == 200, response.text
            assert response.json()["content"][0]["text"] == "Done."
            assert response.headers["x-clasp-context"].startswith("summarized;")
    assert review.calls == 1
    assert len(witness.kind("context_summary")) >= 1 and len(witness.kind("tool_call")) == 1
    attempts = witness.kind("attempt")
    assert len(attempts) == 2 and {a["request_class"] for a in attempts} == {"coding"}
    assert witness.kind("request")[-1]["request_class"] == "coding"
    assert {cls for cls, _ in witness.routed} == {"coding"} and len(witness.routed) == 2  # both rounds


CLAUDE_CODE_TITLE: dict[str, Any] = {
    # Claude Code 2.1.331's session title, as its interactive TUI sent it (system texts cut).
    "model": "claude-opus-5-5",
    "messages": [{"role": "user", "content": [{"type": "text", "text": (
        "<session>\nwrite a haiku about rivers\n</session>\n\nWrite the title in the predominant language of the "
        "session \u2014 a stray word or code token in another language doesn't change it, and neither does the "
        "English of these instructions.")}]}],
    "system": [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.331.950; cc_entrypoint=cli;"},
        {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
        {"type": "text", "text": "You are naming a coding session so the user can pick it out of a long list of "
                                 "sessions. The title is a name for what the session is about..."},
    ],
    "metadata": {"user_id": "{\"device_id\":\"0a1e\",\"account_uuid\":\"\",\"session_id\":\"57ee\"}"},
    "max_tokens": 128000,
    "output_config": {"effort": "medium", "format": {"type": "json_schema", "schema": {
        "type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"],
        "additionalProperties": False}}},
    "stream": True,
}


def test_claude_codes_own_requests_get_their_classes(upstream: FakeUpstream, claude: None) -> None:
    """The shapes Claude Code 2.1.331 sends (seen by running its TUI against the gateway):
    its session title is ``background`` (no tools, a JSON schema, ``max_tokens: 128000``
    and an effort), its quota probe too (``max_tokens: 1``), and its main turns, which
    always carry an effort or ``thinking``, are ``coding``."""
    witness = Witness()
    main_turn = {"model": "claude-opus-5-5", "max_tokens": 128000, "stream": True, "system": SYSTEM, "tools": TOOLS,
                 "thinking": {"type": "adaptive"}, "output_config": {"effort": "medium"},
                 "context_management": {"edits": []}, "messages": [{"role": "user", "content": "fix the login bug"}]}
    probe = {"model": "claude-haiku-4-5", "max_tokens": 1, "messages": [{"role": "user", "content": "quota"}]}
    with serve(upstream, ("witness", witness), entry_points=True) as server:
        for body, expected in ((CLAUDE_CODE_TITLE, "background"), (probe, "background"), (main_turn, "coding")):
            response = post(server, "anthropic", body)
            assert response.status_code == 200, response.text
            assert witness.kind("request")[-1]["request_class"] == expected, body
    sent = upstream.requests[0].json
    assert "response_format" not in sent and "output_config" not in sent  # a fact for the classes only


def test_the_classes_section_is_checked_and_has_finite_defaults() -> None:
    config = config_from({"models": {}})
    assert (config.classes.background_max_tokens, config.classes.long_context_tokens) == (512, 100_000)
    with pytest.raises(ConfigError) as info:
        config_from({"models": {}, "classes": {"background_max_tokens": -1, "long_context_tokens": "lots",
                                                "long_context": 5}})
    assert [p.split(":")[0] for p in info.value.problems] == [
        "classes.long_context", "classes.background_max_tokens", "classes.long_context_tokens"]
    assert "did you mean 'long_context_tokens'?" in info.value.problems[0]
    config = config_from({"models": {}, "classes": {"background_max_tokens": 0}})  # 0: never by size alone
    assert config.classes.background_max_tokens == 0

"""Server-side tools (server_tools.py, the register_tools hook, the clasp-tool-docs plugin)
through a real gateway and a fake upstream, on /v1/messages and /v1/chat/completions."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from clasp_gateway import hookimpl
from clasp_gateway.plugins import PluginManager
from clasp_gateway.shaping.server_tools import LIMIT_NOTICE, TOOL_ERROR_PREFIX, ServerToolsError, ToolContext
from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import (
    GATEWAY_KEY,
    Error,
    FakeUpstream,
    GatewayServer,
    Text,
    ToolCalls,
    config_from,
    openai_models,
)

WEATHER: list[Any] = [{
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]
QUESTION: Any = [{"role": "user", "content": "How do I roll back a deploy?"}]
DEPLOY_MD = """# Deploys

Deploys go out with `deployctl ship` from the bastion host.

## Rolling back

Run `deployctl rollback --to previous` from the bastion host. A rollback takes
about 4 minutes; watch the #deploys channel.

## Canary

Every deploy starts on 5% of the fleet for 10 minutes.
"""
PYTHON_MD = "# Python conventions\n\nFormat with ruff; type everything; no bare except.\n"


class ToolPlugin:
    """Registers test tools and records what the gateway reports."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.contexts: list[tuple[ToolContext, bool]] = []
        self.before_calls = 0
        self.rounds: list[dict[str, Any]] = []

    @hookimpl
    def register_tools(self, register: Callable[..., None]) -> None:
        empty = {"type": "object", "properties": {}}
        register("boom", "Always fails", empty, self.boom)
        register("slow", "Takes too long", empty, self.slow)
        register("whoami", "Who is calling", empty, self.whoami)

    def boom(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        raise RuntimeError("the ticket database is down")

    async def slow(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        await asyncio.sleep(10)
        return "too late"

    def whoami(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        in_worker = threading.current_thread() is not threading.main_thread()
        self.contexts.append((ctx, in_worker))
        return f"team={ctx.request.principal.team if ctx.request.principal else None} round={ctx.round}"

    @hookimpl
    def before_call(self, ctx: Any, request: Any) -> None:
        self.before_calls += 1

    @hookimpl
    def before_round(self, ctx: Any, request: Any) -> None:
        self.rounds.append(request["messages"][-1])

    @hookimpl
    def record(self, ctx: Any, event: dict[str, Any]) -> None:
        self.events.append(event)

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "company-docs"
    (root / "runbooks").mkdir(parents=True)
    (root / "runbooks" / "deploy.md").write_text(DEPLOY_MD)
    (root / "conventions").mkdir()
    (root / "conventions" / "python.md").write_text(PYTHON_MD)
    return root


Serve = Callable[..., tuple[GatewayServer, ToolPlugin]]


@pytest.fixture
def serve(upstream: FakeUpstream, docs: Path) -> Iterator[Serve]:
    """Start a gateway with the installed plugins (clasp-tool-docs included) plus ToolPlugin."""
    servers: list[GatewayServer] = []

    def start(server_tools: dict[str, Any] | None = None, **extra: Any) -> tuple[GatewayServer, ToolPlugin]:
        plugin = ToolPlugin()
        pm = PluginManager()
        pm.load()
        pm.register(plugin, name="test-tools")
        data = {
            "models": openai_models(upstream.base_url),
            "docs_lookup": {"path": str(docs)},
            "server_tools": {"enabled": ["docs_lookup"], **(server_tools or {})},
            **extra,
        }
        config = config_from(data)
        server = GatewayServer(config, create_app(config, pm)).start()
        servers.append(server)
        return server, plugin

    yield start
    for server in servers:
        server.stop()


def claude(server: GatewayServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=GATEWAY_KEY, max_retries=0)


def tool_names(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in body.get("tools") or []]


def test_docs_lookup_runs_on_the_gateway_and_the_client_sees_one_answer(serve: Serve, upstream: FakeUpstream) -> None:
    server, plugin = serve()
    upstream.queue(
        ToolCalls([("docs_lookup", {"query": "roll back deploy"})], text="Let me check the runbook.", usage=(300, 20)),
        Text("Run `deployctl rollback --to previous` on the bastion.", usage=(420, 15)),
    )
    with claude(server).messages.stream(
        model="claude-sonnet-4-5", max_tokens=1000, messages=QUESTION, tools=WEATHER,  # type: ignore[arg-type]
    ) as stream:
        events = [event.type for event in stream]
        message = stream.get_final_message()

    # One seamless answer: text of both rounds, no trace of the server tool.
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == (  # type: ignore[union-attr]
        "Let me check the runbook.\n\nRun `deployctl rollback --to previous` on the bastion."
    )
    assert message.stop_reason == "end_turn"
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert message.usage.input_tokens == 720 and message.usage.output_tokens == 35  # summed over rounds

    first, second = upstream.requests
    assert tool_names(first.body) == ["get_weather", "docs_lookup"]
    assert tool_names(second.body) == tool_names(first.body)  # same offer every round
    *_, assistant, result = second.body["messages"]
    assert assistant["role"] == "assistant" and assistant["content"] == "Let me check the runbook."
    [call] = assistant["tool_calls"]
    assert call["function"]["name"] == "docs_lookup" and json.loads(call["function"]["arguments"]) == {
        "query": "roll back deploy"}
    assert result["role"] == "tool" and result["tool_call_id"] == call["id"]
    assert result["content"].startswith("3 result(s) for 'roll back deploy' in the company docs:")
    assert "\n[1] runbooks/deploy.md — Deploys › Rolling back\n" in result["content"]  # best first
    assert "deployctl rollback --to previous" in result["content"]

    [tool_event] = plugin.kinds("tool_call")
    assert tool_event["name"] == "docs_lookup" and tool_event["ok"] is True and tool_event["round"] == 1
    assert tool_event["duration_ms"] >= 0 and tool_event["team"] == "qa"
    attempts = plugin.kinds("attempt")
    assert len(attempts) == 2 and all(a["ok"] for a in attempts)
    [request] = plugin.kinds("request")
    assert request["usage"]["input_tokens"] == 720 and request["usage"]["output_tokens"] == 35
    assert request["status"] == 200 and len(request["attempts"]) == 2
    assert plugin.before_calls == 1  # once per client request, not per round
    # before_round: once per later round, with what the gateway added (the tool's result).
    assert plugin.rounds == [result]


def test_iterations_are_bounded(serve: Serve, upstream: FakeUpstream) -> None:
    server, plugin = serve({"max_iterations": 2})
    upstream.script = lambda body, rec: ToolCalls([("docs_lookup", {"query": "canary"})])
    message = claude(server).messages.create(model="claude-sonnet-4-5", max_tokens=1000, messages=QUESTION)  # type: ignore[arg-type]
    assert len(upstream.requests) == 3  # two rounds of tools, then the model had to stop
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == LIMIT_NOTICE.format(n=2)  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert [(e["round"], e["ok"]) for e in plugin.kinds("tool_call")] == [(1, True), (2, True), (3, False)]
    assert "max_iterations" in plugin.kinds("tool_call")[-1]["error"]


def test_a_failing_or_slow_handler_becomes_an_error_result(serve: Serve, upstream: FakeUpstream) -> None:
    server, plugin = serve({"enabled": ["docs_lookup", "boom", "slow"], "timeout": 0.3})
    upstream.queue(
        ToolCalls([("boom", {}), ("slow", {})]),
        ToolCalls([("docs_lookup", '{"query": ')]),  # arguments the model cut short
        Text("The ticket system is unavailable right now."),
    )
    message = claude(server).messages.create(model="claude-sonnet-4-5", max_tokens=1000, messages=QUESTION)  # type: ignore[arg-type]
    assert message.content[0].text == "The ticket system is unavailable right now."  # type: ignore[union-attr]
    second, third = upstream.requests[1].body["messages"], upstream.requests[2].body["messages"]
    boom, slow = second[-2:]
    assert boom["content"] == TOOL_ERROR_PREFIX + "boom failed: the ticket database is down"
    assert slow["content"] == TOOL_ERROR_PREFIX + "slow did not finish within 0.3s"
    assert third[-1]["content"].startswith(TOOL_ERROR_PREFIX + "the arguments are not a JSON object")
    assert [(e["name"], e["ok"]) for e in plugin.kinds("tool_call")] == [
        ("boom", False), ("slow", False), ("docs_lookup", False)]
    assert plugin.kinds("request")[0]["status"] == 200


def test_server_and_client_calls_in_one_turn_run_the_server_tool_then_ask_again(
    serve: Serve, upstream: FakeUpstream
) -> None:
    server, plugin = serve()
    upstream.queue(
        ToolCalls([("get_weather", {"city": "Oslo"}), ("docs_lookup", {"query": "python conventions"})]),
        ToolCalls([("get_weather", {"city": "Oslo"})], text="The docs say: use ruff."),
    )
    with claude(server).messages.stream(
        model="claude-sonnet-4-5", max_tokens=1000, messages=QUESTION, tools=WEATHER,  # type: ignore[arg-type]
    ) as stream:
        message = stream.get_final_message()
    assert [block.type for block in message.content] == ["text", "tool_use"]
    tool = message.content[1]
    assert tool.name == "get_weather" and tool.input == {"city": "Oslo"}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    # The second round saw only the server call and its result; the client call the
    # model made before seeing the docs was never shown to the client.
    *_, assistant, result = upstream.requests[1].body["messages"]
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["docs_lookup"]
    assert "conventions/python.md" in result["content"] and "ruff" in result["content"]
    assert len(upstream.requests) == 2


def test_openai_route_streaming_and_not(serve: Serve, upstream: FakeUpstream) -> None:
    server, plugin = serve({"enabled": ["whoami"]})
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=GATEWAY_KEY, max_retries=0)
    upstream.queue(ToolCalls([("whoami", {})], usage=(100, 5)), Text("You are on team qa.", usage=(150, 6)))
    chunks = list(client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "who am I?"}], stream=True,
        stream_options={"include_usage": True},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You are on team qa."
    assert not any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1 and usage[0].prompt_tokens == 250 and usage[0].completion_tokens == 11
    assert upstream.requests[1].body["messages"][-1]["content"] == "team=qa round=1"
    ctx, in_worker = plugin.contexts[0]
    assert in_worker and ctx.request.api == "openai" and ctx.config is server.config

    upstream.queue(ToolCalls([("whoami", {})]), ToolCalls([("lookup", {"id": 7})], text="Looking."))
    completion = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "who am I?"}],
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Looking."
    [call] = choice.message.tool_calls or []
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"id": 7}  # type: ignore[union-attr]


def test_an_upstream_failure_in_a_later_round_is_a_clean_error(serve: Serve, upstream: FakeUpstream) -> None:
    server, plugin = serve()
    upstream.queue(ToolCalls([("docs_lookup", {"query": "deploy"})]), Error(400))
    with pytest.raises(anthropic.BadRequestError):
        claude(server).messages.create(model="claude-sonnet-4-5", max_tokens=1000, messages=QUESTION)  # type: ignore[arg-type]
    [request] = plugin.kinds("request")
    assert request["status"] == 400 and [a["ok"] for a in request["attempts"]] == [True, False]
    # Streaming: the answer had started (message_start), so it ends with an error event.
    upstream.queue(ToolCalls([("docs_lookup", {"query": "deploy"})]), Error(400))
    with httpx.stream("POST", server.base_url + "/v1/messages", headers={"x-api-key": GATEWAY_KEY}, json={
        "model": "claude-sonnet-4-5", "max_tokens": 1000, "messages": QUESTION, "stream": True,
    }) as response:
        lines = list(response.iter_lines())
    events = [line[7:] for line in lines if line.startswith("event: ")]
    assert events[-1] == "error" and "message_stop" not in events


def test_which_requests_get_server_tools(serve: Serve, upstream: FakeUpstream) -> None:
    def tools_offered(server: GatewayServer, model: str = "claude-sonnet-4-5", key: str = GATEWAY_KEY, **kw: Any) -> list[str]:
        upstream.queue(Text("ok"))
        kw.setdefault("max_tokens", 1000)
        anthropic.Anthropic(base_url=server.base_url, api_key=key, max_retries=0).messages.create(
            model=model, messages=QUESTION, **kw)  # type: ignore[arg-type]
        return tool_names(upstream.last.body)

    other_key = "clasp-other-key-0123456789"
    keys = [
        {"key": GATEWAY_KEY, "name": "tests", "team": "qa"},
        {"key": other_key, "name": "bot", "team": "qa", "metadata": {"server_tools": ["whoami"]}},
    ]
    server, _ = serve({"models": ["claude-*"], "teams": {"qa": ["docs_lookup", "whoami"]}}, keys=keys)
    assert tools_offered(server) == ["docs_lookup", "whoami"]  # the team's list
    assert tools_offered(server, key=other_key) == ["whoami"]  # the key's own list
    assert tools_offered(server, model="gpt-4o") == []  # not a model that gets server tools
    assert tools_offered(server, max_tokens=100) == []  # Claude Code's tiny background calls
    # The client's own docs_lookup wins: offered once, with the client's description.
    assert tools_offered(server, tools=[{**WEATHER[0], "name": "docs_lookup"}]) == ["docs_lookup", "whoami"]
    assert upstream.last.body["tools"][0]["function"]["description"] == "Weather for a city"
    assert tools_offered(server, tools=WEATHER, tool_choice={"type": "none"}) == ["get_weather"]


def test_configuration_is_checked_at_start(docs: Path) -> None:
    def build(section: Any) -> Any:
        config = config_from({"models": {"*": [{"model": "openai/gpt-4o", "api_key": "sk-x"}]}, "server_tools": section,
                              "docs_lookup": {"path": str(docs)}})
        return create_app(config).starlette_app.state.gateway  # type: ignore[attr-defined]

    assert build(None).server_tools is None  # nothing enabled: the pipeline skips the loop
    assert build({"enabled": []}).server_tools is None
    assert build({"enabled": ["docs_lookup"]}).server_tools is not None
    with pytest.raises(ServerToolsError, match=r"server_tools.enabled: no plugin registers a tool named 'docs_lokup'"):
        build({"enabled": ["docs_lokup"]})
    with pytest.raises(ServerToolsError) as info:
        build({"enabled": "docs_lookup", "max_iterations": 0, "timeout": "soon", "retries": 3})
    assert [p.split(":")[0] for p in info.value.problems] == [
        "server_tools.retries", "server_tools.enabled", "server_tools.max_iterations", "server_tools.timeout"]
    assert isinstance(info.value, RuntimeError)  # `clasp serve` prints it without a traceback


def test_registration_mistakes_name_the_tool() -> None:
    class Bad:
        @hookimpl
        def register_tools(self, register: Callable[..., None]) -> None:
            register("has space", "x", {"type": "object"}, lambda a, c: "")

    pm = PluginManager()
    pm.load(entry_points=False)
    pm.register(Bad())
    with pytest.raises(RuntimeError, match=r"tool name 'has space' must match"):
        create_app(config_from({"models": {}}), pm)


def test_pings_while_tools_run_and_a_client_that_leaves_stops_them(
    serve: Serve, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    import clasp_gateway.shaping.server_tools as server_tools

    monkeypatch.setattr(server_tools, "PING_INTERVAL", 0.05)
    server, plugin = serve({"enabled": ["slow"], "timeout": 0.4})
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1000, "messages": QUESTION, "stream": True}
    upstream.queue(ToolCalls([("slow", {})]), Text("Gave up waiting."))
    with httpx.stream("POST", server.base_url + "/v1/messages", json=body, headers={"x-api-key": GATEWAY_KEY}) as response:
        names = [line[7:] for line in response.iter_lines() if line.startswith("event: ")]
    assert names.count("ping") >= 4 and names[-1] == "message_stop"  # kept alive while the tool ran

    # The client leaves while the tool runs: the tool is cancelled and the request recorded.
    plugin.events.clear()
    upstream.queue(ToolCalls([("slow", {})]), Text("never read"))
    with httpx.stream("POST", server.base_url + "/v1/messages", json=body, headers={"x-api-key": GATEWAY_KEY}) as response:
        for line in response.iter_lines():
            if line == "event: ping":
                break
    for _ in range(100):
        if plugin.kinds("request"):
            break
        threading.Event().wait(0.02)
    [request] = plugin.kinds("request")
    assert request["status"] == 499 and plugin.kinds("tool_call") == []
    assert len(upstream.requests) == 3  # no second round for the client that left

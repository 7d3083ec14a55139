"""What the gateway refuses in a request body, and the work one request may cause
(issue 7, defects 8 and 17), on both APIs through a real gateway.

- ``max_tokens`` must be a positive integer up to 1,000,000 (below that it is
  clamped to the deployment's output limit);
- a ``tool_result`` must answer a ``tool_use`` of the message before it;
- at most ``server.max_messages`` messages;
- trimming a long conversation runs off the event loop, and what a trim remembers
  for the next turn is a few integers, whatever the request's size.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from clasp_gateway.pipeline import Gateway
from clasp_gateway.plugins import PluginManager
from clasp_gateway.shaping.context import plan as context_module
from clasp_gateway.shaping.context.groups import Boundary
from clasp_gateway.shell.limits import MAX_OUTPUT_TOKENS
from clasp_gateway.testing import GATEWAY_KEY, FakeUpstream, GatewayServer, Text, config_from
from clasp_gateway.types import RequestContext

UPSTREAM_KEY = "sk-upstream-test-1234567890"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as up:
        yield up


@pytest.fixture(scope="module")
def server(upstream: FakeUpstream) -> Iterator[GatewayServer]:
    models = {
        # gpt-4o: the catalogue knows its output limit (16,384); the other it does not.
        "known": [{"model": "openai/gpt-4o", "api_base": upstream.base_url, "api_key": UPSTREAM_KEY}],
        "*": [{"model": "openai/house-model", "api_base": upstream.base_url, "api_key": UPSTREAM_KEY}],
    }
    with GatewayServer(config_from({"models": models, "server": {"max_messages": 12}})) as gateway:
        yield gateway


def anthropic(server: GatewayServer, body: dict[str, Any], path: str = "/v1/messages") -> httpx.Response:
    return httpx.post(server.base_url + path, json=body, headers={"x-api-key": GATEWAY_KEY}, timeout=30)


def openai(server: GatewayServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.base_url + "/v1/chat/completions", json=body,
                      headers={"authorization": f"Bearer {GATEWAY_KEY}"}, timeout=30)


def hello(model: str = "known", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def refused(response: httpx.Response, shape: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if shape == "anthropic":
        assert response.json()["type"] == "error"
    return str(error["message"])


# --- max_tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [10**12, 2**62, MAX_OUTPUT_TOKENS + 1])
def test_absurd_max_tokens_are_refused_on_both_apis(server: GatewayServer, upstream: FakeUpstream, value: int) -> None:
    before = len(upstream.requests)
    for model in ("known", "house-model"):
        message = refused(anthropic(server, hello(model, max_tokens=value)), "anthropic")
        assert message == f"max_tokens: must be at most {MAX_OUTPUT_TOKENS}, got {value}"
        for key in ("max_tokens", "max_completion_tokens"):
            message = refused(openai(server, hello(model, **{key: value})), "openai")
            assert message == f"{key}: must be at most {MAX_OUTPUT_TOKENS}, got {value}"
    body = hello(max_tokens=1000, thinking={"type": "enabled", "budget_tokens": value})
    assert "thinking.budget_tokens: must be at most" in refused(anthropic(server, body), "anthropic")
    assert len(upstream.requests) == before  # nothing reached the provider


@pytest.mark.parametrize("value", [0, -5, "100", 1.5, True])
def test_max_tokens_must_be_a_positive_integer(server: GatewayServer, value: Any) -> None:
    refused(anthropic(server, hello(max_tokens=value)), "anthropic")
    refused(openai(server, hello(max_tokens=value)), "openai")


def test_large_but_sane_max_tokens_are_clamped_to_the_deployment(server: GatewayServer, upstream: FakeUpstream) -> None:
    # Claude Code asks for 32k-128k on purpose: accepted, and clamped where the limit is known.
    assert anthropic(server, hello(max_tokens=128_000)).status_code == 200
    assert upstream.last.json["max_tokens"] == 16_384
    assert openai(server, hello(max_completion_tokens=128_000)).status_code == 200
    assert upstream.last.json["max_tokens"] == 16_384
    # A model the catalogue does not know gets what was asked, never more than the bound.
    assert anthropic(server, hello("house-model", max_tokens=MAX_OUTPUT_TOKENS)).status_code == 200
    assert upstream.last.json["max_tokens"] == MAX_OUTPUT_TOKENS


# --- tool_result pairing --------------------------------------------------------------------------


def _call(call_id: str, command: str = "ls") -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": "Bash", "input": {"command": command}}


def _result(call_id: str, text: str = "ok") -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": call_id, "content": text}


TOOLS = [{"name": "Bash", "description": "Run a command.",
          "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}]


def conversation(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"model": "known", "max_tokens": 1000, "tools": TOOLS, "messages": list(messages)}


@pytest.mark.parametrize(
    ("messages", "where", "call_id"),
    [
        # A result with no call at all.
        ([{"role": "user", "content": [_result("toolu_ghost")]}], "messages.0.content.0", "toolu_ghost"),
        # A result for a call two messages back (the turn in between answered it).
        (
            [
                {"role": "user", "content": "list files"},
                {"role": "assistant", "content": [_call("toolu_1")]},
                {"role": "user", "content": [_result("toolu_1")]},
                {"role": "assistant", "content": "done"},
                {"role": "user", "content": [{"type": "text", "text": "again"}, _result("toolu_1")]},
            ],
            "messages.4.content.1",
            "toolu_1",
        ),
        # The same call answered twice.
        (
            [
                {"role": "user", "content": "list files"},
                {"role": "assistant", "content": [_call("toolu_1")]},
                {"role": "user", "content": [_result("toolu_1"), _result("toolu_1")]},
            ],
            "messages.2.content.1",
            "toolu_1",
        ),
    ],
)
def test_a_tool_result_without_its_tool_use_is_refused_as_anthropic_does(
    server: GatewayServer, messages: list[dict[str, Any]], where: str, call_id: str
) -> None:
    message = refused(anthropic(server, conversation(*messages)), "anthropic")
    assert message == (
        f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: {call_id}. Each `tool_result` block "
        "must have a corresponding `tool_use` block in the previous message."
    )


def test_claude_code_tool_turns_stay_valid(server: GatewayServer, upstream: FakeUpstream) -> None:
    """A call, its result; three parallel calls answered in one message (one failing,
    with a reminder beside them); a system note in between; results of one turn split
    over two user messages (Anthropic merges consecutive user turns)."""
    body = conversation(
        {"role": "user", "content": "fix the tests"},
        {"role": "assistant", "content": [{"type": "text", "text": "Looking."}, _call("toolu_a", "ls")]},
        {"role": "user", "content": [_result("toolu_a", "src tests")]},
        {"role": "assistant", "content": [_call("toolu_b", "cat a"), _call("toolu_c", "cat b"), _call("toolu_d", "x")]},
        {"role": "system", "content": "reminder"},
        {"role": "user", "content": [
            _result("toolu_c", "B"),
            {"type": "tool_result", "tool_use_id": "toolu_d", "content": "no such command", "is_error": True},
            _result("toolu_b", "A"),
            {"type": "text", "text": "<system-reminder>keep going</system-reminder>"},
        ]},
        {"role": "assistant", "content": [_call("toolu_e", "pytest"), _call("toolu_f", "ruff")]},
        {"role": "user", "content": [_result("toolu_e", "1 failed")]},
        {"role": "user", "content": [_result("toolu_f", "clean")]},
    )
    upstream.queue(Text("Fixed."))
    response = anthropic(server, body)
    assert response.status_code == 200, response.text
    sent = upstream.last.json["messages"]
    tools = [(m["tool_call_id"], m["content"]) for m in sent if m["role"] == "tool"]
    assert tools == [("toolu_a", "src tests"), ("toolu_c", "B"), ("toolu_d", "[tool error] no such command"),
                     ("toolu_b", "A"), ("toolu_e", "1 failed"), ("toolu_f", "clean")]


# --- message count ---------------------------------------------------------------------------------


def test_more_than_max_messages_is_a_400_on_both_apis(server: GatewayServer, upstream: FakeUpstream) -> None:
    many = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(13)]
    before = len(upstream.requests)
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        message = refused(anthropic(server, {"model": "known", "max_tokens": 10, "messages": many}, path), "anthropic")
        assert message == "messages: 13 messages; this gateway accepts at most 12 per request (server.max_messages)"
    assert "server.max_messages" in refused(openai(server, {"model": "known", "messages": many}), "openai")
    assert len(upstream.requests) == before
    assert anthropic(server, {"model": "known", "max_tokens": 10, "messages": many[:11]}).status_code == 200


# --- work off the event loop, nothing kept ------------------------------------------------------------


def test_trimming_a_long_conversation_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_from({"models": {"small": [{
        "model": "openai/gpt-4o", "api_base": "http://127.0.0.1:9/v1", "api_key": UPSTREAM_KEY,
        "max_input_tokens": 8000,
    }]}})
    pm = PluginManager()
    pm.load(entry_points=False)
    gateway = Gateway(config, pm)
    route = gateway.resolve_model("small")
    threads: dict[str, set[int]] = {"trim": set(), "estimate": set()}
    plan_trim, estimate = context_module.plan_trim, context_module.estimate_tokens

    def probe_trim(*args: Any) -> Any:
        threads["trim"].add(threading.get_ident())
        return plan_trim(*args)

    def probe_estimate(*args: Any) -> Any:
        threads["estimate"].add(threading.get_ident())
        return estimate(*args)

    monkeypatch.setattr(context_module, "plan_trim", probe_trim)
    monkeypatch.setattr(context_module, "estimate_tokens", probe_estimate)
    turns = context_module.THREAD_FROM + 1000
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message number {i} " * 3}
                for i in range(turns)] + [{"role": "user", "content": "and now?"}]

    async def fit() -> tuple[int, dict[str, Any]]:
        loop_thread = threading.get_ident()
        ctx = RequestContext(request_id="req_probe", api="openai", public_model="small", client_stream=False)
        plan = await gateway.context.plan(ctx, {"model": "small", "messages": messages}, route, route.deployments)
        body = await plan.fit(route.deployments[0])
        assert ctx.response_headers["x-clasp-context"].startswith("trimmed;")
        return loop_thread, body

    loop_thread, body = asyncio.run(fit())
    assert threads["trim"] and loop_thread not in threads["trim"]
    assert threads["estimate"] and loop_thread not in threads["estimate"]
    assert 1 < len(body["messages"]) < len(messages)
    # What the trim remembers for the next turn is a few runs of indexes, not one
    # integer per dropped message.
    [boundary] = gateway.context._boundaries.values()
    assert len(boundary.runs) <= 2 and len(boundary.dropped) == len(messages) - len(body["messages"])


def test_a_boundary_keeps_runs_not_indexes() -> None:
    boundary = Boundary.of([0, 1, 2, 3, 7, 8, 12], "summary", "d")
    assert boundary.runs == ((0, 4), (7, 9), (12, 13))
    assert boundary.dropped == [0, 1, 2, 3, 7, 8, 12]


def test_memo_caches_keep_nothing_of_an_oversized_request(server: GatewayServer) -> None:
    from clasp_gateway.shaping import schema

    before = schema._cached_strict.cache_info().currsize
    huge = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "d" * 100} for i in range(1000)}}
    assert len(schema.clean_schema(huge, "gemini")["properties"]) == 1000
    assert schema._cached_strict.cache_info().currsize == before
    # A model name is remembered only if short (names come from clients).
    name = "known-" + "x" * 10_000
    assert anthropic(server, hello(name, max_tokens=10)).status_code in (200, 404)
    assert name not in server.gateway._resolved

"""The semantic layer in a real gateway in front of a fake provider: a reworded question
is answered from the cache (streamed or not, both APIs), never across teams, never for a
near-miss, never after the conversation changed; and two gateways sharing a real Redis
answer each other's questions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clasp_gateway.testing import FakeUpstream, GatewayServer, RedisServer, Text, config_from, load_module

support = load_module(Path(__file__).with_name("principals.py"), "clasp_cache_test_principals")
ALPHA, BETA = "key-alpha-0123456789abcdef", "key-beta-0123456789abcdefg"
SEMANTIC = {"enabled": True, "preload": True}


def models(base_url: str) -> dict[str, Any]:
    return {"*": [{"model": "openai/gpt-4o", "api_base": base_url, "api_key": "sk-upstream-test-1234567890"}]}


def layer_of(server: GatewayServer) -> Any:
    return server.gateway.pm.get_plugin("cache.runtime").semantic


def wait_remembered(server: GatewayServer, count: int) -> None:
    """Stores (and their vectors) run off the response path: wait, bounded, until in."""
    layer = layer_of(server)
    deadline = time.monotonic() + 60
    while layer.stats["remembered"] < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert layer.stats["remembered"] >= count


def chat(server: GatewayServer, content: str, key: str = ALPHA, **extra: Any) -> httpx.Response:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(server.base_url + "/v1/chat/completions", headers={"x-api-key": key}, json=body, timeout=30)


def claude_code(last: str, *, result: str = "1\timport os\n2\tprint('hi')") -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5", "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "Read", "description": "Read a file",
                   "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}],
        "messages": [
            {"role": "user", "content": "Look at src/app.py"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read",
                                               "input": {"file_path": "src/app.py"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": result},
                                         {"type": "text", "text": last}]},
        ],
    }


def messages(server: GatewayServer, body: dict[str, Any], key: str = ALPHA) -> httpx.Response:
    return httpx.post(server.base_url + "/v1/messages", json=body, timeout=30,
                      headers={"x-api-key": key, "anthropic-version": "2023-06-01"})


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as up:
        yield up


@pytest.fixture(scope="module")
def server(upstream: FakeUpstream) -> Iterator[GatewayServer]:
    config = config_from({"models": models(upstream.base_url), "cache": {"semantic": SEMANTIC}})
    with GatewayServer(config, plugins=[support.Keys()]) as gateway:
        layer = layer_of(gateway)
        layer.embedder._loaded.wait(120)
        assert layer.embedder.ready
        yield gateway


def test_a_reworded_question_is_answered_from_the_cache(server: GatewayServer, upstream: FakeUpstream) -> None:
    upstream.reset()
    upstream.queue(Text("Use reversed() or list.reverse()."), Text("JS: arr.reverse()"), Text("beta's answer"))
    first = chat(server, "How do I reverse a list in Python?")
    assert first.headers["x-clasp-cache"] == "miss"
    wait_remembered(server, 1)
    again = chat(server, "What's the best way to reverse a Python list?")
    assert again.status_code == 200 and again.headers["x-clasp-cache"] == "semantic"
    assert again.json()["choices"][0]["message"]["content"] == "Use reversed() or list.reverse()."
    assert len(upstream.requests) == 1
    # a near-miss calls upstream; another team never sees alpha's entry
    assert chat(server, "How do I reverse a list in JavaScript?").headers["x-clasp-cache"] == "miss"
    assert chat(server, "What's the best way to reverse a Python list?", key=BETA).headers["x-clasp-cache"] == "miss"
    assert len(upstream.requests) == 3


def test_a_semantic_hit_streams_like_the_original(server: GatewayServer, upstream: FakeUpstream) -> None:
    upstream.reset()
    upstream.queue(Text("Paris is the capital of France."))
    assert chat(server, "What is the capital of France?").headers["x-clasp-cache"] == "miss"
    wait_remembered(server, 2)
    with httpx.stream("POST", server.base_url + "/v1/chat/completions", headers={"x-api-key": ALPHA}, timeout=30,
                      json={"model": "gpt-4o", "stream": True,
                            "messages": [{"role": "user", "content": "Which city is the capital of France?"}]}) as r:
        assert r.headers["x-clasp-cache"] == "semantic"
        body = r.read().decode()
    assert "Paris is the capital" in body and body.rstrip().endswith("data: [DONE]")
    assert len(upstream.requests) == 1


def test_claude_code_requests_hit_only_in_the_same_conversation(server: GatewayServer, upstream: FakeUpstream) -> None:
    upstream.reset()
    upstream.queue(Text("It imports os and prints hi."), Text("It now imports sys."))
    remembered = layer_of(server).stats["remembered"]
    first = messages(server, claude_code("Explain what src/app.py does"))
    assert first.status_code == 200 and first.headers["x-clasp-cache"] == "miss"
    wait_remembered(server, remembered + 1)
    hit = messages(server, claude_code("What does src/app.py do?"))
    assert hit.headers["x-clasp-cache"] == "semantic"
    assert hit.json()["content"][0]["text"] == "It imports os and prints hi."
    # the file the conversation read changed: another scope, upstream again
    changed = messages(server, claude_code("What does src/app.py do?", result="1\timport sys"))
    assert changed.headers["x-clasp-cache"] == "miss"
    assert len(upstream.requests) == 2


def test_two_gateways_share_questions_through_redis(redis_server: RedisServer) -> None:
    with FakeUpstream("openai") as up, redis_server.namespace() as ns:
        cache = {"backend": "redis", "backend_options": {"url": ns.url, "prefix": ns.prefix}, "semantic": SEMANTIC}
        config = config_from({"models": models(up.base_url), "cache": cache})
        with GatewayServer(config, plugins=[support.Keys()]) as one, GatewayServer(config, plugins=[support.Keys()]) as two:
            for gateway in (one, two):
                layer_of(gateway).embedder._loaded.wait(120)
            up.queue(Text("git branch -d name"))
            assert chat(one, "How do I delete a local git branch?").headers["x-clasp-cache"] == "miss"
            wait_remembered(one, 1)
            answer = chat(two, "How can I delete a git branch locally?")
            assert answer.headers["x-clasp-cache"] == "semantic"
            assert answer.json()["choices"][0]["message"]["content"] == "git branch -d name"
            assert chat(two, "How can I delete a git branch locally?", key=BETA).headers["x-clasp-cache"] == "miss"
            assert len(up.requests) == 2

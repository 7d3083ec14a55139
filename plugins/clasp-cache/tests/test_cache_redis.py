"""The cache shared through a real Redis: two ``clasp serve`` processes serve each
other's entries (and keep teams apart), streaming replay across processes, and a gateway
whose Redis is down keeps answering (the cache bypassed, never an error)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from clasp_gateway.testing import (
    FakeUpstream,
    GatewayProcesses,
    GatewayServer,
    RedisServer,
    Text,
    config_from,
    free_port,
)

KEYS = [{"key": "key-alpha-0123456789abcdef", "name": "alpha", "team": "alpha"},
        {"key": "key-beta-0123456789abcdefg", "name": "beta", "team": "beta"}]


def config(upstream: FakeUpstream, url: str, prefix: str) -> dict[str, Any]:
    return {
        "keys": KEYS,
        "models": {"*": [{"model": "openai/gpt-4o", "api_base": upstream.base_url, "api_key": "sk-up-1234567890abc"}]},
        "cache": {"backend": "redis", "backend_options": {"url": url, "prefix": prefix}},
    }


def chat(base_url: str, content: str, key: str = "key-alpha-0123456789abcdef", stream: bool = False) -> httpx.Response:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], "stream": stream}
    return httpx.post(base_url + "/v1/chat/completions", headers={"x-api-key": key}, json=body, timeout=30)


def streamed_text(response: httpx.Response) -> str:
    """The content deltas of an OpenAI event stream, joined."""
    import json

    parts = []
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices") or ():
                parts.append((choice.get("delta") or {}).get("content") or "")
    return "".join(parts)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as up:
        yield up


def wait_for_entries(redis_url: str, prefix: str, count: int) -> None:
    import time

    import redis

    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (client.zcard(prefix + "lru") or 0) < count:
        time.sleep(0.01)
    assert client.zcard(prefix + "lru") >= count
    client.close()


def test_two_gateway_processes_share_entries_through_redis(upstream: FakeUpstream, redis_server: RedisServer) -> None:
    upstream.reset()
    upstream.queue(Text("shared answer"), Text("beta's own"))
    with redis_server.namespace() as ns, GatewayProcesses(config(upstream, ns.url, ns.prefix), count=2) as procs:
        one, two = (f"http://127.0.0.1:{p.port}" for p in procs)
        first = chat(one, "what is the deploy command?", stream=True)
        assert first.status_code == 200 and streamed_text(first) == "shared answer"
        wait_for_entries(ns.url, ns.prefix, 1)
        hit = chat(two, "what is the deploy command?")
        assert hit.headers["x-clasp-cache"] == "exact"
        assert hit.json()["choices"][0]["message"]["content"] == "shared answer"
        streamed = chat(two, "what is the deploy command?", stream=True)  # a proper stream, from the other process
        assert streamed.headers["x-clasp-cache"] == "exact" and streamed.text.rstrip().endswith("data: [DONE]")
        assert streamed_text(streamed) == "shared answer"
        beta = chat(two, "what is the deploy command?", key="key-beta-0123456789abcdefg")
        assert beta.headers["x-clasp-cache"] == "miss" and beta.json()["choices"][0]["message"]["content"] == "beta's own"
        assert len(upstream.requests) == 2


def test_redis_down_bypasses_the_cache_without_an_error(upstream: FakeUpstream) -> None:
    upstream.reset()
    upstream.queue(Text("first"), Text("second"))
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with GatewayServer(config_from(config(upstream, dead, "clasp:cache:"))) as server:
        one, two = chat(server.base_url, "hello"), chat(server.base_url, "hello", stream=True)
        assert one.status_code == two.status_code == 200
        assert one.json()["choices"][0]["message"]["content"] == "first" and streamed_text(two) == "second"
        assert len(upstream.requests) == 2
        stats = httpx.get(server.base_url + "/admin/cache", headers={"x-api-key": KEYS[0]["key"]})
        assert stats.status_code == 403  # (a member key; the admin API is for admins)


def test_on_redis_a_changed_context_misses_and_the_ttl_expires(upstream: FakeUpstream, redis_server: RedisServer) -> None:
    import time

    upstream.reset()
    upstream.queue(Text("v1"), Text("v2"), Text("v3"))
    with redis_server.namespace() as ns:
        raw = config(upstream, ns.url, ns.prefix)
        raw["cache"].update(ttl=1, stale_if_error_max_age=0)
        with GatewayServer(config_from(raw)) as server:
            def ask(history: str) -> httpx.Response:
                body = {"model": "gpt-4o", "messages": [{"role": "user", "content": history},
                                                         {"role": "assistant", "content": "noted"},
                                                         {"role": "user", "content": "what did I say?"}]}
                return httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=30,
                                  headers={"x-api-key": KEYS[0]["key"]})

            assert ask("the file says A").json()["choices"][0]["message"]["content"] == "v1"
            wait_for_entries(ns.url, ns.prefix, 1)
            assert ask("the file says A").headers["x-clasp-cache"] == "exact"
            assert ask("the file says B").json()["choices"][0]["message"]["content"] == "v2"  # another context
            time.sleep(1.1)  # Redis keeps its own time: the entry expires there
            again = ask("the file says A")
            assert again.headers["x-clasp-cache"] == "miss" and again.json()["choices"][0]["message"]["content"] == "v3"
            assert len(upstream.requests) == 3


@pytest.mark.parametrize("where", ["state_file", "option_env"])
def test_the_redis_url_may_be_a_secret_reference(upstream: FakeUpstream, redis_server: RedisServer,
                                                 tmp_path: Any, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """The URL holds Redis' password, so it is a reference like every secret: a file the
    state: section names (the container set-up, deploy/clasp.yaml) or an environment
    variable in backend_options, resolved; not handed to the client as the text ``file:...``."""
    upstream.reset()
    upstream.queue(Text("cached through a reference"))
    with redis_server.namespace() as ns:
        cache_prefix = ns.prefix + "cache:"
        settings = config(upstream, ns.url, cache_prefix)
        if where == "state_file":
            (tmp_path / "redis_url").write_text(ns.url + "\n")
            settings["state"] = {"backend": "redis", "url": f"file:{tmp_path / 'redis_url'}", "prefix": ns.prefix}
            settings["cache"] = {"backend": "redis", "backend_options": {"prefix": cache_prefix}}
        else:
            monkeypatch.setenv("CLASP_TEST_CACHE_REDIS_URL", ns.url)
            settings["cache"]["backend_options"]["url"] = "${CLASP_TEST_CACHE_REDIS_URL}"
        with GatewayServer(config_from(settings)) as gw:
            first = chat(gw.base_url, "a question worth caching")
            assert first.status_code == 200 and first.headers["x-clasp-cache"] == "miss"
            wait_for_entries(ns.url, cache_prefix, 1)
            second = chat(gw.base_url, "a question worth caching")
            assert second.status_code == 200 and second.headers["x-clasp-cache"] == "exact"
        assert len(upstream.requests) == 1

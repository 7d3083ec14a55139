"""The response cache in a real gateway (memory backend) in front of a fake provider:
hits and misses on both APIs and both SDKs, replay, scope, policy, residency, stale
answers, TTL on a fake clock, the ledger's figures, the admin API and ``clasp cache``."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from clasp_gateway import RequestContext, hookimpl
from clasp_gateway.testing import (
    Error,
    FakeClock,
    FakeUpstream,
    GatewayServer,
    Text,
    ToolCalls,
    config_from,
    load_module,
)

support = load_module(Path(__file__).with_name("principals.py"), "clasp_cache_test_principals")
ALPHA, ALPHA2, BETA = "key-alpha-0123456789abcdef", "key-alpha-2-0123456789abcd", "key-beta-0123456789abcdefg"
ADMIN, TEAM_ADMIN, EU_ONLY = "key-admin-0123456789abcdef", "key-talpha-0123456789abcde", "key-euonly-0123456789abcde"


class Ledger:
    """Keeps each request event with the context's cache fields (what the ledger stores)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    @hookimpl
    def record(self, ctx: RequestContext, event: dict[str, Any]) -> None:
        if event.get("kind") == "request":
            self.events.append({**event, "ctx_cache_hit": ctx.cache_hit, "ctx_saved_usd": ctx.saved_usd})


CACHE: dict[str, Any] = {
    "ttl": "10m",
    "stale_if_error_max_age": "1h",
    "routes": {"tools-ok": {"tool_calls": ["Read"]}, "warm": {"max_temperature": 1}, "off": {"enabled": False}},
}


def models(base_url: str) -> dict[str, Any]:
    dep = {"model": "openai/gpt-4o", "api_base": base_url, "api_key": "sk-upstream-test-1234567890"}
    return {"eu-model": [{**dep, "region": "eu"}], "us-model": [{**dep, "region": "us"}], "*": [dep]}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as up:
        yield up


@pytest.fixture(scope="module")
def stack(upstream: FakeUpstream) -> Iterator[tuple[GatewayServer, Ledger, FakeClock]]:
    ledger = Ledger()
    config = config_from({"models": models(upstream.base_url), "cache": CACHE})
    with GatewayServer(config, plugins=[support.Keys(), ledger]) as server:
        clock = FakeClock(1_900_000_000.0)
        runtime = runtime_of(server)
        runtime.clock = runtime.backend.clock = clock
        yield server, ledger, clock


@pytest.fixture
def gw(stack: tuple[GatewayServer, Ledger, FakeClock], upstream: FakeUpstream) -> tuple[GatewayServer, Ledger, FakeClock]:
    upstream.reset()
    stack[1].events.clear()
    runtime_of(stack[0]).backend._entries.clear()
    return stack


def runtime_of(server: GatewayServer) -> Any:
    return server.gateway.pm.get_plugin("cache.runtime")


def post(server: GatewayServer, body: dict[str, Any], key: str = ALPHA, path: str = "/v1/chat/completions") -> httpx.Response:
    headers = {"x-api-key": key}
    if path == "/v1/messages":
        headers["anthropic-version"] = "2023-06-01"
    return httpx.post(server.base_url + path, headers=headers, json=body, timeout=30)


def ask(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], **extra}


def wait_stored(server: GatewayServer, count: int) -> None:
    """Stores run off the response path; wait (bounded) until ``count`` are in."""
    import time

    runtime = runtime_of(server)
    deadline = time.monotonic() + 5
    while len(runtime.backend._entries) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(runtime.backend._entries) >= count


def test_an_exact_repeat_is_answered_from_the_cache(gw: Any, upstream: FakeUpstream) -> None:
    server, ledger, _ = gw
    upstream.queue(Text("Paris."))
    first = post(server, ask("capital of France?", temperature=0))
    assert first.status_code == 200 and first.headers["x-clasp-cache"] == "miss"
    wait_stored(server, 1)
    # Fields that do not change the answer: key order, user, metadata, stream flags.
    again = {"temperature": 0, "user": "someone-else", "metadata": {"user_id": "u2"},
             "messages": [{"content": "capital of France?", "role": "user"}], "model": "gpt-4o"}
    second = post(server, again)
    assert second.status_code == 200 and second.headers["x-clasp-cache"] == "exact"
    assert second.json()["choices"][0]["message"]["content"] == "Paris."
    assert second.json()["choices"][0]["finish_reason"] == "stop"
    assert len(upstream.requests) == 1
    miss, hit = ledger.events
    assert miss["cost_usd"] > 0 and miss["ctx_cache_hit"] is None
    assert hit["cost_usd"] == 0 and hit["usage"]["output_tokens"] == 0 and hit["ctx_cache_hit"] == "exact" and hit["ctx_saved_usd"] == pytest.approx(miss["cost_usd"])


def test_openai_sdk_stream_replays_as_a_proper_stream(gw: Any, upstream: FakeUpstream) -> None:
    server, _, _ = gw
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=ALPHA, max_retries=0)
    upstream.queue(Text("one two three four five"))
    messages: Any = [{"role": "user", "content": "count to five"}]
    first = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="gpt-4o", messages=messages, stream=True) if c.choices)
    wait_stored(server, 1)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=messages, stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-clasp-cache"] == "exact"
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == first == "one two three four five"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    whole = client.chat.completions.create(model="gpt-4o", messages=messages)  # stream or not: one entry
    assert whole.choices[0].message.content == first
    assert len(upstream.requests) == 1


def test_anthropic_sdk_stream_and_message_replay(gw: Any, upstream: FakeUpstream) -> None:
    server, _, _ = gw
    client = anthropic.Anthropic(base_url=server.base_url, api_key=ALPHA, max_retries=0)
    upstream.queue(Text("Bonjour, le monde."))
    system: Any = [{"type": "text", "text": "You translate.", "cache_control": {"type": "ephemeral"}}]
    messages: Any = [{"role": "user", "content": "hello world in French"}]
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=1000, system=system, messages=messages) as s:
        assert s.get_final_text() == "Bonjour, le monde."
    wait_stored(server, 1)
    # The same request without the cache breakpoint, streamed: a hit, a proper event stream.
    plain: Any = [{"type": "text", "text": "You translate."}]
    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=1000, system=plain,
                                                   messages=messages, stream=True)
    assert raw.headers["x-clasp-cache"] == "exact"
    events = list(raw.parse())
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_delta" in kinds
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert text == "Bonjour, le monde."
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=1000, system=system, messages=messages)
    assert message.content[0].text == "Bonjour, le monde." and message.stop_reason == "end_turn"  # type: ignore[union-attr]
    assert len(upstream.requests) == 1


def test_the_same_prompt_from_two_teams_calls_upstream_twice(gw: Any, upstream: FakeUpstream) -> None:
    server, _, _ = gw
    upstream.queue(Text("for alpha"), Text("for beta"))
    assert post(server, ask("what is our roadmap?"), key=ALPHA).json()["choices"][0]["message"]["content"] == "for alpha"
    wait_stored(server, 1)
    beta = post(server, ask("what is our roadmap?"), key=BETA)
    assert beta.headers["x-clasp-cache"] == "miss" and beta.json()["choices"][0]["message"]["content"] == "for beta"
    assert len(upstream.requests) == 2
    wait_stored(server, 2)
    # Within a team (scope: team), another key of the team shares the entry.
    mate = post(server, ask("what is our roadmap?"), key=ALPHA2)
    assert mate.headers["x-clasp-cache"] == "exact" and mate.json()["choices"][0]["message"]["content"] == "for alpha"


def test_a_different_conversation_before_the_question_is_a_miss(gw: Any, upstream: FakeUpstream) -> None:
    server, _, _ = gw
    upstream.queue(Text("it prints 1"), Text("it prints 2"))
    turn = [{"role": "user", "content": "what does it print?"}]
    one = [{"role": "user", "content": "x = 1; print(x)"}, {"role": "assistant", "content": "ok"}, *turn]
    two = [{"role": "user", "content": "x = 2; print(x)"}, {"role": "assistant", "content": "ok"}, *turn]
    post(server, {"model": "gpt-4o", "messages": one})
    wait_stored(server, 1)
    assert post(server, {"model": "gpt-4o", "messages": two}).json()["choices"][0]["message"]["content"] == "it prints 2"
    assert post(server, {"model": "gpt-4o", "messages": [{"role": "system", "content": "be brief"}, *one]}
                ).headers["x-clasp-cache"] == "miss"
    assert len(upstream.requests) == 3


@pytest.mark.parametrize("case", ["temperature", "background", "length", "tool_calls", "error", "off_route"])
def test_what_is_never_stored(gw: Any, upstream: FakeUpstream, case: str) -> None:
    server, _, _ = gw
    body = ask(f"a question about {case}")
    reply: Any = Text("an answer")
    if case == "temperature":
        body["temperature"] = 0.7
    elif case == "background":
        body["max_tokens"] = 16
    elif case == "length":
        reply = Text("a cut ans", finish_reason="length")
    elif case == "tool_calls":
        body["tools"] = [{"type": "function", "function": {"name": "Bash", "parameters": {"type": "object"}}}]
        reply = ToolCalls([("Bash", {"command": "rm -rf build"})])
    elif case == "error":
        reply = Error(400)
    elif case == "off_route":
        body["model"] = "off"
    upstream.queue(reply, reply)
    post(server, body)
    second = post(server, body)
    assert second.headers.get("x-clasp-cache") != "exact"
    assert len(upstream.requests) == 2
    assert not runtime_of(server).backend._entries


def test_a_route_may_opt_in_to_read_only_tool_calls_and_warm_temperatures(gw: Any, upstream: FakeUpstream) -> None:
    server, _, _ = gw
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in ("Read", "Bash")]
    body = {**ask("show me setup.py"), "model": "tools-ok", "tools": tools}
    upstream.queue(ToolCalls([("Read", {"file_path": "setup.py"})]))
    post(server, body)
    wait_stored(server, 1)
    hit = post(server, body)
    assert hit.headers["x-clasp-cache"] == "exact"
    call = hit.json()["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "Read" and hit.json()["choices"][0]["finish_reason"] == "tool_calls"
    warm = {**ask("a poem"), "model": "warm", "temperature": 0.9}
    upstream.queue(Text("roses"))
    post(server, warm)
    wait_stored(server, 2)
    assert post(server, warm).headers["x-clasp-cache"] == "exact"
    assert len(upstream.requests) == 2


def test_ttl_then_stale_if_error_when_every_provider_is_down(gw: Any, upstream: FakeUpstream) -> None:
    server, ledger, clock = gw
    upstream.queue(Text("cached answer"))
    post(server, ask("status of the build?"))
    wait_stored(server, 1)
    clock.advance(601)  # past the 10 minute TTL: not served as a hit any more
    upstream.queue(Error(503), Error(503), Error(503))
    stale = post(server, ask("status of the build?"))
    assert stale.status_code == 200 and stale.json()["choices"][0]["message"]["content"] == "cached answer"
    assert stale.headers["x-clasp-cache"] == "stale" and stale.headers["x-clasp-degraded"] == "stale"
    assert ledger.events[-1]["ctx_cache_hit"] == "stale"
    upstream.queue(Text("fresh answer"))
    assert post(server, ask("status of the build?")).json()["choices"][0]["message"]["content"] == "fresh answer"
    clock.advance(3601 + 600)  # beyond stale_if_error_max_age: gone
    upstream.queue(Error(503), Error(503), Error(503))
    assert post(server, ask("status of the build?")).status_code >= 500


def test_an_entry_is_served_only_to_keys_allowed_its_region(gw: Any, upstream: FakeUpstream) -> None:
    server, _, _ = gw
    upstream.queue(Text("made in us"))
    assert post(server, {**ask("hi"), "model": "us-model"}, key=ALPHA).status_code == 200
    wait_stored(server, 1)
    eu = post(server, {**ask("hi"), "model": "us-model"}, key=EU_ONLY)  # same team, but eu only
    # us-model runs only in us: the core refuses it (residency) before the cache or any upstream.
    assert eu.status_code == 403 and "regions" in eu.json()["error"]["message"]
    assert len(upstream.requests) == 1
    entries = runtime_of(server).backend._entries
    assert sorted(e.meta.region for e in entries.values()) == ["us"]  # the eu answer replaced nothing


def test_a_changed_configuration_never_serves_old_entries(upstream: FakeUpstream) -> None:
    upstream.reset()
    upstream.queue(Text("old"), Text("new"))
    base = {"models": models(upstream.base_url), "cache": CACHE}
    changed = copy.deepcopy(base)
    changed["models"]["*"][0]["max_output_tokens"] = 1000
    with GatewayServer(config_from(base), plugins=[support.Keys()]) as one:
        post(one, ask("version?"))
        wait_stored(one, 1)
        entries = dict(runtime_of(one).backend._entries)
    with GatewayServer(config_from(changed), plugins=[support.Keys()]) as two:
        runtime_of(two).backend._entries.update(entries)  # as if shared
        assert post(two, ask("version?")).json()["choices"][0]["message"]["content"] == "new"


def test_admin_api_lists_and_clears_by_team_and_model(gw: Any, upstream: FakeUpstream) -> None:
    server, _, _ = gw
    upstream.queue(Text("a"), Text("b"), Text("c"))
    post(server, ask("q1"), key=ALPHA)
    post(server, {**ask("q2"), "model": "us-model"}, key=ALPHA)
    post(server, ask("q3"), key=BETA)
    wait_stored(server, 3)
    url = server.base_url + "/admin/cache"
    assert httpx.get(url, headers={"x-api-key": ALPHA}).status_code == 403
    listed = httpx.get(url, headers={"x-api-key": ADMIN}, params={"team": "alpha"}).json()
    assert listed["stats"]["entries"] == 3 and {e["model"] for e in listed["entries"]} == {"gpt-4o", "us-model"}
    assert "Paris" not in str(listed) and all("payload" not in e for e in listed["entries"])
    # A team admin sees and clears only its own team.
    assert httpx.get(url, headers={"x-api-key": TEAM_ADMIN}, params={"team": "beta"}).status_code == 403
    cleared = httpx.delete(url, headers={"x-api-key": TEAM_ADMIN}, params={"model": "us-*"})
    assert cleared.json() == {"deleted": 1}
    bad = httpx.delete(url, headers={"x-api-key": ADMIN}, params={"older_than": "soon"})
    assert bad.status_code == 400 and bad.json()["type"] == "error"
    assert httpx.delete(url, headers={"x-api-key": ADMIN}, params={"team": "beta"}).json() == {"deleted": 1}
    assert post(server, ask("q1"), key=ALPHA).headers["x-clasp-cache"] == "exact"
    paths = httpx.get(server.base_url + "/admin/openapi.json", headers={"x-api-key": ADMIN}).json()["paths"]
    assert {"get", "delete"} <= set(paths["/admin/cache"]) and "post" in paths["/admin/cache/clear"]


def test_clasp_cache_cli_clears_and_reports(gw: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from clasp_cache.cli import main

    server, _, clock = gw
    upstream.queue(Text("a"), Text("b"))
    post(server, ask("old question"), key=ALPHA)
    wait_stored(server, 1)
    clock.advance(1200)
    post(server, ask("new question"), key=BETA)
    wait_stored(server, 2)
    monkeypatch.setenv("CLASP_ADMIN_KEY", ADMIN)
    assert main(["--url", server.base_url, "clear", "--older-than", "15m"], "clasp.yaml") == 0
    assert capsys.readouterr().out.strip() == "deleted 1 entries"
    assert main(["--url", server.base_url, "stats"], "clasp.yaml") == 0
    assert "1 entries" in capsys.readouterr().out
    monkeypatch.setenv("CLASP_ADMIN_KEY", ALPHA)
    assert main(["--url", server.base_url, "clear"], "clasp.yaml") == 1
    assert "403" in capsys.readouterr().err


def test_an_anthropic_pass_through_answer_is_cached_and_replayed() -> None:
    """An Anthropic deployment's own events (pass-through) are collected through their
    canonical view, streamed or whole, and a hit replays as a proper Anthropic answer."""
    with FakeUpstream("anthropic") as claude:
        models = {"*": [{"model": "anthropic/claude-sonnet-4-5-20250929", "api_base": claude.base_url,
                         "api_key": "sk-ant-upstream-1234567890"}]}
        with GatewayServer(config_from({"models": models, "cache": {}}), plugins=[support.Keys()]) as server:
            client = anthropic.Anthropic(base_url=server.base_url, api_key=ALPHA, max_retries=0)
            messages: Any = [{"role": "user", "content": "name a prime"}]
            claude.queue(Text("Seven."), Text("Eleven."))
            whole = client.messages.create(model="claude-sonnet-4-5", max_tokens=1000, messages=messages)
            assert whole.content[0].text == "Seven."  # type: ignore[union-attr]
            wait_stored(server, 1)
            raw = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=1000,
                                                           messages=messages, stream=True)
            assert raw.headers["x-clasp-cache"] == "exact"
            text = "".join(e.delta.text for e in raw.parse()
                           if e.type == "content_block_delta" and e.delta.type == "text_delta")
            assert text == "Seven." and len(claude.requests) == 1
            other: Any = [{"role": "user", "content": "name another prime"}]
            with client.messages.stream(model="claude-sonnet-4-5", max_tokens=1000, messages=other) as s:
                assert s.get_final_text() == "Eleven."
            wait_stored(server, 2)
            again = client.messages.create(model="claude-sonnet-4-5", max_tokens=1000, messages=other)
            assert again.content[0].text == "Eleven." and len(claude.requests) == 2  # type: ignore[union-attr]


def test_without_the_fallback_plugin_the_cache_serves_its_stale_entry_itself(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "cache")  # no clasp-fallback: on_exhausted is the cache's alone
    upstream.reset()
    upstream.queue(Text("kept answer"), Error(503), Error(400))
    with GatewayServer(config_from({"models": models(upstream.base_url), "cache": CACHE}),
                       plugins=[support.Keys()]) as server:
        clock = FakeClock(1_900_000_000.0)
        runtime = runtime_of(server)
        runtime.clock = runtime.backend.clock = clock
        post(server, ask("what time is the standup?"))
        wait_stored(server, 1)
        clock.advance(700)
        stale = post(server, ask("what time is the standup?"))
        assert stale.status_code == 200 and stale.headers["x-clasp-cache"] == "stale"
        assert stale.json()["choices"][0]["message"]["content"] == "kept answer"
        refused = post(server, ask("what time is the standup?"))  # the request's own fault: never masked
        assert refused.status_code == 400

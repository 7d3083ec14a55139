"""The Vertex provider: service-account tokens against a fake token endpoint that
verifies the JWT (refresh before expiry with an injected clock, one at a time, off the
event loop), Gemini and Claude on a fake Vertex that checks the bearer token, then the
anthropic SDK through a real gateway."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from clasp_provider_vertex import VertexProvider
from clasp_provider_vertex.tokens import FAILURE_BACKOFF, ServiceAccountTokens

from clasp_gateway.cli import main as clasp_main
from clasp_gateway.config import parse_config
from clasp_gateway.errors import UpstreamError
from clasp_gateway.testing import GATEWAY_KEY, GatewayServer, config_from, load_module
from clasp_gateway.types import Deployment

fake = load_module(Path(__file__).with_name("fake_vertex.py"), "clasp_provider_vertex_fake")
KEY = fake.keygen()
BASH: Any = {"name": "Bash", "description": "Run a shell command", "input_schema": {
    "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
    "properties": {"command": {"type": "string"}}, "required": ["command"], "additionalProperties": False}}
ASK: Any = [{"role": "user", "content": "list the files"}]
GEMINI = "gemini-2.5-pro"
CLAUDE = "claude-sonnet-4-5@20250929"


class Clock:
    """A monotonic clock the test moves (no sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def gcp() -> Iterator[Any]:
    with fake.FakeVertex(KEY.public_key()) as server:
        yield server


@pytest.fixture
def key_file(gcp: Any, tmp_path: Path) -> Path:
    path = tmp_path / "vertex-sa.json"
    path.write_text(json.dumps(fake.service_account(KEY, gcp.token_uri)))
    return path


def vertex(gcp: Any, key_file: Path, model: str = GEMINI, **extra: Any) -> dict[str, Any]:
    return {"model": f"vertex/{model}", "vertex_location": fake.LOCATION, "api_base": gcp.base_url,
            "vertex_credentials": f"file:{key_file}", "max_output_tokens": 4096, **extra}


def deployment_for(gcp: Any, key_file: Path, model: str = GEMINI, **extra: Any) -> Deployment:
    return parse_config({"models": {"*": [vertex(gcp, key_file, model, **extra)]}}).models[0].deployments[0]


async def collect(adapter: VertexProvider, dep: Deployment, **body: Any) -> list[Any]:
    return [c async for c in adapter.open(dep, {"messages": ASK, "max_tokens": 50, **body}, stream=True)]


def text_of(chunks: list[Any]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


# --- tokens ------------------------------------------------------------------------------------


async def test_tokens_are_renewed_before_expiry_once_and_off_the_event_loop(gcp: Any) -> None:
    clock = Clock()
    tokens = ServiceAccountTokens(fake.service_account(KEY, gcp.token_uri), "vertex/x", monotonic=clock)
    try:
        gcp.lifetime = 600
        assert await tokens.token() == "ya29.fake-1" and len(gcp.issued) == 1
        clock.now += 400  # two thirds of its life: still the same token
        assert await tokens.token() == "ya29.fake-1" and len(gcp.issued) == 1

        # Past 80% of its life: one background refresh; the token endpoint is slow, and
        # meanwhile the event loop goes on serving with the current token.
        clock.now += 100
        gcp.hold = threading.Event()
        assert await asyncio.gather(*(tokens.token() for _ in range(5))) == ["ya29.fake-1"] * 5
        for _ in range(20):
            await asyncio.sleep(0)  # the loop is not blocked while the refresh waits
        gcp.hold.set()
        await tokens._inflight  # type: ignore[misc]  # the one refresh in flight
        assert gcp.issued == ["ya29.fake-1", "ya29.fake-2"] and tokens.refreshes == 2
        assert await tokens.token() == "ya29.fake-2"

        # Past its safe end (asleep, say): every caller waits for one refresh.
        clock.now += 10_000
        assert await asyncio.gather(*(tokens.token() for _ in range(5))) == ["ya29.fake-3"] * 5
        assert len(gcp.issued) == 3
    finally:
        gcp.hold = None
        await tokens.close()


async def test_a_key_the_endpoint_refuses_is_reported_and_not_hammered(gcp: Any) -> None:
    clock = Clock()
    other = fake.keygen()  # not the key the fake knows
    tokens = ServiceAccountTokens(fake.service_account(other, gcp.token_uri), "vertex/x", monotonic=clock)
    try:
        with pytest.raises(UpstreamError, match="invalid_grant: Invalid JWT Signature") as refused:
            await tokens.token()
        assert refused.value.status == 500 and "PRIVATE KEY" not in refused.value.message
        with pytest.raises(UpstreamError, match="Invalid JWT Signature"):
            await tokens.token()  # remembered: no second grant within the back-off
        assert gcp.grants_refused == ["Invalid JWT Signature."]
        clock.now += FAILURE_BACKOFF + 1
        with pytest.raises(UpstreamError):
            await tokens.token()
        assert len(gcp.grants_refused) == 2
    finally:
        await tokens.close()


# --- the adapter against the fake ------------------------------------------------------------------


async def test_gemini_on_vertex(gcp: Any, key_file: Path) -> None:
    adapter = VertexProvider()
    dep = deployment_for(gcp, key_file)
    try:
        gcp.queue(fake.Answer("Let me look.", calls=[("1Bash", {"command": "ls"})], usage=(30, 7)))
        tools = [{"type": "function", "function": {"name": "1Bash", "parameters": {
            "type": "object", "properties": {"command": {"type": "string"}}, "additionalProperties": False}}}]
        chunks = await collect(adapter, dep, tools=tools,
                               messages=[{"role": "system", "content": "Be brief."}, *ASK])
        assert text_of(chunks) == "Let me look."
        [call] = [c for ch in chunks for c in ch["choices"][0]["delta"].get("tool_calls") or ()]
        assert call["function"]["name"] == "1Bash"  # the name Gemini got was letter-led, and is restored
        assert json.loads(call["function"]["arguments"]) == {"command": "ls"}
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls" and chunks[-1]["usage"]["prompt_tokens"] == 30
        sent = gcp.requests[-1]
        assert (sent.publisher, sent.model, sent.method, sent.project, sent.location) == (
            "google", GEMINI, "streamGenerateContent", fake.PROJECT, fake.LOCATION)
        assert sent.token == "ya29.fake-1"
        assert sent.body["system_instruction"] == {"parts": [{"text": "Be brief."}]}
        declaration = sent.body["tools"][0]["function_declarations"][0]
        assert declaration["name"] == "t.1Bash" and "additionalProperties" not in json.dumps(declaration)
    finally:
        await adapter.close()


async def test_claude_on_vertex(gcp: Any, key_file: Path) -> None:
    adapter = VertexProvider()
    dep = deployment_for(gcp, key_file, CLAUDE, vertex_project="other-project")
    try:
        gcp.queue(fake.Answer("Looking.", calls=[("Bash", {"command": "ls -la"})], usage=(40, 9)))
        chunks = await collect(adapter, dep, tools=[{"type": "function", "function": {
            "name": "Bash", "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}}])
        assert text_of(chunks) == "Looking."
        calls = [c for ch in chunks for c in ch["choices"][0]["delta"].get("tool_calls") or ()]
        assert calls[0]["id"] == "toolu_vrtx_0" and calls[0]["function"]["name"] == "Bash"
        assert json.loads("".join(c["function"].get("arguments", "") for c in calls)) == {"command": "ls -la"}
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
        sent = gcp.requests[-1]
        assert (sent.publisher, sent.model, sent.method, sent.project) == (
            "anthropic", CLAUDE, "streamRawPredict", "other-project")
        assert sent.body["anthropic_version"] == "vertex-2023-10-16" and "model" not in sent.body
        assert sent.body["stream"] is True and sent.body["max_tokens"] == 50
    finally:
        await adapter.close()


async def test_a_refused_token_is_replaced_and_the_request_resent(gcp: Any, key_file: Path) -> None:
    adapter = VertexProvider()
    dep = deployment_for(gcp, key_file)
    try:
        await collect(adapter, dep)
        gcp.revoked = {"ya29.fake-1"}
        gcp.queue(fake.Answer("still here"))
        assert text_of(await collect(adapter, dep)) == "still here"
        assert gcp.issued == ["ya29.fake-1", "ya29.fake-2"] and gcp.requests[-1].token == "ya29.fake-2"
    finally:
        await adapter.close()


async def test_errors_are_mapped(gcp: Any, key_file: Path) -> None:
    adapter = VertexProvider()
    try:
        dep = deployment_for(gcp, key_file)
        gcp.queue(fake.Failure(429, "RESOURCE_EXHAUSTED", "Quota exceeded for aiplatform.googleapis.com"))
        with pytest.raises(UpstreamError, match="RESOURCE_EXHAUSTED: Quota exceeded") as limited:
            await collect(adapter, dep)
        assert limited.value.status == 429

        gcp.queue(fake.Answer("half", error=(503, "UNAVAILABLE", "overloaded")))
        seen: list[Any] = []
        with pytest.raises(UpstreamError, match="overloaded"):
            async for chunk in adapter.open(dep, {"messages": ASK}, stream=True):
                seen.append(chunk)
        assert text_of(seen) == "half"

        gcp.queue(fake.Answer("cut", end=False))
        with pytest.raises(UpstreamError, match="ended before the answer was complete"):
            await collect(adapter, dep)

        gcp.denied = {GEMINI}
        with pytest.raises(UpstreamError, match="PERMISSION_DENIED.*Vertex AI User role") as denied:
            await collect(adapter, dep)
        assert denied.value.status == 403

        missing = deployment_for(gcp, key_file, id="nokey", vertex_credentials="${CLASP_TEST_NO_SUCH_VAR}")
        with pytest.raises(Exception, match=r"vertex_credentials \$\{CLASP_TEST_NO_SUCH_VAR\} is not set"):
            await collect(adapter, missing)
    finally:
        await adapter.close()


# --- through the gateway ------------------------------------------------------------------------


@pytest.fixture
def gateway(gcp: Any, key_file: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GatewayServer]:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "claude,provider_vertex")
    # ``vertex_ai/`` (LiteLLM's name) finds the model's limits in LiteLLM's catalogue.
    claude_on_vertex = {**vertex(gcp, key_file, CLAUDE), "model": f"vertex_ai/{CLAUDE}"}
    claude_on_vertex.pop("max_output_tokens")
    models = {"claude-*": [claude_on_vertex], "*": [vertex(gcp, key_file, GEMINI)]}
    with GatewayServer(config_from({"models": models})) as server:
        yield server


def claude(server: GatewayServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=GATEWAY_KEY, max_retries=0)


@pytest.mark.parametrize("public,publisher", [("gemini-pro", "google"), ("claude-sonnet-4-5", "anthropic")])
def test_anthropic_sdk_tool_loop_through_vertex(gateway: GatewayServer, gcp: Any, public: str, publisher: str) -> None:
    gcp.queue(fake.Answer("Let me look.", calls=[("Bash", {"command": "ls -la"})], usage=(20, 9)))
    with claude(gateway).messages.stream(model=public, max_tokens=100_000, messages=ASK, tools=[BASH],  # type: ignore[arg-type]
                                         system="You are Claude Code.") as stream:
        message = stream.get_final_message()
    sent = gcp.requests[-1].body
    limit = sent["max_tokens"] if publisher == "anthropic" else sent["generationConfig"]["max_output_tokens"]
    assert limit == (64000 if publisher == "anthropic" else 4096)  # clamped to the model's output limit
    text, tool = message.content
    assert text.text == "Let me look."  # type: ignore[union-attr]
    assert tool.type == "tool_use" and tool.name == "Bash" and tool.input == {"command": "ls -la"}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use" and message.usage.input_tokens == 20
    assert gcp.requests[-1].publisher == publisher

    gcp.queue(fake.Answer("There are two files."))
    answer = claude(gateway).messages.create(model=public, max_tokens=1000, tools=[BASH], messages=[  # type: ignore[arg-type]
        *ASK,
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                          {"type": "tool_use", "id": tool.id, "name": "Bash", "input": tool.input}]},  # type: ignore[union-attr]
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "a.txt\nb.txt"}]},
    ])
    assert answer.content[0].text == "There are two files."  # type: ignore[union-attr]
    body = gcp.requests[-1].body
    if publisher == "anthropic":
        assert body["messages"][2]["content"][0]["tool_use_id"] == tool.id  # type: ignore[union-attr]
    else:
        assert body["contents"][1]["parts"][-1]["function_call"] == {"name": "Bash", "args": {"command": "ls -la"}}
        assert body["contents"][2]["parts"][0]["function_response"]["name"] == "Bash"
    assert len(gcp.issued) == 1  # one token served every request


def test_rate_limits_reach_the_client_as_429(gateway: GatewayServer, gcp: Any) -> None:
    gcp.queue(fake.Failure(429, "RESOURCE_EXHAUSTED", "Quota exceeded"))
    with pytest.raises(anthropic.RateLimitError, match="Quota exceeded"):
        claude(gateway).messages.create(model="gemini-pro", max_tokens=100, messages=ASK)  # type: ignore[arg-type]


def test_an_overloaded_claude_falls_back_before_the_first_byte(
    gcp: Any, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claude on Vertex reports overload as an error event right after message_start:
    nothing visible has been sent, so the fallback plugin still moves to Gemini."""
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "claude,fallback,provider_vertex")
    models = {"*": [vertex(gcp, key_file, CLAUDE), vertex(gcp, key_file, GEMINI)]}
    with GatewayServer(config_from({"models": models, "fallback": {"retry": {"attempts": 0}}})) as server:
        gcp.queue(fake.Answer("", error=(529, "overloaded_error", "Overloaded")), fake.Answer("from gemini"))
        answer = claude(server).messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=ASK)  # type: ignore[arg-type]
    assert answer.content[0].text == "from gemini"  # type: ignore[union-attr]
    assert [r.publisher for r in gcp.requests] == ["anthropic", "google"]


def test_clasp_check_reports_a_service_account_without_access(
    gcp: Any, key_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "claude,provider_vertex")
    gcp.denied = {CLAUDE}
    config = tmp_path / "clasp.yaml"
    config.write_text(json.dumps({"models": {"*": [vertex(gcp, key_file), vertex(gcp, key_file, CLAUDE)]}}))
    assert clasp_main(["check", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert f"vertex/{GEMINI}: reachable, authorised, model answered" in out
    assert f"vertex/{CLAUDE}: " in out and "PERMISSION_DENIED" in out

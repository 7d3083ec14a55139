"""The Bedrock provider: Converse translation, SigV4 against a fake that verifies it,
credentials (session tokens, refresh before expiry off the event loop, the standard
chain from files), event-stream answers and faults, then the anthropic SDK through a
real gateway."""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from botocore.credentials import Credentials, RefreshableCredentials
from clasp_provider_bedrock import BedrockProvider
from clasp_provider_bedrock.converse import ConverseStream, converse_body

from clasp_gateway.cli import main as clasp_main
from clasp_gateway.config import parse_config
from clasp_gateway.errors import UpstreamError
from clasp_gateway.testing import GATEWAY_KEY, GatewayServer, config_from, load_module
from clasp_gateway.types import Deployment

fake = load_module(Path(__file__).with_name("fake_bedrock.py"), "clasp_provider_bedrock_fake")
BASH: Any = {"name": "Bash", "description": "Run a shell command", "input_schema": {
    "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
    "properties": {"command": {"type": "string"}}, "required": ["command"], "additionalProperties": False}}
ASK: Any = [{"role": "user", "content": "list the files"}]
UTC = datetime.UTC


def static(token: str | None = None, secret: str = fake.SECRET_KEY) -> Any:
    return lambda: Credentials(fake.ACCESS_KEY, secret, token)


def deployment_for(aws: Any, model: str = fake.MODEL, **extra: Any) -> Deployment:
    return parse_config({"models": {"*": [bedrock(aws, model, **extra)]}}).models[0].deployments[0]


def bedrock(aws: Any, model: str = fake.MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": f"bedrock/{model}", "region": fake.REGION, "api_base": aws.base_url,
            "max_output_tokens": 4096, **extra}


async def collect(adapter: BedrockProvider, dep: Deployment, stream: bool = True, **body: Any) -> list[Any]:
    return [c async for c in adapter.open(dep, {"messages": ASK, "max_tokens": 50, **body}, stream=stream)]


def text_of(chunks: list[Any]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


@pytest.fixture
def aws() -> Iterator[Any]:
    with fake.FakeBedrock() as server:
        yield server


@pytest.fixture(autouse=True)
def no_real_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """botocore must find nothing of the machine's (and never ask an instance-metadata
    address): empty shared files, no AWS variables."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))


# --- translation ----------------------------------------------------------------------------


def test_a_claude_code_shaped_body_becomes_a_valid_converse_request() -> None:
    import litellm

    body = {
        "model": fake.MODEL, "stream": True, "stream_options": {"include_usage": True},
        "messages": [
            {"role": "system", "content": "You are Claude Code."},
            {"role": "user", "content": [{"type": "text", "text": "what is in this screenshot?"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "Bash", "arguments": '{"command": "ls"}'}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "a.txt"},
            {"role": "user", "content": "and now?"},
        ],
        "tools": [{"type": "function", "function": {"name": "Bash", "description": "Run", "parameters": {
            "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}],
        "tool_choice": "required", "max_tokens": 4096, "stop": ["###"], "temperature": 0.2,
        "top_k": 40,  # not an OpenAI parameter (extra_body): goes to additionalModelRequestFields
    }
    out = converse_body(litellm.AmazonConverseConfig(), fake.MODEL, body)
    assert fake.validate(out) is None
    assert out["system"] == [{"text": "You are Claude Code."}]
    assert out["inferenceConfig"] == {"maxTokens": 4096, "temperature": 0.2, "stopSequences": ["###"]}
    assert out["toolConfig"]["toolChoice"] == {"any": {}}
    assert out["toolConfig"]["tools"][0]["toolSpec"]["name"] == "Bash"
    assert out["additionalModelRequestFields"] == {"top_k": 40}
    user, assistant, results = out["messages"]
    assert user["content"][1] == {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}
    assert assistant["content"][1] == {"toolUse": {"toolUseId": "toolu_1", "name": "Bash", "input": {"command": "ls"}}}
    assert results["content"] == [{"toolResult": {"toolUseId": "toolu_1", "content": [{"text": "a.txt"}]}},
                                  {"text": "and now?"}]
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "toolu_1", "content": "a.txt"}  # not edited


def test_stream_events_become_canonical_chunks() -> None:
    answer = ConverseStream("bedrock/x", "m")
    events = [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "hmm"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "s"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Looking."}}),
        ("contentBlockStart", {"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "t1", "name": "Bash"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": '{"comm'}}}),
        ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": 'and":"ls"}'}}}),
        ("contentBlockStop", {"contentBlockIndex": 2}),
        ("messageStop", {"stopReason": "tool_use"}),
        ("metadata", {"usage": {"inputTokens": 10, "outputTokens": 7, "cacheReadInputTokens": 100,
                                "cacheWriteInputTokens": 20}}),
    ]
    chunks = [c for c in (answer.event(k, d) for k, d in events) if c is not None]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[:5] == [
        {"reasoning_content": "hmm"}, {"content": "Looking."},
        {"tool_calls": [{"index": 0, "id": "t1", "type": "function", "function": {"name": "Bash", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"comm'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'and":"ls"}'}}]},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == {"prompt_tokens": 130, "completion_tokens": 7, "total_tokens": 137,
                                   "prompt_tokens_details": {"cached_tokens": 100}, "cache_creation_input_tokens": 20}
    assert answer.end() is None

    cut = ConverseStream("bedrock/x", "m")
    cut.event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "half"}})
    with pytest.raises(UpstreamError, match="before messageStop"):
        cut.end()


# --- the adapter against the fake: signing and credentials ----------------------------------------


async def test_requests_are_sigv4_signed_and_a_wrong_signature_is_refused(aws: Any) -> None:
    dep = deployment_for(aws)
    good = BedrockProvider(resolver=static())
    try:
        aws.queue(fake.Answer("hello from bedrock"))
        assert text_of(await collect(good, dep)) == "hello from bedrock"
        received = aws.requests[-1]
        assert received.path == "/model/anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse-stream"
        assert received.headers["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={fake.ACCESS_KEY}/")
        assert received.body["inferenceConfig"] == {"maxTokens": 50}
        assert aws.rejected == []
    finally:
        await good.close()

    wrong = BedrockProvider(resolver=static(secret="not-the-secret"))
    try:
        with pytest.raises(UpstreamError) as refused:
            await collect(wrong, dep)
        assert aws.rejected == ["InvalidSignatureException"]
        # The gateway's credentials were refused: the client is not at fault (500, next deployment).
        assert refused.value.upstream_status == 401 and refused.value.status == 500
        assert "signature we calculated does not match" in refused.value.message
        assert "not-the-secret" not in refused.value.message
    finally:
        await wrong.close()


async def test_session_tokens_are_signed_and_sent(aws: Any) -> None:
    aws.tokens = {"session-token-1"}
    adapter = BedrockProvider(resolver=static("session-token-1"))
    try:
        assert text_of(await collect(adapter, deployment_for(aws), stream=False)) == "ok"
        headers = aws.requests[-1].headers
        assert headers["X-Amz-Security-Token"] == "session-token-1"
        assert "x-amz-security-token" in headers["Authorization"]
    finally:
        await adapter.close()


class Clock:
    """botocore's ``time_fetcher``, moved by the test (no sleeping)."""

    def __init__(self) -> None:
        self.now = datetime.datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime.datetime:
        return self.now


async def test_temporary_credentials_are_renewed_before_expiry_off_the_event_loop(aws: Any) -> None:
    clock = Clock()
    refreshes: list[bool] = []
    release = threading.Event()

    def refresh() -> dict[str, str]:
        try:  # botocore calls this; it must never run on the event loop's thread
            asyncio.get_running_loop()
            refreshes.append(True)
        except RuntimeError:
            refreshes.append(False)
        release.wait(10)
        n = len(refreshes)
        return {"access_key": fake.ACCESS_KEY, "secret_key": fake.SECRET_KEY, "token": f"token-{n + 1}",
                "expiry_time": (clock.now + datetime.timedelta(hours=1)).isoformat()}

    credentials = RefreshableCredentials(fake.ACCESS_KEY, fake.SECRET_KEY, "token-1",
                                         clock.now + datetime.timedelta(hours=1), refresh, "test", time_fetcher=clock)
    aws.tokens = {"token-1", "token-2", "token-3"}
    adapter = BedrockProvider(resolver=lambda: credentials)
    dep = deployment_for(aws)
    try:
        await collect(adapter, dep)
        assert refreshes == [] and aws.requests[-1].headers["X-Amz-Security-Token"] == "token-1"

        # 50 minutes on: inside botocore's advisory window (15 min before expiry). One
        # refresh starts in a thread; meanwhile requests go on with the current token.
        clock.now += datetime.timedelta(minutes=50)
        await asyncio.gather(*(collect(adapter, dep) for _ in range(3)))
        assert [r.headers["X-Amz-Security-Token"] for r in aws.requests[-3:]] == ["token-1"] * 3
        release.set()
        target = await adapter.target(dep)
        await target.credentials._inflight  # type: ignore[misc]  # the one background refresh
        await collect(adapter, dep)
        assert aws.requests[-1].headers["X-Amz-Security-Token"] == "token-2"
        assert refreshes == [False]  # once, and off the loop

        # 58 minutes later: mandatory window (under 10 min left): requests wait for the refresh.
        clock.now += datetime.timedelta(minutes=58)
        await asyncio.gather(*(collect(adapter, dep) for _ in range(3)))
        assert [r.headers["X-Amz-Security-Token"] for r in aws.requests[-3:]] == ["token-3"] * 3
        assert refreshes == [False, False]
    finally:
        release.set()
        await adapter.close()


async def test_an_expired_token_is_resolved_again_and_the_request_resent(aws: Any) -> None:
    tokens = iter(["revoked-token", "fresh-token"])
    resolved: list[str] = []

    def resolve() -> Credentials:
        resolved.append(next(tokens))
        return Credentials(fake.ACCESS_KEY, fake.SECRET_KEY, resolved[-1])

    aws.expired = {"revoked-token"}
    adapter = BedrockProvider(resolver=resolve)
    try:
        aws.queue(fake.Answer("fine"))
        assert text_of(await collect(adapter, deployment_for(aws))) == "fine"
        assert resolved == ["revoked-token", "fresh-token"] and aws.rejected == ["ExpiredTokenException"]
    finally:
        await adapter.close()


async def test_credentials_come_from_the_standard_chain(aws: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No resolver injected: botocore's own chain, from the environment and from a
    named profile of the shared credentials file, session token included."""
    adapter = BedrockProvider()
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", fake.ACCESS_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", fake.SECRET_KEY)
        monkeypatch.setenv("AWS_REGION", fake.REGION)
        env_dep = deployment_for(aws, region=None)  # the region comes from AWS_REGION too
        await collect(adapter, env_dep)
        assert "X-Amz-Security-Token" not in aws.requests[-1].headers

        aws.keys["AKIAPROFILETEAM00001"] = "team-secret-0123456789"
        aws.tokens = {"team-session-token"}
        (tmp_path / "aws-credentials").write_text(
            "[team]\naws_access_key_id = AKIAPROFILETEAM00001\naws_secret_access_key = team-secret-0123456789\n"
            "aws_session_token = team-session-token\n")
        profile_dep = deployment_for(aws, id="bedrock-team", aws_profile="team")
        await collect(adapter, profile_dep)
        assert aws.requests[-1].headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIAPROFILETEAM00001/")
        assert aws.requests[-1].headers["X-Amz-Security-Token"] == "team-session-token"
    finally:
        await adapter.close()


async def test_missing_credentials_say_what_to_set(aws: Any) -> None:
    adapter = BedrockProvider()
    try:
        with pytest.raises(UpstreamError, match="no AWS credentials found in the standard AWS credential chain"):
            await collect(adapter, deployment_for(aws))
    finally:
        await adapter.close()


async def test_whole_answers_and_errors(aws: Any) -> None:
    adapter = BedrockProvider(resolver=static())
    dep = deployment_for(aws)
    try:
        aws.queue(fake.Answer("Two files.", calls=[("Bash", {"command": "ls"})], reasoning="think", usage=(9, 4)))
        [chunk] = await collect(adapter, dep, stream=False)
        assert aws.requests[-1].path.endswith("/converse") and not aws.requests[-1].stream
        delta = chunk["choices"][0]["delta"]
        assert delta["content"] == "Two files." and delta["reasoning_content"] == "think"
        assert delta["tool_calls"][0]["function"] == {"name": "Bash", "arguments": '{"command":"ls"}'}
        assert chunk["choices"][0]["finish_reason"] == "tool_calls" and chunk["usage"]["prompt_tokens"] == 9

        cases = [(fake.Failure(429, "ThrottlingException", "Too many requests, please wait."), 429, 429),
                 (fake.Failure(400, "ValidationException", "Input is too long for requested model."), 400, 400),
                 (fake.Failure(503, "ServiceUnavailableException", "Service unavailable"), 503, 529)]
        for failure, upstream, client in cases:
            aws.queue(failure)
            with pytest.raises(UpstreamError) as caught:
                await collect(adapter, dep)
            assert (caught.value.upstream_status, caught.value.status) == (upstream, client)
            assert failure.message in caught.value.message and failure.type in caught.value.message

        aws.denied = {fake.MODEL}
        with pytest.raises(UpstreamError, match="AccessDeniedException.*model access") as denied:
            await collect(adapter, dep)
        assert denied.value.status == 403
    finally:
        await adapter.close()


async def test_stream_exceptions_and_cuts(aws: Any) -> None:
    adapter = BedrockProvider(resolver=static())
    dep = deployment_for(aws)
    try:
        for error, status in ((("throttlingException", "slow down"), 429),
                              (("modelStreamErrorException", "model fell over"), 502),
                              (("validationException", "bad input"), 400)):
            aws.queue(fake.Answer("partial", error=error))
            seen: list[Any] = []
            with pytest.raises(UpstreamError) as caught:
                async for chunk in adapter.open(dep, {"messages": ASK}, stream=True):
                    seen.append(chunk)
            assert text_of(seen) == "partial" and caught.value.upstream_status == status
            assert error[0] in caught.value.message and error[1] in caught.value.message

        aws.queue(fake.Answer("half", end=False))
        with pytest.raises(UpstreamError, match="ended before messageStop"):
            await collect(adapter, dep)

        aws.queue(fake.Answer("damaged in transit", corrupt=True))
        with pytest.raises(UpstreamError, match="corrupt Bedrock event stream") as corrupt:
            await collect(adapter, dep)
        assert corrupt.value.kind == "protocol"
    finally:
        await adapter.close()


# --- through the gateway ------------------------------------------------------------------------


@pytest.fixture
def gateway(aws: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[GatewayServer]:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "claude,provider_bedrock")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", fake.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", fake.SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "gateway-session-token")
    aws.tokens = {"gateway-session-token"}
    with GatewayServer(config_from({"models": {"*": [bedrock(aws)]}})) as server:
        yield server


def claude(server: GatewayServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=GATEWAY_KEY, max_retries=0)


def test_anthropic_sdk_tool_loop_through_bedrock(gateway: GatewayServer, aws: Any) -> None:
    aws.queue(fake.Answer("Let me look.", calls=[("Bash", {"command": "ls -la"})], usage=(20, 9), cache_read=100))
    with claude(gateway).messages.stream(model="claude-sonnet-4-5", max_tokens=32000, messages=ASK, tools=[BASH],  # type: ignore[arg-type]
                                         system="You are Claude Code.") as stream:
        message = stream.get_final_message()
    text, tool = message.content
    assert text.text == "Let me look."  # type: ignore[union-attr]
    assert tool.type == "tool_use" and tool.name == "Bash" and tool.input == {"command": "ls -la"}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 20 and message.usage.cache_read_input_tokens == 100
    first = aws.requests[-1]
    assert first.stream and first.body["inferenceConfig"]["maxTokens"] == 4096  # clamped to the model's limit
    assert first.body["system"] == [{"text": "You are Claude Code."}]
    assert "$schema" not in first.body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]

    aws.queue(fake.Answer("There are two files."))
    answer = claude(gateway).messages.create(model="claude-sonnet-4-5", max_tokens=1000, tools=[BASH], messages=[  # type: ignore[arg-type]
        *ASK,
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                          {"type": "tool_use", "id": tool.id, "name": "Bash", "input": tool.input}]},  # type: ignore[union-attr]
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "a.txt\nb.txt"}]},
    ])
    assert answer.content[0].text == "There are two files." and answer.stop_reason == "end_turn"  # type: ignore[union-attr]
    sent = aws.requests[-1]
    assert not sent.stream and sent.path.endswith("/converse")
    assert sent.body["messages"][1]["content"][1]["toolUse"] == {"toolUseId": tool.id, "name": "Bash",  # type: ignore[union-attr]
                                                                 "input": {"command": "ls -la"}}
    assert sent.body["messages"][2]["content"][0]["toolResult"]["toolUseId"] == tool.id  # type: ignore[union-attr]


def events_of(server: GatewayServer, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream("POST", server.base_url + "/v1/messages?beta=true", json={**body, "stream": True},
                      headers={"x-api-key": GATEWAY_KEY}) as response:
        name = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
    return out


def test_provider_errors_reach_the_client_mapped(gateway: GatewayServer, aws: Any) -> None:
    aws.queue(fake.Failure(429, "ThrottlingException", "Too many requests"))
    with pytest.raises(anthropic.RateLimitError, match="Too many requests"):
        claude(gateway).messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=ASK)  # type: ignore[arg-type]
    aws.queue(fake.Failure(400, "ValidationException", "messages.0: bad"))
    with pytest.raises(anthropic.BadRequestError, match="messages.0: bad"):
        claude(gateway).messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=ASK)  # type: ignore[arg-type]

    aws.queue(fake.Answer("half an ans", error=("modelStreamErrorException", "GPU fell over")))
    events = events_of(gateway, {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": ASK})
    names = [n for n, _ in events]
    assert names[-1] == "error" and "message_stop" not in names
    assert "half an ans" in "".join(e.get("delta", {}).get("text", "") for _, e in events)


def test_a_throttled_deployment_falls_back_to_the_next(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback plugin reads a throttled Bedrock as a 429 and moves on."""
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "claude,fallback,provider_bedrock")
    models = {"*": [bedrock(aws), bedrock(aws, "amazon.nova-pro-v1:0")]}
    config = config_from({"models": models, "fallback": {"retry": {"attempts": 0}}})
    with GatewayServer(config) as server:
        adapter = server.gateway.providers.extra["bedrock"]
        adapter._resolver = static()  # type: ignore[attr-defined]
        aws.queue(fake.Failure(429, "ThrottlingException", "Too many requests"), fake.Answer("from nova"))
        answer = claude(server).messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=ASK)  # type: ignore[arg-type]
        assert answer.content[0].text == "from nova"  # type: ignore[union-attr]
        assert [r.model for r in aws.requests] == [fake.MODEL, "amazon.nova-pro-v1:0"]

        # Throttled inside the stream, before any content: still before the first byte.
        aws.queue(fake.Answer("", error=("throttlingException", "Too many tokens")), fake.Answer("nova again"))
        events = events_of(server, {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": ASK})
    assert "nova again" in "".join(e.get("delta", {}).get("text", "") for _, e in events)
    assert [n for n, _ in events][-1] == "message_stop"


def test_clasp_check_reports_a_credential_without_model_access(
    aws: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "claude,provider_bedrock")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", fake.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", fake.SECRET_KEY)
    aws.denied = {"meta.llama3-1-70b-instruct-v1:0"}
    config = tmp_path / "clasp.yaml"
    config.write_text(json.dumps({"models": {"*": [bedrock(aws), bedrock(aws, "meta.llama3-1-70b-instruct-v1:0")]}}))
    assert clasp_main(["check", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert f"bedrock/{fake.MODEL}: reachable, authorised, model answered" in out
    assert "bedrock/meta.llama3-1-70b-instruct-v1:0: " in out and "AccessDeniedException" in out
    assert [r.body["inferenceConfig"] for r in aws.requests] == [{"maxTokens": 1}] * 2

"""Bedrock prompt caching: Claude Code's breakpoints become Converse ``cachePoint``
blocks, the prompt stays byte-stable across a session's turns, and Bedrock's
``cacheReadInputTokens`` / ``cacheWriteInputTokens`` reach the client as Anthropic's
``cache_read_input_tokens`` / ``cache_creation_input_tokens``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from clasp_gateway.testing import GATEWAY_KEY, GatewayServer, PromptCache, config_from, load_module
from clasp_gateway.testing.sessions import claude_code_session

fake = load_module(Path(__file__).with_name("fake_bedrock.py"), "clasp_provider_bedrock_fake")
MODEL = "anthropic.claude-sonnet-4-20250514-v1:0"
"""A model Bedrock caches prompts for (LiteLLM's catalogue says so; it adds cache points)."""


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, GatewayServer]]:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "claude,provider_bedrock")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", fake.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", fake.SECRET_KEY)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with fake.FakeBedrock() as aws:
        aws.prompt_cache = PromptCache(api="bedrock", kind="breakpoints", min_tokens=1024, unit=1)
        deployment = {"model": f"bedrock/{MODEL}", "region": fake.REGION, "api_base": aws.base_url,
                      "max_output_tokens": 8192}
        gateway = GatewayServer(config_from({"models": {"*": [deployment]}}))
        try:
            gateway.start(timeout=180)  # imports LiteLLM: slow on a busy machine
            yield aws, gateway
        finally:
            gateway.stop()


def _final_usage(gateway: GatewayServer, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{gateway.base_url}/v1/messages?beta=true", json=body, timeout=60,
                          headers={"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"})
    assert response.status_code == 200, response.text
    usage: dict[str, Any] = {}
    for line in response.text.splitlines():
        if line.startswith("data: "):
            event = orjson.loads(line[6:])
            if event["type"] == "message_delta":
                usage = event["usage"]
    return usage


def test_claude_code_session_caches_on_bedrock(stack: tuple[Any, GatewayServer]) -> None:
    aws, gateway = stack
    usages = [_final_usage(gateway, body) for body in claude_code_session(4, seed=3)]
    cache = aws.prompt_cache
    # The breakpoints arrive as cache points: after the system prompt (which follows
    # the tools) and after the newest message; Bedrock allows four.
    body = aws.requests[-1].body
    assert body["system"][-1] == {"cachePoint": {"type": "default"}}
    assert body["messages"][-1]["content"][-1] == {"cachePoint": {"type": "default"}}
    assert orjson.dumps(body).count(b"cachePoint") == 2
    # Byte-stable: each turn's prompt begins the next one's.
    for before, after in zip(cache.prompts, cache.prompts[1:], strict=False):
        assert after.startswith(before)
    # Writes on the first turn, reads (and the new turn's writes) after, as Anthropic usage.
    assert cache.uses[0].written > 0 and cache.uses[0].read == 0
    for usage, use in zip(usages, cache.uses, strict=True):
        assert usage["cache_read_input_tokens"] == use.read
        assert usage["cache_creation_input_tokens"] == use.written
        assert usage["input_tokens"] == use.prompt_tokens - use.read - use.written
    assert all(use.read > use.written for use in cache.uses[1:])

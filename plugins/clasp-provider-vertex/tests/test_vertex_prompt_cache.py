"""Vertex prompt caching: Gemini's implicit prefix cache (nothing to send but a
byte-stable prefix; ``cachedContentTokenCount`` comes back) and Claude on Vertex's
breakpoints (``cache_control`` passed on; ``cache_read_input_tokens`` /
``cache_creation_input_tokens`` come back), both as Anthropic usage for Claude Code."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from clasp_gateway.testing import GATEWAY_KEY, GatewayServer, PromptCache, config_from, load_module
from clasp_gateway.testing.sessions import claude_code_session

fake = load_module(Path(__file__).with_name("fake_vertex.py"), "clasp_provider_vertex_fake")
KEY = fake.keygen()
GEMINI = "gemini-2.5-pro"
CLAUDE = "claude-sonnet-4-5@20250929"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, GatewayServer]]:
    mp = pytest.MonkeyPatch()
    mp.setenv("CLASP_LOAD_PLUGINS", "claude,provider_vertex")
    with fake.FakeVertex(KEY.public_key()) as gcp:
        gcp.prompt_caches = {
            "google": PromptCache(api="gemini", kind="prefix", min_tokens=2048, unit=1),
            "anthropic": PromptCache(api="anthropic", kind="breakpoints", min_tokens=1024, unit=1),
        }
        key_file = tmp_path_factory.mktemp("vertex") / "sa.json"
        key_file.write_text(json.dumps(fake.service_account(KEY, gcp.token_uri)))

        def vertex(model: str) -> dict[str, Any]:
            return {"model": f"vertex/{model}", "vertex_location": fake.LOCATION, "api_base": gcp.base_url,
                    "vertex_credentials": f"file:{key_file}", "max_output_tokens": 4096}

        models = {"claude-*": [vertex(CLAUDE)], "*": [vertex(GEMINI)]}
        gateway = GatewayServer(config_from({"models": models}))
        try:
            gateway.start(timeout=180)  # imports LiteLLM: slow on a busy machine
            yield gcp, gateway
        finally:
            gateway.stop()
            mp.undo()


def _usage(gateway: GatewayServer, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """message_start's usage and the final message_delta's."""
    response = httpx.post(f"{gateway.base_url}/v1/messages?beta=true", json=body, timeout=60,
                          headers={"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"})
    assert response.status_code == 200, response.text
    start: dict[str, Any] = {}
    usage: dict[str, Any] = {}
    for line in response.text.splitlines():
        if line.startswith("data: "):
            event = orjson.loads(line[6:])
            if event["type"] == "message_start":
                start = event["message"]["usage"]
            elif event["type"] == "message_delta":
                usage = event["usage"]
    return start, usage


@pytest.mark.parametrize(("publisher", "model"), [("google", "gemini-session"), ("anthropic", "claude-session")])
def test_claude_code_session_caches_on_vertex(stack: tuple[Any, GatewayServer], publisher: str, model: str) -> None:
    gcp, gateway = stack
    usages = [_usage(gateway, body) for body in claude_code_session(4, seed=11, model=model)]
    cache = gcp.prompt_caches[publisher]
    sent = gcp.requests[-1].body
    if publisher == "google":
        assert b"cache_control" not in orjson.dumps(sent)  # implicit caching: nothing to send
    else:
        assert sent["system"][-1]["cache_control"] == {"type": "ephemeral"}
        assert sent["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    for before, after in zip(cache.prompts, cache.prompts[1:], strict=False):
        assert after.startswith(before)
    for (start, usage), use in zip(usages, cache.uses, strict=True):
        if publisher == "anthropic":  # Claude reports the prompt before the answer: message_start shows it
            assert (start["input_tokens"], start["cache_read_input_tokens"], start["cache_creation_input_tokens"]) \
                == (use.prompt_tokens - use.read - use.written, use.read, use.written)
        assert usage["cache_read_input_tokens"] == use.read
        assert usage["cache_creation_input_tokens"] == use.written
        assert usage["input_tokens"] == use.prompt_tokens - use.read - use.written
    assert all(use.read > 0 for use in cache.uses[1:])

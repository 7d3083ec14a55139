"""Provider prompt caches (issue 11): breakpoints carried, stripped or mapped per
provider; cache reads and writes reported in Anthropic usage on every path; and the
request prefix byte-stable across a Claude Code session's turns.

A Claude-Code-shaped session (:func:`clasp_gateway.testing.sessions.claude_code_session`)
is replayed through one gateway against fakes that cache prompts the way each
provider does (``FakeUpstream(prompt_cache=True)``): OpenAI, Azure, vLLM, Ollama and
DeepSeek by automatic prefix, Gemini by implicit prefix, Anthropic by breakpoints.
The fakes record every rendered prompt; turn N's must begin turn N+1's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from clasp_gateway import Usage, has_marks, hookimpl, prompt_cache_key, strip_marks
from clasp_gateway.testing import (
    GATEWAY_KEY,
    UPSTREAM_KEY,
    FakeUpstream,
    GatewayServer,
    PromptCache,
    Text,
    config_from,
)
from clasp_gateway.testing.sessions import claude_code_session
from clasp_gateway.types import Deployment, RequestHints
from clasp_gateway.wire.quirks import prepare_body

TURNS = 5

# path name -> (fake flavor, deployment for the fake, prompt-cache usage field checked)
PATHS: dict[str, tuple[str, Any]] = {
    "openai": ("openai", lambda up: {"model": "openai/gpt-4.1", "api_base": up.base_url}),
    "azure": ("azure", lambda up: {"model": "azure/gpt4o-prod", "api_base": up.origin, "base_model": "gpt-4o",
                                   "api_version": "2024-10-21"}),
    "deepseek": ("deepseek", lambda up: {"model": "deepseek/deepseek-chat", "api_base": up.origin + "/v1"}),
    "vllm": ("vllm", lambda up: {"model": "hosted_vllm/Qwen/Qwen2.5-Coder-32B-Instruct", "api_base": up.base_url,
                                 "max_output_tokens": 8192}),
    "ollama": ("ollama", lambda up: {"model": "ollama/qwen2.5-coder:32b", "api_base": up.origin + "/v1",
                                     "max_output_tokens": 8192}),
    "gemini": ("gemini", lambda up: {"model": "gemini/gemini-2.5-flash", "api_base": up.base_url}),
    "anthropic": ("anthropic", lambda up: {"model": "anthropic/claude-sonnet-4-5-20250929", "api_base": up.base_url}),
    "ai21": ("ai21", lambda up: {"model": "ai21/jamba-large-1.7", "api_base": up.base_url}),
    # DeepSeek through LiteLLM's catch-all: its cache fields as LiteLLM reports them
    "deepseek-litellm": ("deepseek", lambda up: {"model": "deepseek/deepseek-chat", "api_base": up.origin + "/v1",
                                                 "mode": "litellm"}),
}
STRIPPED = {"openai", "azure", "deepseek", "vllm", "ollama", "gemini", "ai21", "deepseek-litellm"}
UNREPORTED = {"ollama", "ai21"}
"""Ollama reuses its KV cache for a shared prefix (faster, not cheaper) and says nothing
of it; AI21 reports no prompt cache."""


class Books:
    """The ``record`` events the gateway emits (what the ledger prices)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    @hookimpl
    def record(self, ctx: Any, event: dict[str, Any]) -> None:
        self.events.append(event)


BOOKS = Books()


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[dict[str, FakeUpstream], GatewayServer]]:
    fakes = {name: FakeUpstream(flavor, prompt_cache=True, require_key=False) for name, (flavor, _) in PATHS.items()}
    for fake in fakes.values():
        fake.start()
    models = {f"cc-{name}": [{**deployment(fakes[name]), "api_key": UPSTREAM_KEY}]
              for name, (_, deployment) in PATHS.items()}
    gateway = GatewayServer(config_from({"models": models}), plugins=[BOOKS])
    try:
        gateway.start(timeout=180)  # imports LiteLLM (transform and catch-all paths): slow on a busy machine
        yield fakes, gateway
    finally:
        gateway.stop()
        for fake in fakes.values():
            fake.stop()


def _post(gateway: GatewayServer, body: dict[str, Any]) -> dict[str, Any]:
    """The answer's usage: the final message's, or (streaming) message_start's and
    the final message_delta's."""
    headers = {"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"}
    response = httpx.post(f"{gateway.base_url}/v1/messages", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    if not body.get("stream"):
        return {"final": response.json()["usage"]}
    out: dict[str, Any] = {}
    for block in response.text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                event = orjson.loads(line[6:])
                if event["type"] == "message_start":
                    out["start"] = event["message"]["usage"]
                elif event["type"] == "message_delta":
                    out["final"] = event["usage"]
    return out


@pytest.mark.parametrize("name", list(PATHS))
def test_session_prefix_is_byte_stable_and_cache_reads_reach_the_client(
    stack: tuple[dict[str, FakeUpstream], GatewayServer], name: str
) -> None:
    fakes, gateway = stack
    fake = fakes[name]
    cache = fake.prompt_cache
    assert cache is not None
    start = len(cache.prompts)
    usages = []
    for i, body in enumerate(claude_code_session(TURNS, seed=hash(name) % 1000, model=f"cc-{name}",
                                                 stream=name not in ("azure", "ai21"))):
        fake.queue(Text(f"turn {i}"))
        usages.append(_post(gateway, body))
    prompts = cache.prompts[start:]
    uses = cache.uses[start:]
    assert len(prompts) == TURNS
    # Byte-stable: each turn's whole prompt (it ends at its last breakpoint, the newest
    # message) begins the next turn's, in the order the provider reads it.
    for n in range(TURNS - 1):
        assert prompts[n + 1].startswith(prompts[n]), f"{name}: turn {n + 1} does not extend turn {n}"
    if name in STRIPPED:
        for rec in fake.requests[-TURNS:]:
            assert b"cache_control" not in rec.raw and b"ephemeral" not in rec.raw
    # What the provider cached reaches the client, with Anthropic's semantics.
    if name in UNREPORTED:
        uses = [type(use)(use.prompt_tokens) for use in uses]
    for n, (usage, use) in enumerate(zip(usages, uses, strict=True)):
        # (Anthropic's own message_delta may carry only output_tokens: the client keeps
        # message_start's input figures, as Claude Code does.)
        final = {**usage.get("start", {}), **usage["final"]}
        assert final["cache_read_input_tokens"] == use.read, (name, n)
        assert final["cache_creation_input_tokens"] == use.written, (name, n)
        assert final["input_tokens"] == use.prompt_tokens - use.read - use.written, (name, n)
    assert all(use.read > 0 for use in uses[1:]) or name in UNREPORTED, (name, uses)
    if name == "anthropic":  # breakpoints: the first turn writes, later ones read and write the new turn
        assert uses[0].written > 0 and all(use.written > 0 for use in uses[1:])
        assert usages[1]["start"]["cache_read_input_tokens"] == uses[1].read  # passed through untouched


def test_gateway_records_cache_reads_for_the_books(stack: tuple[dict[str, FakeUpstream], GatewayServer]) -> None:
    fakes, gateway = stack
    BOOKS.events.clear()
    for body in claude_code_session(2, seed=77, model="cc-deepseek", stream=True):
        _post(gateway, body)
    gateway_usage = [e["usage"] for e in BOOKS.events if e.get("kind") == "request"]
    use = fakes["deepseek"].prompt_cache.uses[-1]
    assert gateway_usage[-1]["cache_read_input_tokens"] == use.read > 0
    assert gateway_usage[-1]["input_tokens"] == use.prompt_tokens - use.read


def test_openai_gets_a_prompt_cache_key_from_the_tenant_and_prefix(
    stack: tuple[dict[str, FakeUpstream], GatewayServer]
) -> None:
    fakes, gateway = stack
    bodies = claude_code_session(2, seed=5, model="cc-openai", stream=False)
    for body in bodies:
        _post(gateway, body)
    first, second = (rec.json for rec in fakes["openai"].requests[-2:])
    assert first["prompt_cache_key"] == second["prompt_cache_key"]
    assert first["prompt_cache_key"].startswith("clasp-")
    # Not for providers that do not take it (DeepSeek, Azure...).
    assert all("prompt_cache_key" not in rec.json for rec in fakes["deepseek"].requests)


def test_openai_clients_breakpoints_reach_anthropic_and_its_cache_reads_come_back(
    stack: tuple[dict[str, FakeUpstream], GatewayServer]
) -> None:
    fakes, gateway = stack
    fake = fakes["anthropic"]
    system = "You are a careful assistant. " * 600
    headers = {"authorization": f"Bearer {GATEWAY_KEY}"}
    answers = []
    for question in ("What is 2+2?", "And 3+3?"):
        body = {
            "model": "cc-anthropic",
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]},
                {"role": "user", "content": question},
            ],
        }
        response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)
        assert response.status_code == 200, response.text
        answers.append(response.json()["usage"])
    sent = fake.last.json
    assert sent["system"][-1]["cache_control"] == {"type": "ephemeral"}
    use = fake.prompt_cache.uses[-1]
    assert use.read > 0
    assert answers[1]["prompt_tokens_details"]["cached_tokens"] == use.read
    assert answers[1]["prompt_tokens"] == use.prompt_tokens


# --- the canonical breakpoints, per provider ------------------------------------------------


def _canonical() -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [
            {"role": "system", "content": "S", "cache_control": {"type": "ephemeral"}},
            {"role": "user", "content": [{"type": "text", "text": "a"},
                                         {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}}]},
            {"role": "tool", "tool_call_id": "x", "content": "r", "cache_control": {"type": "ephemeral"}},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}},
                   "cache_control": {"type": "ephemeral"}}],
    }


def test_strip_marks_removes_every_breakpoint_and_copies_only_what_changes() -> None:
    body = _canonical()
    original = orjson.dumps(body)
    out = strip_marks(body)
    assert not has_marks(out) and b"cache_control" not in orjson.dumps(out)
    assert orjson.dumps(body) == original  # the canonical request is reused by fallbacks
    plain = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert strip_marks(plain) is plain  # nothing to do, nothing copied


@pytest.mark.parametrize(("provider", "kept"), [
    ("openai", False), ("azure", False), ("deepseek", False), ("hosted_vllm", False), ("ollama", False),
    ("groq", False), ("mistral", False), ("gemini", False), ("cohere", False), ("anthropic", True),
    ("bedrock", True), ("vertex", True),
])
def test_prepare_body_strips_or_keeps_breakpoints_per_provider(provider: str, kept: bool) -> None:
    dep = Deployment(id="d", provider=provider, model="m", api_base="http://x")
    out = prepare_body(_canonical(), dep, RequestHints(), stream=True)
    assert has_marks(out) is kept


def test_openrouter_gets_breakpoints_on_content_parts_for_models_that_cache() -> None:
    dep = Deployment(id="d", provider="openrouter", model="anthropic/claude-sonnet-4.5", api_base="http://x")
    out = prepare_body(_canonical(), dep, RequestHints(), stream=True)
    system, user, tool = out["messages"]
    assert system == {"role": "system", "content": [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}]}
    assert user["content"][-1]["cache_control"] == {"type": "ephemeral"} and "cache_control" not in user
    assert tool["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in out["tools"][0]
    other = Deployment(id="d", provider="openrouter", model="meta-llama/llama-3.3-70b", api_base="http://x")
    assert not has_marks(prepare_body(_canonical(), other, RequestHints(), stream=True))


def test_prompt_cache_key_depends_on_tenant_and_prefix_only() -> None:
    body = {"messages": [{"role": "system", "content": "s" * 5000}, {"role": "user", "content": "q1"}]}
    later = {"messages": [{"role": "system", "content": "s" * 5000}, {"role": "user", "content": "q2"},
                          {"role": "assistant", "content": "a"}], "user": "someone"}
    assert prompt_cache_key("team-a", body) == prompt_cache_key("team-a", later)
    assert prompt_cache_key("team-a", body) != prompt_cache_key("team-b", body)
    assert prompt_cache_key("team-a", {"messages": [{"role": "user", "content": "short"}]}) is None


# --- usage, as each provider reports it -----------------------------------------------------


@pytest.mark.parametrize(("usage", "expected"), [
    # OpenAI / Azure / vLLM: cached reads inside prompt_tokens
    ({"prompt_tokens": 2006, "completion_tokens": 300, "prompt_tokens_details": {"cached_tokens": 1920}},
     (86, 1920, 0)),
    # DeepSeek: its own fields
    ({"prompt_tokens": 1500, "completion_tokens": 9, "prompt_cache_hit_tokens": 1280,
      "prompt_cache_miss_tokens": 220}, (220, 1280, 0)),
    # Anthropic and Bedrock through LiteLLM or the Bedrock plugin: writes at the top level
    ({"prompt_tokens": 3000, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 1000},
      "cache_creation_input_tokens": 1500}, (500, 1000, 1500)),
    # LiteLLM's detail name, and OpenRouter's
    ({"prompt_tokens": 100, "completion_tokens": 5, "prompt_tokens_details": {"cache_creation_tokens": 60}},
     (40, 0, 60)),
    ({"prompt_tokens": 100, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 10,
                                                                              "cache_write_tokens": 30}},
     (60, 10, 30)),
    # junk is zero, never a crash
    ({"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": None},
      "prompt_cache_hit_tokens": "x"}, (10, 0, 0)),
])
def test_usage_reads_every_providers_cache_fields(usage: dict[str, Any], expected: tuple[int, int, int]) -> None:
    u = Usage.from_openai(usage)
    assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens) == expected


def test_fake_prompt_cache_reads_only_the_shared_prefix() -> None:
    cache = PromptCache()
    head = [{"role": "system", "content": "x" * 8000}]
    first = cache.account({"messages": [*head, {"role": "user", "content": "one"}]}, "m")
    second = cache.account({"messages": [*head, {"role": "user", "content": "two"}]}, "m")
    other = cache.account({"messages": [*head, {"role": "user", "content": "two"}]}, "other-model")
    assert first.read == 0 and second.read > 1024 and second.read % 128 == 0 and other.read == 0

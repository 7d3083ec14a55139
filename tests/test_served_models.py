"""``GET /v1/models[/{id}]`` and ``GET /-/claude-code``: concrete names, never globs.

Issue 7, defect 11: ``/v1/models`` listed glob patterns (``claude-*``) as model ids,
and ``GET /v1/models/{id}`` was a 404 for every name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from clasp_gateway.config import Config, ModelRoute
from clasp_gateway.shaping.context import input_budget
from clasp_gateway.shell.served import describe_model, route_for, routing_strategy, served_models, tier_models
from clasp_gateway.testing import GATEWAY_KEY, GatewayServer, config_from

UPSTREAM_KEY = "sk-upstream-secret-0987654321"
API_BASE = "http://10.9.8.7:1234/v1"
ANTHROPIC = {"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"}
OPENAI = {"authorization": f"Bearer {GATEWAY_KEY}"}


def dep(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "api_base": API_BASE, "api_key": UPSTREAM_KEY, **extra}


TEAM: dict[str, Any] = {
    "models": {
        "claude-*haiku*": [dep("openai/gpt-4o-mini")],
        "claude-*": [dep("openai/gpt-4o"), dep("ollama/qwen2.5-coder:32b", max_input_tokens=32768)],
        "gpt-4o": [dep("openai/gpt-4o")],
        "gpt-*": [dep("openai/gpt-4o-mini")],
        "local-coder": [dep("ollama/llama3.2:latest", supports_vision=False)],
    }
}


@pytest.fixture(scope="module")
def team() -> Iterator[GatewayServer]:
    with GatewayServer(config_from(TEAM)) as server:
        yield server


def get(server: GatewayServer, path: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(server.base_url + path, headers=headers, timeout=10)


# --- /v1/models ---------------------------------------------------------------------------------


def test_model_list_has_concrete_names_never_globs(team: GatewayServer) -> None:
    body = get(team, "/v1/models", OPENAI).json()
    ids = [m["id"] for m in body["data"]]
    assert ids == ["claude-haiku-4-5", "claude-opus-4-6", "claude-sonnet-4-6", "claude-fable-5-2", "gpt-4o",
                   "local-coder"]
    assert not any(ch in i for i in ids for ch in "*?[")
    by_id = {m["id"]: m for m in body["data"]}
    assert body["object"] == "list" and by_id["gpt-4o"]["object"] == "model"
    # The description names the real model behind the Claude name.
    sonnet = by_id["claude-sonnet-4-6"]
    assert sonnet["display_name"] == "gpt-4o (openai)"
    assert sonnet["description"].startswith("sonnet tier: openai/gpt-4o through the clasp gateway · 128k context")
    assert "falls back to ollama/qwen2.5-coder:32b" in sonnet["description"]
    assert by_id["claude-haiku-4-5"]["display_name"] == "gpt-4o-mini (openai)"
    assert "text only" in by_id["local-coder"]["description"]


def test_model_list_in_anthropic_shape_for_anthropic_clients(team: GatewayServer) -> None:
    body = get(team, "/v1/models?limit=1000", ANTHROPIC).json()
    assert set(body) == {"data", "has_more", "first_id", "last_id"}
    assert body["has_more"] is False
    assert body["first_id"] == "claude-haiku-4-5" and body["last_id"] == "local-coder"
    first = body["data"][0]
    assert first["type"] == "model" and first["id"] == "claude-haiku-4-5"
    assert first["display_name"] == "gpt-4o-mini (openai)"
    assert "openai/gpt-4o-mini" in first["description"] and first["created_at"].endswith("Z")
    # What Claude Code's model discovery keeps: ids with "claude", none of them a glob.
    kept = [m["id"] for m in body["data"] if "claude" in m["id"] or "anthropic" in m["id"]]
    assert kept == ["claude-haiku-4-5", "claude-opus-4-6", "claude-sonnet-4-6", "claude-fable-5-2"]


def test_model_list_needs_a_key(team: GatewayServer) -> None:
    assert get(team, "/v1/models", {}).status_code == 401
    refused = get(team, "/v1/models", {"x-api-key": "wrong", "anthropic-version": "2023-06-01"})
    assert refused.status_code == 401 and refused.json()["type"] == "error"


# --- /v1/models/{id} ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["claude-sonnet-4-6", "claude-3-7-sonnet-20250219", "gpt-4o", "gpt-4.1-nano",
                                  "local-coder"])
def test_any_served_name_can_be_retrieved(team: GatewayServer, name: str) -> None:
    """A listed name, or any name a glob matches (a client's own model name)."""
    openai = get(team, f"/v1/models/{name}", OPENAI)
    assert openai.status_code == 200, openai.text
    assert openai.json()["id"] == name and openai.json()["object"] == "model"
    anthropic = get(team, f"/v1/models/{name}", ANTHROPIC)
    assert anthropic.status_code == 200
    assert anthropic.json()["type"] == "model" and anthropic.json()["id"] == name


def test_retrieved_model_names_the_real_model(team: GatewayServer) -> None:
    body = get(team, "/v1/models/claude-haiku-20991231", ANTHROPIC).json()
    assert body["display_name"] == "gpt-4o-mini (openai)"
    assert body["description"].startswith("openai/gpt-4o-mini through the clasp gateway")
    tier = get(team, "/v1/models/claude-opus-4-6", ANTHROPIC).json()
    assert tier["description"].startswith("opus tier: openai/gpt-4o")


def test_unknown_model_is_a_shaped_404(team: GatewayServer) -> None:
    anthropic = get(team, "/v1/models/llama-70b", ANTHROPIC)
    assert anthropic.status_code == 404
    assert anthropic.json()["type"] == "error" and anthropic.json()["error"]["type"] == "not_found_error"
    assert "llama-70b" in anthropic.json()["error"]["message"]
    openai = get(team, "/v1/models/llama-70b", OPENAI)
    assert openai.status_code == 404 and "llama-70b" in openai.json()["error"]["message"]
    assert get(team, "/v1/models/gpt-4o", {}).status_code == 401


# --- /-/claude-code -----------------------------------------------------------------------------


def test_claude_code_profile_needs_a_key_and_keeps_secrets(team: GatewayServer) -> None:
    assert get(team, "/-/claude-code", {}).status_code == 401
    response = get(team, "/-/claude-code?model=gpt-4o", OPENAI)
    assert response.status_code == 200
    assert API_BASE not in response.text and "10.9.8.7" not in response.text
    assert UPSTREAM_KEY not in response.text and GATEWAY_KEY not in response.text
    profile = response.json()
    assert set(profile["tiers"]) == {"opus", "sonnet", "haiku", "fable"}
    opus = profile["tiers"]["opus"]
    assert opus["model"] == "claude-opus-4-6" and opus["upstream"] == "openai/gpt-4o"
    assert opus["max_input_tokens"] == 128000 and opus["max_output_tokens"] == 16384
    # The gateway's own budget for what Claude Code asks with this name (64k, clamped
    # to gpt-4o's 16,384): Claude Code compacts before the gateway would trim.
    primary = team.config.models[1].deployments[0]
    assert opus["usable_input_tokens"] == input_budget(primary, 64_000)[0] == 128000 - 16384  # type: ignore[index]
    assert opus["reasoning"] is False and "thinking" not in opus["capabilities"]
    assert profile["model"]["model"] == "gpt-4o"
    assert get(team, "/-/claude-code?model=nope", OPENAI).json()["model"] is None


# --- the rules, without HTTP --------------------------------------------------------------------


def test_names_resolve_as_the_pipeline_resolves_them(team: GatewayServer) -> None:
    config = team.config
    for name in ["claude-haiku-4-5", "claude-opus-4-6", "gpt-4o", "gpt-4o-mini", "local-coder", "claude", "x"]:
        try:
            expected: ModelRoute | None = team.gateway.resolve_model(name)
        except Exception:
            expected = None
        assert route_for(config, name) is expected, name


def test_an_exact_claude_route_names_its_tier() -> None:
    config = config_from({"models": {"claude-*": [dep("openai/gpt-4o")],
                                     "claude-opus-4-5": [dep("anthropic/claude-opus-4-5")]}})
    tiers = tier_models(config)
    assert tiers["opus"][0] == "claude-opus-4-5" and tiers["sonnet"][0] == "claude-sonnet-4-6"
    assert tiers["opus"][1] is config.models[1]
    # File order: the glob's tier names, then the exact name.
    assert [m.id for m in served_models(config)] == ["claude-sonnet-4-6", "claude-haiku-4-5", "claude-fable-5-2",
                                                     "claude-opus-4-5"]


def test_a_glob_for_newer_models_gets_a_name_it_matches() -> None:
    config = config_from({"models": {"claude-opus-5*": [dep("openai/gpt-4o")], "claude-*sonnet*": [dep("openai/gpt-4o")]}})
    tiers = tier_models(config)
    assert tiers["opus"][0] == "claude-opus-5" and tiers["sonnet"][0] == "claude-sonnet-4-6"
    assert set(tiers) == {"opus", "sonnet"}


def test_a_route_picked_per_request_says_so() -> None:
    config = config_from({
        "models": {"claude-*": [dep("openai/gpt-4o"), dep("deepseek/deepseek-chat")]},
        "fallback": {"strategy": "cost"},
    })
    model = describe_model(config, "claude-sonnet-4-6")
    assert model is not None
    # Either may serve, and deepseek-chat takes no images.
    assert model.description == ("sonnet tier: routed per request by the gateway (cost) among openai/gpt-4o, "
                                 "deepseek/deepseek-chat · text only")
    assert model.display_name == "gpt-4o | deepseek-chat (routed)"
    # A route's own setting says so too; a strict chain tries its primary first.
    route = ModelRoute("claude-*", config.models[0].deployments, {"strategy": "latency"})
    strict = Config(config.source, config.server, config.keys, [route], [], {"models": {}})
    assert routing_strategy(strict, route) == "latency"
    assert routing_strategy(strict, ModelRoute("claude-*", route.deployments)) is None


def test_capabilities_follow_the_model() -> None:
    from clasp_gateway.shell.served import claude_code_profile

    config = config_from({"models": {
        "claude-*haiku*": [dep("openai/gpt-4o-mini")],
        "claude-*": [dep("openai/o3-mini", supports_reasoning=True, max_input_tokens=200000, max_output_tokens=100000)],
    }})
    tiers = claude_code_profile(config)["tiers"]
    assert "thinking" in tiers["opus"]["capabilities"] and tiers["opus"]["reasoning"] is True
    assert "thinking" not in tiers["haiku"]["capabilities"] and "effort" not in tiers["haiku"]["capabilities"]
    # o3-mini's answer room is what Claude Code asks for opus (64k), not the 100k limit.
    assert tiers["opus"]["usable_input_tokens"] == 200000 - 64000

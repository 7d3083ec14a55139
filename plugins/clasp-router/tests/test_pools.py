"""Pools: a public name (a Claude glob) maps to deployments the router picks among."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from clasp_gateway import ConfigError
from clasp_gateway.testing import FakeUpstream, config_from

IMAGE = [{"type": "text", "text": "what is this?"},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]


@pytest.fixture(scope="module")
def pool_gw(start: Callable[..., Any], ups: dict[str, FakeUpstream], kit: Any) -> Any:
    d = kit.deployment
    return start({
        "claude-*sonnet*": {"pool": ["big", "vision", "small"], "router": "cheapest-capable"},
        "claude-*haiku*": {"pool": ["small", {**d(ups["asia"], "asia", region="ap-south-1"),
                                              "input_cost_per_token": 1e-9, "output_cost_per_token": 1e-9}],
                             "router": "cost"},
        "backing": [
            d(ups["small"], "small", supports_vision=False, input_cost_per_token=1e-7, output_cost_per_token=4e-7),
            d(ups["vision"], "vision", input_cost_per_token=1e-6, output_cost_per_token=4e-6),
            d(ups["big"], "big", input_cost_per_token=1e-5, output_cost_per_token=4e-5),
        ],
    }, router={"learn": {"explore": 0}})  # no exploring: the same choice every run


def test_a_pool_picks_the_cheapest_capable(pool_gw: Any) -> None:
    r = pool_gw.chat("claude-sonnet-4-6", "hello")
    assert pool_gw.text(r) == "from small"
    assert r.headers["x-clasp-route"].startswith("small; strategy=cheapest-capable; rank=1/3")
    assert pool_gw.text(pool_gw.chat("claude-sonnet-4-6", IMAGE)) == "from vision"


def test_a_pool_may_mix_references_and_entries(pool_gw: Any) -> None:
    assert pool_gw.text(pool_gw.chat("claude-haiku-4-5", "hi")) == "from asia"


def test_anthropic_clients_ask_claude_names_and_get_the_pool(pool_gw: Any) -> None:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    r = pool_gw.post("/v1/messages", body)
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == "from small"


@pytest.mark.parametrize(("route", "expected"), [
    ({"pool": ["ghost"]}, "models.p.pool.0: 'ghost' is not a deployment under models:"),
    ({"pool": []}, "models.p.pool: expected a non-empty list"),
    ({"pool": ["a"], "deployments": [{"model": "openai/gpt-4o"}]}, "models.p: expected either `deployments:`"),
])
def test_pool_config_errors(route: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from({"models": {"p": route, "a": [{"id": "a", "model": "openai/gpt-4o", "api_key": "sk-x-1234567890ab"}]}})
    assert any(expected in p for p in caught.value.problems), caught.value.problems


def test_an_unknown_pool_router_is_a_config_error(kit: Any) -> None:
    from clasp_router.settings import parse_settings

    config = config_from({"models": {"p": {"pool": ["a"], "router": "cheapest"},
                                     "a": [{"id": "a", "model": "openai/gpt-4o", "api_key": "sk-x-1234567890ab"}]}})
    with pytest.raises(ConfigError) as caught:
        parse_settings(config)
    assert "models.p.router: 'cheapest' is not a routing strategy" in caught.value.problems[0]

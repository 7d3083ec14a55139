"""The real Claude Code CLI asks for Claude names; a pool route (clasp-router's learned
``cheapest-capable``) starts with the cheapest capable deployment, says so in
``x-clasp-route``, and after the cheap model fails Claude Code's main-loop turns
(errors the gateway falls back from) sends those turns to the stronger one first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import Error, FakeUpstream, GatewayServer, Text, config_from

from .claude import ScriptedModel, run_claude
from .helpers import assert_ok
from .stack import ClientLog

pytestmark = pytest.mark.e2e

KEY = "sk-upstream-pool-e2e-1234567890"


@pytest.fixture
def pooled() -> Iterator[tuple[FakeUpstream, GatewayServer, ClientLog]]:
    """A fresh gateway per test: what one test's runs teach the router stays there."""
    with FakeUpstream("openai") as up:
        common = {"api_base": up.base_url, "api_key": KEY}
        config = config_from({
            # A team that wants a failed turn to count (the default target lets the
            # cheap model fail twice); no exploration, so every run is the same.
            "router": {"learn": {"success_target": 0.7, "explore": 0}},
            "models": {
                "claude-*": {"pool": ["dear", "cheap"], "router": "cheapest-capable"},
                "backing": [
                    {**common, "id": "dear", "model": "openai/gpt-4o", "input_cost_per_token": 2.5e-6,
                     "output_cost_per_token": 1e-5},
                    {**common, "id": "cheap", "model": "openai/gpt-4o-mini", "input_cost_per_token": 1.5e-7,
                     "output_cost_per_token": 6e-7},
                ],
            },
        })
        client = ClientLog(create_app(config))
        with GatewayServer(config, app=client) as gw:
            yield up, gw, client


def test_claude_code_on_a_pool_gets_the_cheapest_capable(
    pooled: tuple[FakeUpstream, GatewayServer, ClientLog], tmp_path: Path
) -> None:
    upstream, gateway, client = pooled
    model = ScriptedModel([Text("Paris.")])
    upstream.script = model
    result = run_claude(gateway.base_url, "What is the capital of France?", tmp_path)
    assert_ok(result, model)
    assert result.text == "Paris."
    assert [c.body["model"] for c in model.main] == ["gpt-4o-mini"]
    routes = [e.headers.get("x-clasp-route", "") for e in client.messages() if e.status == 200]
    assert routes and all(r.startswith("cheap; strategy=cheapest-capable") for r in routes), routes


def test_claude_code_on_a_pool_learns_to_escalate(
    pooled: tuple[FakeUpstream, GatewayServer, ClientLog], tmp_path: Path
) -> None:
    upstream, gateway, client = pooled
    models = [ScriptedModel([Text("Berlin.")]), ScriptedModel([Text("Rome.")])]
    tried: list[str] = []

    def cheap_fails_the_main_loop(body: dict[str, Any], rec: Any) -> Any:
        if body.get("tools"):
            tried.append(body["model"])
            if body["model"] == "gpt-4o-mini":
                return Error(500)  # the cheap model cannot do Claude Code's turns
        return models[0](body, rec)

    upstream.script = cheap_fails_the_main_loop
    client.clear()
    first = run_claude(gateway.base_url, "What is the capital of Germany?", tmp_path / "one")
    assert_ok(first, models.pop(0))
    assert first.text == "Berlin."
    assert tried[0] == "gpt-4o-mini" and tried[-1] == "gpt-4o"  # fell back from cheap to dear
    tried.clear()
    second = run_claude(gateway.base_url, "And of Italy?", tmp_path / "two")
    assert_ok(second, models[0])
    assert second.text == "Rome."
    assert tried and set(tried) == {"gpt-4o"}, tried  # learned: the turns go to dear first
    main_routes = [e.headers.get("x-clasp-route", "") for e in client.messages()
                   if e.status == 200 and e.headers.get("x-clasp-route", "").startswith("dear")]
    assert any("coding/" in r and "rank=1/" in r for r in main_routes), main_routes

"""The real Claude Code CLI asks for Claude names; a pool route (clasp-router) picks the
cheapest capable deployment per request, and says so in ``x-clasp-route``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import FakeUpstream, GatewayServer, Text, config_from

from .claude import ScriptedModel, run_claude
from .helpers import assert_ok
from .stack import ClientLog

pytestmark = pytest.mark.e2e

KEY = "sk-upstream-pool-e2e-1234567890"


@pytest.fixture(scope="module")
def pooled() -> Iterator[tuple[FakeUpstream, GatewayServer, ClientLog]]:
    with FakeUpstream("openai") as up:
        common = {"api_base": up.base_url, "api_key": KEY}
        config = config_from({
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
    assert routes and all(r.startswith("cheap; strategy=cost") for r in routes), routes

"""Budget-aware routing through a running gateway with clasp-budgets: when the team's
budget runs low, ``cheapest-capable`` moves its traffic to a cheaper capable model it
would otherwise avoid (read from ``app.state.budget_remaining``, clasp-budgets' public
read, off the request's path)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from clasp_gateway.testing import GATEWAY_KEY, Error, FakeUpstream, GatewayServer, Text, config_from

UPSTREAM_KEY = "sk-upstream-budget-test-1234567890"
TEAM = f"qa-{uuid.uuid4().hex[:8]}"
"""A team of its own: budget spend lives in the gateway's data directory and state, which
other tests' gateways in the same run may share (a team ``qa`` had spent $4.98 there)."""


@pytest.fixture(scope="module")
def ups() -> Iterator[dict[str, FakeUpstream]]:
    with FakeUpstream("openai") as cheap, FakeUpstream("openai") as mid:
        found = {"cheap": cheap, "mid": mid}
        for name, up in found.items():
            up.script = (lambda n: lambda body, rec: Text(f"from {n}", usage=(10_000, 1_000)))(name)
        yield found


@pytest.fixture(scope="module")
def gw(ups: dict[str, FakeUpstream]) -> Iterator[GatewayServer]:
    def d(name: str, price: float) -> dict[str, Any]:
        return {"id": name, "model": "openai/gpt-4o", "api_base": ups[name].base_url, "api_key": UPSTREAM_KEY,
                "input_cost_per_token": price, "output_cost_per_token": 4 * price}

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLASP_LOAD_PLUGINS", "router,fallback,claude,budgets_budgets")
        config = config_from({
            "keys": [{"key": GATEWAY_KEY, "name": "tests", "team": TEAM}],
            "budgets": {"limits": [{"name": "qa-month", "scope": "team", "usd": 0.05, "mode": "soft"}]},
            "router": {"learn": {"explore": 0, "success_target": 0.7, "budget_low": 0.2, "budget_target": 0.3}},
            "models": {
                "claude-*": {"pool": ["cheap", "mid"], "router": "cheapest-capable"},
                "backing": [d("cheap", 1e-7), d("mid", 1e-6)],
            },
        })
        with GatewayServer(config) as server:
            yield server


def chat(gw: GatewayServer, content: str) -> httpx.Response:
    payload = {"model": "claude-haiku-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": content}]}
    response = httpx.post(gw.base_url + "/v1/chat/completions", json=payload, timeout=10,
                          headers={"x-api-key": GATEWAY_KEY})
    assert response.status_code == 200, response.text
    return response


def test_a_budget_running_low_moves_traffic_to_the_cheaper_model(gw: GatewayServer, ups: dict[str, FakeUpstream]) -> None:
    ups["cheap"].script = lambda body, rec: Error(500)
    try:
        assert chat(gw, "title one").headers["x-clasp-route"].startswith("mid")  # cheap failed: avoided
    finally:
        ups["cheap"].script = lambda body, rec: Text("from cheap", usage=(10_000, 1_000))
    assert chat(gw, "title two").headers["x-clasp-route"].startswith("mid")
    # Each mid answer costs $0.014 of the team's $0.05: a few more and less than 20% is left.
    deadline = time.monotonic() + 10
    routes = []
    while time.monotonic() < deadline:
        route = chat(gw, f"title {len(routes) + 3}").headers["x-clasp-route"]
        routes.append(route)
        if route.startswith("cheap"):
            break
        time.sleep(0.1)
    assert routes[-1].startswith("cheap") and "budget low" in routes[-1], routes
    assert all(r.startswith("mid") for r in routes[:-1])

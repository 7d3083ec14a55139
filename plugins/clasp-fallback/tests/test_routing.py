"""Which deployments a request tries: strategies, task chains, context windows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from clasp_fallback.breaker import BreakerView
from clasp_fallback.stats import Stats
from clasp_fallback.strategy import balanced, by_cost

from clasp_gateway import hookimpl
from clasp_gateway.testing import Error, FakeUpstream, Text
from clasp_gateway.types import Deployment, ModelInfo

OVERFLOW = {"error": {"message": "This model's maximum context length is 8192 tokens. However, your messages "
                                 "resulted in 9000 tokens. Please reduce the length of the messages.",
                      "type": "invalid_request_error", "code": "context_length_exceeded"}}


@pytest.fixture
def three() -> Iterator[tuple[FakeUpstream, FakeUpstream, FakeUpstream]]:
    with FakeUpstream() as a, FakeUpstream() as b, FakeUpstream() as c:
        a.script = lambda body, rec: Text("from a")
        b.script = lambda body, rec: Text("from b")
        c.script = lambda body, rec: Text("from c")
        yield a, b, c


def dep(ident: str, *, cost: float = 0.0, window: int | None = None) -> Deployment:
    return Deployment(ident, "openai", ident, "", info=ModelInfo(max_input_tokens=window, input_cost_per_token=cost,
                                                                    output_cost_per_token=cost * 4))


def all_closed(key: str) -> BreakerView:
    return BreakerView()


def test_cost_order_is_cheapest_healthy_first() -> None:
    deps = [dep("pricey", cost=1e-5), dep("cheap", cost=1e-7), dep("mid", cost=1e-6)]
    assert [d.id for d in by_cost(deps, all_closed, 1000, 100)] == ["cheap", "mid", "pricey"]

    def cheap_is_open(key: str) -> BreakerView:
        return BreakerView(state="open" if key == "cheap" else "closed")

    assert [d.id for d in by_cost(deps, cheap_is_open, 1000, 100)] == ["mid", "pricey", "cheap"]


def test_balanced_prefers_fast_reliable_and_tries_the_unmeasured() -> None:
    deps = [dep("slow"), dep("flaky"), dep("fast"), dep("new")]
    stats = Stats()
    for _ in range(10):
        stats.attempt_ended("slow", ok=True, counts=True, ttfb=2.0, error=None)
        stats.attempt_ended("flaky", ok=True, counts=True, ttfb=0.2, error=None)
        stats.attempt_ended("flaky", ok=False, counts=True, ttfb=None, error="503")
        stats.attempt_ended("fast", ok=True, counts=True, ttfb=0.2, error=None)
    order = [d.id for d in balanced(deps, all_closed, stats, _weights(), 1000, 100)]
    # Unmeasured first (to measure it), then fast; failing half the time ranks below
    # being 10x slower with the default weights (errors weigh 2).
    assert order == ["new", "fast", "slow", "flaky"]


def _weights() -> Any:
    from clasp_fallback.settings import BalanceWeights

    return BalanceWeights()


def test_cost_strategy_sends_to_the_cheapest(serve: Callable[..., Any], kit: Any, three: Any) -> None:
    a, b, _ = three
    chain = [kit.deployment(a.base_url, "a", input_cost_per_token=1e-5, output_cost_per_token=4e-5),
             kit.deployment(b.base_url, "b", input_cost_per_token=1e-7, output_cost_per_token=4e-7)]
    gw = serve(chain, fallback={"strategy": "cost"})
    assert gw.text(gw.chat()) == "from b"


def test_balanced_strategy_moves_traffic_to_the_faster_deployment(serve: Callable[..., Any], kit: Any, three: Any) -> None:
    a, b, _ = three
    a.script = lambda body, rec: Text("from a", delay=0.15)
    gw = serve([kit.deployment(a.base_url, "a"), kit.deployment(b.base_url, "b")], fallback={"strategy": "balanced"})
    answers = [gw.text(gw.chat()) for _ in range(5)]
    assert answers[0] == "from a" and answers[-3:] == ["from b"] * 3


def test_a_strategy_registered_by_another_plugin(serve: Callable[..., Any], kit: Any, three: Any) -> None:
    class Reverse:
        @hookimpl
        def register_routing_strategies(self, register: Callable[..., None]) -> None:
            register("reverse", lambda ctx, deployments: list(reversed(deployments)))

    a, b, c = three
    chain = [kit.deployment(x.base_url, n) for x, n in ((a, "a"), (b, "b"), (c, "c"))]
    gw = serve(chain, fallback={"strategy": "reverse"}, plugins=[Reverse()])
    assert gw.text(gw.chat()) == "from c"


def test_an_overflow_the_core_could_not_absorb_moves_on(serve: Callable[..., Any], kit: Any, three: Any) -> None:
    # The core gives the first "context length exceeded" one more go (the next, larger
    # window); when that overflows too, the plugin moves on to the next candidate.
    a, b, c = three
    a.script = b.script = lambda body, rec: Error(400, OVERFLOW)
    chain = [kit.deployment(a.base_url, "a", max_input_tokens=8192),
             kit.deployment(b.base_url, "b", max_input_tokens=16384),
             kit.deployment(c.base_url, "c", max_input_tokens=128000)]
    gw = serve(chain)
    assert gw.text(gw.chat()) == "from c"
    assert kit.chat_requests(a) == 1 and kit.chat_requests(b) == 1
    # An overflow says nothing about the deployment's health.
    assert gw.status()["by_id"]["a"]["breaker"]["consecutive_failures"] == 0


def test_a_request_too_big_for_a_window_never_goes_there(serve: Callable[..., Any], kit: Any, three: Any) -> None:
    a, b, _ = three
    chain = [kit.deployment(a.base_url, "a", max_input_tokens=2000), kit.deployment(b.base_url, "b", max_input_tokens=100000)]
    gw = serve(chain)
    # The core's context fitting reroutes it; the plugin's ordering must not undo that.
    assert gw.text(gw.chat("word " * 4000)) == "from b"
    assert gw.text(gw.chat("short")) == "from a"
    assert kit.chat_requests(a) == 1


def test_overflowing_every_window_is_the_clients_400(serve: Callable[..., Any], kit: Any, three: Any) -> None:
    a, b, _ = three
    a.script = b.script = lambda body, rec: Error(400, OVERFLOW)
    chain = [kit.deployment(a.base_url, "a", max_input_tokens=8192), kit.deployment(b.base_url, "b", max_input_tokens=16384)]
    gw = serve(chain, fallback={"default_response": "must not hide a client error"})
    response = gw.chat()
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("prompt is too long: ")
    assert kit.chat_requests(b) == 1  # the larger one was tried once


def test_task_chain_routes_background_calls(serve: Callable[..., Any], kit: Any, three: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import anthropic

    from clasp_gateway.testing import GATEWAY_KEY

    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "fallback,claude")
    a, b, c = three
    models = {"claude-sonnet": [kit.deployment(a.base_url, "main"), kit.deployment(b.base_url, "backup")],
              "cheap": [kit.deployment(c.base_url, "small")]}
    gw = serve(models=models, fallback={"tasks": {"background": ["small"]}})
    client = anthropic.Anthropic(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0)
    title = client.messages.create(model="claude-sonnet", max_tokens=50, messages=[{"role": "user", "content": "title?"}])
    work = client.messages.create(model="claude-sonnet", max_tokens=4000, messages=[{"role": "user", "content": "code"}])
    assert title.content[0].text == "from c" and work.content[0].text == "from a"  # type: ignore[union-attr]

    c.script = lambda body, rec: Error(503)  # the task chain fails: the model's own chain takes over
    again = client.messages.create(model="claude-sonnet", max_tokens=50, messages=[{"role": "user", "content": "title?"}])
    assert again.content[0].text == "from a"  # type: ignore[union-attr]
    client.close()

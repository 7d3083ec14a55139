"""The capability filter and the strategies as pure functions (no gateway)."""

from __future__ import annotations

from clasp_router.capability import Needs, missing, needs_of, same_capabilities
from clasp_router.runtime import plan_route
from clasp_router.settings import RouterSettings, latency_target
from clasp_router.strategies import VIEW_KEY, RouteView, balanced, cost, latency, strict

from clasp_gateway import Deployment, KeyPolicy, ModelInfo, Principal, RequestContext


def dep(ident: str, *, price: float = 1e-6, vision: bool = True, tools: bool = True, reasoning: bool = False,
        window: int | None = 128000, out: int | None = 16000, region: str | None = None) -> Deployment:
    info = ModelInfo(max_input_tokens=window, max_output_tokens=out, supports_vision=vision, supports_tools=tools,
                     supports_reasoning=reasoning, input_cost_per_token=price, output_cost_per_token=price * 4)
    return Deployment(ident, "openai", ident, "", info=info, settings={"region": region} if region else {})


def ctx(view: RouteView | None = None, regions: tuple[str, ...] = ()) -> RequestContext:
    c = RequestContext("r1", "openai", "m", False, principal=Principal("k", policy=KeyPolicy(regions=regions)))
    if view is not None:
        c.state[VIEW_KEY] = view
    return c


def ids(deployments: list[Deployment]) -> list[str]:
    return [d.id for d in deployments]


def test_missing_names_the_capability() -> None:
    d = dep("d", vision=False, tools=False, window=1000, out=100)
    assert missing(d, Needs(tools=True)) == "tools"
    assert missing(d, Needs(vision=True)) == "vision"
    assert missing(d, Needs(reasoning=True)) == "reasoning"
    assert missing(d, Needs(input_tokens=2000)) == "context"
    assert missing(d, Needs(max_tokens=200)) == "output"
    assert missing(d, Needs(input_tokens=10, max_tokens=50)) is None


def test_needs_from_a_request() -> None:
    request = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
               "tools": [{"type": "function", "function": {"name": "f"}}], "max_tokens": 99}
    needs = needs_of(request, None)
    assert needs.vision and needs.tools and needs.max_tokens == 99 and not needs.reasoning


def test_strict_keeps_only_as_capable_fallbacks_even_if_dearer() -> None:
    primary = dep("primary", reasoning=True)
    chain = [primary, dep("cheap-no-reasoning", price=1e-8), dep("dear-twin", price=1e-4, reasoning=True),
             dep("small-window", reasoning=True, window=8000)]
    assert ids(strict(ctx(), chain)) == ["primary", "dear-twin"]
    assert same_capabilities(primary, chain[2]) and not same_capabilities(primary, chain[3])


def test_cost_is_cheapest_first_and_unavailable_last() -> None:
    chain = [dep("dear", price=1e-5), dep("cheap", price=1e-7), dep("mid", price=1e-6)]
    assert ids(cost(ctx(RouteView()), chain)) == ["cheap", "mid", "dear"]
    down = RouteView(available=lambda i: i != "cheap")
    assert ids(cost(ctx(down), chain)) == ["mid", "dear", "cheap"]


def test_balanced_weighs_capability_against_cost() -> None:
    weak_cheap = dep("weak", price=1e-7, vision=False, window=8000, out=2000)
    strong_dear = dep("strong", price=1e-5, reasoning=True, window=200000, out=64000)
    strong_mid = dep("strong-mid", price=2e-6, reasoning=True, window=200000, out=64000)
    order = ids(balanced(ctx(RouteView()), [strong_dear, weak_cheap, strong_mid]))
    assert order[0] == "strong-mid" and order[-1] == "strong"


def test_latency_target_prefers_cheap_under_target_then_fastest() -> None:
    chain = [dep("fast-dear", price=1e-5), dep("slow-cheap", price=1e-7), dep("ok-mid", price=1e-6)]
    times = {"fast-dear": 100.0, "slow-cheap": 5000.0, "ok-mid": 400.0}
    view = RouteView(ttfb_ms=times.get, latency_target_ms=500)
    assert ids(latency(ctx(view), chain)) == ["ok-mid", "fast-dear", "slow-cheap"]
    view = RouteView(ttfb_ms=times.get)
    assert ids(latency(ctx(view), chain)) == ["fast-dear", "ok-mid", "slow-cheap"]


def test_the_latency_header_only_tightens() -> None:
    s = RouterSettings(latency_target_ms=1000)
    assert latency_target(s, {"x-clasp-latency-target-ms": "300"}) == 300
    assert latency_target(s, {"x-clasp-latency-target-ms": "9000"}) == 1000
    assert latency_target(s, {"x-clasp-latency-target-ms": "nan-sense"}) == 1000
    assert latency_target(RouterSettings(), {"x-clasp-latency-target-ms": "-5"}) is None


def test_plan_filters_regions_then_capabilities() -> None:
    chain = [dep("us", region="us-east-1"), dep("eu-text", region="eu-west-1", vision=False),
             dep("eu", region="eu-west-1")]
    request = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    result = plan_route(ctx(regions=("eu-west-1",)), request, chain, RouterSettings(), lambda _: None,
                        lambda _: True, chain)
    assert not isinstance(result, Exception)
    ordered, plan = result
    assert ids(ordered) == ["eu"] and plan.removed == {"us": "region", "eu-text": "vision"}
    refused = plan_route(ctx(regions=("ap-south-1",)), request, chain, RouterSettings(), lambda _: None,
                         lambda _: True, chain)
    assert isinstance(refused, Exception) and "ap-south-1" in str(getattr(refused, "message", refused))


def test_key_settings_and_headers_only_tighten() -> None:
    from clasp_router.settings import cost_ceiling

    s = RouterSettings(max_request_cost_usd=0.5, latency_target_ms=2000)
    assert cost_ceiling(s, {}, {"max_request_cost_usd": 0.1}) == 0.1
    assert cost_ceiling(s, {"x-clasp-max-cost-usd": "0.05"}, {"max_request_cost_usd": 0.1}) == 0.05
    assert cost_ceiling(s, {"x-clasp-max-cost-usd": "9"}, {"max_request_cost_usd": True}) == 0.5
    assert latency_target(s, {}, {"latency_target_ms": 700}) == 700

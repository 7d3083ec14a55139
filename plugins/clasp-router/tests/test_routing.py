"""The router end to end: capability filter, strategies, regions on every path, the
explain header and the catalogue, over real gateways and fake upstreams."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from clasp_gateway.testing import GATEWAY_KEY, Error, FakeUpstream, Text

Gateway = Any
EU_KEY = "sk-clasp-eu-only-key-0123456789abcdef"
AP_KEY = "sk-clasp-ap-only-key-0123456789abcdef"
UPSTREAM_KEY = "sk-upstream-router-test-1234567890"


def deployment(up: FakeUpstream, ident: str, **extra: Any) -> dict[str, Any]:
    """A clasp.yaml deployment at a fake upstream (as conftest's)."""
    return {"id": ident, "model": "openai/gpt-4o-mini", "api_base": up.base_url, "api_key": UPSTREAM_KEY,
            "timeouts": {"connect": 1, "first_byte": 2, "idle": 2, "total": 5}, **extra}


IMAGE = [{"type": "text", "text": "what is this?"},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]


def catalogue(ups: dict[str, FakeUpstream]) -> list[dict[str, Any]]:
    """Small (cheap, text only, 8k, eu), vision (mid, us), big (dear, reasoning, eu)."""
    return [
        deployment(ups["small"], "small", region="eu-west-1", supports_vision=False, max_input_tokens=8000,
                   max_output_tokens=2000, input_cost_per_token=1e-7, output_cost_per_token=4e-7),
        deployment(ups["vision"], "vision", region="us-east-1", supports_vision=True, max_input_tokens=128000,
                   max_output_tokens=16000, input_cost_per_token=1e-6, output_cost_per_token=4e-6),
        deployment(ups["big"], "big", region="eu-west-1", supports_vision=True, supports_reasoning=True,
                   max_input_tokens=200000, max_output_tokens=64000, input_cost_per_token=1e-5,
                   output_cost_per_token=4e-5),
    ]


@pytest.fixture(scope="module")
def chain_gw(start: Callable[..., Gateway], ups: dict[str, FakeUpstream]) -> Gateway:
    """Strategy ``chain`` (the default): file order after the filters."""
    models = {"mixed": catalogue(ups), "asia-only": [deployment(ups["asia"], "asia", region="ap-south-1")]}
    return start(models, fallback={"breaker": {"failures": 1}})


@pytest.fixture(scope="module")
def cost_gw(start: Callable[..., Gateway], ups: dict[str, FakeUpstream]) -> Gateway:
    deps = catalogue(ups)
    return start({"mixed": [deps[2], deps[1], deps[0]]}, router={"strategy": "cost"})


def test_text_goes_first_in_chain_order(chain_gw: Gateway) -> None:
    r = chain_gw.chat("mixed", "hello")
    assert chain_gw.text(r) == "from small"
    assert r.headers["x-clasp-route"].startswith("small; strategy=chain; rank=1/3")


def test_an_image_skips_the_text_only_deployment(chain_gw: Gateway) -> None:
    r = chain_gw.chat("mixed", IMAGE)
    assert chain_gw.text(r) == "from vision"
    assert "filtered=vision:1" in r.headers["x-clasp-route"]


def test_thinking_needs_reasoning_and_output_room_counts(chain_gw: Gateway) -> None:
    r = chain_gw.chat("mixed", "think", reasoning_effort="high")
    assert chain_gw.text(r) == "from big"
    r = chain_gw.chat("mixed", "long answer please", max_tokens=10000)  # small's output limit is 2000
    assert chain_gw.text(r) == "from vision"
    assert "output:1" in r.headers["x-clasp-route"]


def test_a_long_input_skips_the_small_window(chain_gw: Gateway) -> None:
    # The router notes it; the core's context fitting reroutes (and says so).
    r = chain_gw.chat("mixed", "word " * 12000)
    assert chain_gw.text(r) == "from vision"
    assert "context-tight=1" in r.headers["x-clasp-route"]
    assert r.headers["x-clasp-context"] == "rerouted; to=vision"


def test_cost_puts_the_cheapest_capable_first(cost_gw: Gateway) -> None:
    r = cost_gw.chat("mixed", "hello")
    assert cost_gw.text(r) == "from small"  # file order is big, vision, small
    assert r.headers["x-clasp-route"].startswith("small; strategy=cost; rank=1/3")
    assert cost_gw.text(cost_gw.chat("mixed", IMAGE)) == "from vision"  # cheapest that sees images


def test_a_regional_key_stays_in_its_regions(chain_gw: Gateway) -> None:
    # The image would go to "vision" (us-east-1): the EU key gets "big" (eu-west-1) instead.
    r = chain_gw.chat("mixed", IMAGE, key=EU_KEY)
    assert chain_gw.text(r) == "from big"
    assert "region:1" in r.headers["x-clasp-route"]


def test_no_deployment_in_the_regions_is_a_403_on_both_apis(chain_gw: Gateway) -> None:
    r = chain_gw.chat("asia-only", "hi", key=EU_KEY)
    assert r.status_code == 403
    assert "regions (eu-west-1)" in r.json()["error"]["message"] and "ap-south-1" in r.json()["error"]["message"]
    body = {"model": "mixed", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    r = chain_gw.post("/v1/messages", body, AP_KEY)
    assert r.status_code == 403
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "permission_error"
    assert "ap-south-1" in r.json()["error"]["message"]
    assert chain_gw.text(chain_gw.chat("asia-only", "hi", key=AP_KEY)) == "from asia"


def test_the_catalogue_shows_capabilities_without_secrets(chain_gw: Gateway, ups: dict[str, FakeUpstream]) -> None:
    assert httpx.get(chain_gw.base_url + "/-/catalogue", timeout=5).status_code == 401
    r = httpx.get(chain_gw.base_url + "/-/catalogue", headers={"x-api-key": GATEWAY_KEY}, timeout=5)
    assert r.status_code == 200
    rows = {d["id"]: d for d in r.json()["deployments"]}
    assert rows["small"]["vision"] is False and rows["small"]["region"] == "eu-west-1"
    assert rows["big"]["reasoning"] is True and rows["big"]["context_window"] == 200000
    assert rows["small"]["ttfb_ms"] is not None  # measured by the requests above
    assert rows["small"]["available"] is True
    assert UPSTREAM_KEY not in r.text and ups["small"].base_url not in r.text and "127.0.0.1" not in r.text


def test_similar_capability_fallback_when_the_chain_is_down(start: Callable[..., Gateway]) -> None:
    with FakeUpstream("openai") as down, FakeUpstream("openai") as twin, FakeUpstream("openai") as weak:
        down.script = lambda body, rec: Text("from down")
        twin.script = lambda body, rec: Text("from twin")
        weak.script = lambda body, rec: Text("from weak")
        caps = {"supports_vision": True, "max_input_tokens": 128000, "max_output_tokens": 16000}
        gw = start({
            "solo": [deployment(down, "down", region="eu-west-1", **caps)],
            "twin": [deployment(twin, "twin", region="eu-west-1", **caps)],
            "twin-us": [deployment(twin, "twin-us", region="us-east-1", **caps)],
            "weak": [deployment(weak, "weak", region="eu-west-1", supports_vision=False, max_input_tokens=8000)],
        }, fallback={"breaker": {"failures": 1, "cooldown": 60}})
        assert gw.text(gw.chat("solo")) == "from down"
        down.script = lambda body, rec: Error(503, {"error": {"message": "down"}})
        r = gw.chat("solo")
        assert r.status_code >= 500  # this one opens the breaker: no chain alternative yet
        r = gw.chat("solo", key=EU_KEY)
        assert gw.text(r) in ("from twin",)
        assert "similar-capability fallback" in r.headers["x-clasp-route"]
        assert r.headers["x-clasp-route"].startswith("twin;")  # the eu twin, never twin-us for this key


def test_a_cost_ceiling_filters_and_an_impossible_one_is_a_400(chain_gw: Gateway) -> None:
    # Estimates with the default 1000 output tokens: small $0.0004, vision $0.004, big $0.04.
    r = chain_gw.post("/v1/chat/completions", {"model": "mixed", "messages": [{"role": "user", "content": IMAGE}]},
                      **{"x-clasp-max-cost-usd": "0.01"})
    assert chain_gw.text(r) == "from vision"
    assert "cost-ceiling:1" in r.headers["x-clasp-route"]  # big is over it
    r = chain_gw.post("/v1/chat/completions", {"model": "mixed", "messages": [{"role": "user", "content": IMAGE}]},
                      **{"x-clasp-max-cost-usd": "0.001"})
    assert r.status_code == 400 and "cost ceiling of $0.001" in r.json()["error"]["message"]
    body = {"model": "mixed", "max_tokens": 1000, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]}
    r = chain_gw.post("/v1/messages", body, **{"x-clasp-max-cost-usd": "0.001"})
    assert r.status_code == 400 and r.json()["type"] == "error" and "cost ceiling" in r.json()["error"]["message"]
    # Nonsense is ignored, not an error: a header only ever tightens.
    r = chain_gw.post("/v1/chat/completions", {"model": "mixed", "messages": [{"role": "user", "content": "hi"}]},
                      **{"x-clasp-max-cost-usd": "lots"})
    assert chain_gw.text(r) == "from small"


def test_availability_spreads_by_rate_limit_headroom(start: Callable[..., Gateway]) -> None:
    from clasp_gateway.testing import openai_limits

    with FakeUpstream("openai") as a, FakeUpstream("openai") as b:
        a.script = lambda body, rec: Text("from a")
        b.script = lambda body, rec: Text("from b")
        a.response_headers = lambda rec: openai_limits(10, reset_requests="60s")  # 2% left
        b.response_headers = lambda rec: openai_limits(400, reset_requests="60s")  # 80% left
        gw = start({"m": [deployment(a, "a"), deployment(b, "b")]}, router={"strategy": "availability"})
        assert gw.text(gw.chat("m")) == "from a"  # nothing known yet: chain order
        assert gw.text(gw.chat("m")) == "from b"  # a is nearly out, b unknown
        assert gw.text(gw.chat("m")) == "from b"
        rows = {d["id"]: d for d in httpx.get(gw.base_url + "/-/catalogue", headers={"x-api-key": GATEWAY_KEY},
                                              timeout=5).json()["deployments"]}
        assert rows["a"]["headroom"] == 0.02 and rows["b"]["headroom"] == 0.8

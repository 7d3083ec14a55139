"""What the ``record`` events carry for spend ledgers (issue 10, "Cost"): the request
event's user, project, tags, cache hit and saving, region, retries and fallbacks and
cache-write tokens; each attempt's own cost; and how a call is priced
(``pipeline.request_cost``: cache reads and writes at their rates, a provider-reported
cost first; ``prices:`` per deployment in clasp.yaml)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import orjson
import pytest

from clasp_gateway import ConfigError, Deployment, KeyPolicy, ModelInfo, Principal, RequestContext, Usage, hookimpl
from clasp_gateway.pipeline import Gateway, request_cost
from clasp_gateway.testing import Error, FakeUpstream, Raw, config_from
from tests.hardening import APIS, Witness, call, deployment, serving

INFO = ModelInfo(input_cost_per_token=3e-6, output_cost_per_token=15e-6,
                 cache_read_input_token_cost=0.3e-6, cache_creation_input_token_cost=3.75e-6)
DEP = Deployment(id="d", provider="anthropic", model="claude-sonnet-4-5", api_base="", info=INFO)


def test_usage_from_openai_reads_cache_writes_and_a_reported_cost() -> None:
    usage = Usage.from_openai({
        "prompt_tokens": 1000, "completion_tokens": 50, "prompt_tokens_details": {"cached_tokens": 600},
        "cache_creation_input_tokens": 300, "cost": 0.0123,
    })
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (100, 600, 300)
    assert usage.output_tokens == 50 and usage.cost_usd == 0.0123
    details = Usage.from_openai({"prompt_tokens": 10, "prompt_tokens_details": {"cache_creation_tokens": 4}})
    assert details.cache_creation_input_tokens == 4 and details.input_tokens == 6
    for bad in (True, "0.1", float("nan"), -1):
        assert Usage.from_openai({"prompt_tokens": 1, "cost": bad}).cost_usd is None


def test_request_cost_prices_cache_reads_and_writes_at_their_rates() -> None:
    usage = Usage(input_tokens=1000, output_tokens=200, cache_read_input_tokens=10_000, cache_creation_input_tokens=2000)
    expected = 1000 * 3e-6 + 200 * 15e-6 + 10_000 * 0.3e-6 + 2000 * 3.75e-6
    assert request_cost(DEP, usage) == pytest.approx(expected)
    # no cache rates in the map: both at the input rate
    plain = dataclasses.replace(DEP, info=ModelInfo(input_cost_per_token=1e-6, output_cost_per_token=2e-6))
    assert request_cost(plain, usage) == pytest.approx((1000 + 10_000 + 2000) * 1e-6 + 200 * 2e-6)
    # a cost the provider reported wins
    assert request_cost(DEP, dataclasses.replace(usage, cost_usd=0.5)) == 0.5


def test_prices_per_deployment_per_million_or_per_token() -> None:
    config = config_from({"models": {"m": [
        {"model": "anthropic/claude-sonnet-4-5", "id": "a", "api_key": "x",
         "prices": {"input": 2, "output": 10, "cache_read": 0.2, "cache_write": 2.5}},
        {"model": "openai/gpt-4o", "id": "b", "api_key": "x", "prices": {"input": 2e-6, "per": "token"},
         "output_cost_per_token": 1e-5},
    ]}})
    a, b = config.models[0].deployments
    assert a.info.input_cost_per_token == pytest.approx(2e-6) and a.info.output_cost_per_token == pytest.approx(1e-5)
    assert a.info.cache_read_input_token_cost == pytest.approx(0.2e-6)
    assert a.info.cache_creation_input_token_cost == pytest.approx(2.5e-6)
    assert b.info.input_cost_per_token == pytest.approx(2e-6) and b.info.output_cost_per_token == 1e-5
    with pytest.raises(ConfigError) as caught:
        config_from({"models": {"m": [{"model": "openai/gpt-4o", "api_key": "x", "input_cost_per_token": 1e-6,
                                        "prices": {"input": 1, "outptu": 2, "per": "year"}}]}})
    text = "\n".join(caught.value.problems)
    assert "prices.input: input_cost_per_token gives this price too" in text
    assert "prices.outptu" in text and "did you mean" in text and "prices.per" in text


def test_build_event_carries_the_ledger_fields() -> None:
    ctx = RequestContext(request_id="req_1", api="anthropic", public_model="m", client_stream=True,
                         principal=Principal(key_id="k1", name="alice-key", team="core", project="api",
                                             policy=KeyPolicy()))
    ctx.user, ctx.tags, ctx.cache_hit, ctx.saved_usd = "alice", {"feature": "review"}, "exact", 0.25
    dep = dataclasses.replace(DEP, settings={"region": "eu-west-1"})
    event = Gateway.build_event(ctx, dep, Usage(input_tokens=5, cache_creation_input_tokens=7), 200, None, False,
                                time.perf_counter(), cost=0.0)
    assert event["user"] == "alice" and event["project"] == "api" and event["tags"] == {"feature": "review"}
    assert event["cache_hit"] == "exact" and event["saved_usd"] == 0.25 and event["region"] == "eu-west-1"
    assert event["usage"]["cache_creation_input_tokens"] == 7
    assert event["retries"] == 0 and event["fallbacks"] == 0
    assert abs(event["started_at"] - time.time()) < 60


class Tagger:
    """Sets what the keys plugin would (``ctx.user``, ``ctx.tags``) before the call."""

    @hookimpl(tryfirst=True)
    def before_call(self, ctx: RequestContext, request: Any) -> None:
        ctx.user = "bob"
        ctx.tags = {"feature": "ledger"}


def _completion(stream: bool) -> Raw:
    usage = {"prompt_tokens": 1100, "completion_tokens": 40, "prompt_tokens_details": {"cached_tokens": 600},
             "cache_creation_input_tokens": 400}
    if not stream:
        body = {"id": "c1", "object": "chat.completion", "model": "gpt-4o-mini", "usage": usage,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "priced"},
                             "finish_reason": "stop"}]}
        return Raw(body=orjson.dumps(body), content_type="application/json")
    chunks = [
        {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "priced"}, "finish_reason": None}]},
        {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
         "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": [], "usage": usage},
    ]
    return Raw(events=[b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("api", APIS)
def test_events_of_a_request_that_retried_and_fell_back(upstream: FakeUpstream, api: str, stream: bool) -> None:
    prices = {"prices": {"input": 1, "output": 10, "cache_read": 0.1, "cache_write": 1.25}}
    models = {"chain": [deployment(upstream.base_url, "primary", region="us-east-1"),
                        deployment(upstream.base_url, "secondary", region="eu-west-1", **prices)]}
    witness = Witness()

    class RetryOnce:
        @hookimpl
        def on_error(self, ctx: RequestContext, deployment: Any, error: Exception, attempt_number: int) -> Any:
            return 0.0 if attempt_number == 1 else "next"

    with serving(models, witness, Tagger(), RetryOnce()) as server:
        upstream.queue(Error(500), Error(500), _completion(stream))
        response = call(server, api, stream=stream)
        assert response.status_code == 200, response.text
    request = witness.kind("request")[-1]
    assert request["retries"] == 1 and request["fallbacks"] == 1 and len(request["attempts"]) == 3
    assert request["region"] == "eu-west-1" and request["deployment"] == "secondary"
    assert request["user"] == "bob" and request["tags"] == {"feature": "ledger"}
    assert request["cache_hit"] is None and request["saved_usd"] == 0.0 and request["team"] == "qa"
    assert request["usage"]["cache_creation_input_tokens"] == 400 and request["usage"]["input_tokens"] == 100
    expected = (100 * 1 + 40 * 10 + 600 * 0.1 + 400 * 1.25) / 1e6
    assert request["cost_usd"] == pytest.approx(expected)
    attempts = witness.kind("attempt")
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["deployment"] for a in attempts] == ["primary", "primary", "secondary"]
    assert [a["cost_usd"] for a in attempts[:2]] == [0.0, 0.0] and attempts[2]["cost_usd"] == pytest.approx(expected)
    assert attempts[0]["region"] == "us-east-1" and attempts[2]["usage"]["output_tokens"] == 40
    assert request["started_at"] <= attempts[0]["started_at"] <= attempts[2]["started_at"] <= request["time"]


def test_a_provider_reported_cost_wins(upstream: FakeUpstream) -> None:
    witness = Witness()
    body = {"id": "c1", "object": "chat.completion", "model": "x",
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "cost": 0.042},
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}
    with serving({"chain": [deployment(upstream.base_url, "primary")]}, witness) as server:
        upstream.queue(Raw(body=orjson.dumps(body), content_type="application/json"))
        assert call(server, "openai").status_code == 200
    assert witness.kind("request")[-1]["cost_usd"] == 0.042 and witness.kind("attempt")[-1]["cost_usd"] == 0.042


def test_litellm_response_cost_becomes_the_reported_cost() -> None:
    from clasp_gateway.wire.litellm_adapter import _with_reported_cost

    class Response:
        _hidden_params = {"response_cost": 0.0031}

    data = _with_reported_cost(Response(), {"usage": {"prompt_tokens": 3}})
    assert Usage.from_openai(data["usage"]).cost_usd == 0.0031
    own = _with_reported_cost(Response(), {"usage": {"prompt_tokens": 3, "cost": 0.5}})
    assert own["usage"]["cost"] == 0.5  # the provider's own figure stays

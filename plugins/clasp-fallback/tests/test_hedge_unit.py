"""The hedging policy on its own: the p99 estimate, the hedge budget, the delay."""

from __future__ import annotations

import math
import random

import pytest
from clasp_fallback.hedge import HedgeBudget, Hedger, HedgeSettings, TtfbEstimate

from clasp_gateway import Attempt, Deployment, RequestContext, Timeouts, UpstreamError


def _dep(ident: str = "a", first_byte: float | None = 30.0) -> Deployment:
    return Deployment(id=ident, provider="openai", model="m", api_base="http://x",
                      timeouts=Timeouts(first_byte=first_byte))


def _ctx(stream: bool = True) -> RequestContext:
    return RequestContext(request_id="req_1", api="openai", public_model="m", client_stream=stream)


def test_the_estimate_finds_the_p99_of_log_normal_latencies() -> None:
    rng = random.Random(7)
    est = TtfbEstimate()
    mu, sigma = math.log(0.4), 0.5
    samples = [rng.lognormvariate(mu, sigma) for _ in range(5000)]
    for s in samples:
        est.add(s, 0.01)
    truth = sorted(samples)[int(0.99 * len(samples))]
    got = est.quantile(2.3263)
    assert abs(got - truth) / truth < 0.25, (got, truth)


def test_the_estimate_follows_a_deployment_that_slows_down() -> None:
    est = TtfbEstimate()
    for _ in range(200):
        est.add(0.2, 0.05)
    before = est.quantile(2.33)
    for _ in range(200):
        est.add(2.0, 0.05)
    assert before < 0.3 and 1.5 < est.quantile(2.33) < 3.0


def test_the_first_samples_weigh_as_a_plain_average() -> None:
    est = TtfbEstimate()
    est.add(1.0, 0.05)
    est.add(4.0, 0.05)
    assert math.exp(est.mean) == pytest.approx(2.0)


def test_the_budget_allows_the_ratio_after_the_burst() -> None:
    budget = HedgeBudget(ratio=0.05, burst=2)
    spent = 0
    for _ in range(1000):
        budget.note_request("a")
        if budget.try_spend("a"):
            spent += 1
    assert 50 <= spent <= 52  # 5% of 1000, plus the burst


def test_the_delay_is_the_initial_one_until_enough_samples_then_the_learned_p99_with_a_floor() -> None:
    hedger = Hedger(HedgeSettings(floor=0.1, initial_delay=0.8, min_samples=5))
    dep = _dep()
    assert hedger.delay(_ctx(), dep) == 0.8
    for _ in range(5):
        attempt = Attempt(dep, started=100.0, first_byte=100.3, ended=101.0)
        hedger.observe(_ctx(), attempt, timed_out=False)
    assert hedger.delay(_ctx(), dep) == pytest.approx(0.3)
    assert hedger.delay(_ctx(stream=False), dep) == 0.8  # whole answers are learned apart
    fast = Hedger(HedgeSettings(floor=0.5, initial_delay=0.8, min_samples=1))
    fast.observe(_ctx(), Attempt(dep, started=0.0, first_byte=0.01, ended=0.1), timed_out=False)
    assert fast.delay(_ctx(), dep) == 0.5


def test_no_hedge_when_the_timeout_comes_first_or_hedging_is_off() -> None:
    assert Hedger(HedgeSettings(initial_delay=1.0)).delay(_ctx(), _dep(first_byte=0.5)) is None
    assert Hedger(HedgeSettings(enabled=False)).delay(_ctx(), _dep()) is None
    assert Hedger(HedgeSettings()).delay(_ctx(), _dep(first_byte=None)) == 1.0


def test_hedging_away_from_a_suspect_deployment_is_free_until_it_answers() -> None:
    hedger = Hedger(HedgeSettings(ratio=0.0, burst=1))
    dep = _dep()
    assert hedger.claim(dep) and not hedger.claim(dep)  # the burst, then nothing
    lost = Attempt(dep, started=0.0, ended=1.0,
                   error=UpstreamError("lost", upstream_status=0, deployment="a", kind="timeout"))
    hedger.observe(_ctx(), lost, timed_out=True)
    assert all(hedger.claim(dep) for _ in range(20))
    assert hedger.free_hedges["a"] == 20 and hedger.hedges["a"] == 21
    hedger.observe(_ctx(), Attempt(dep, started=0.0, first_byte=0.2, ended=1.0), timed_out=False)
    assert not hedger.claim(dep)

"""``cheapest-capable``, in process: the learner and the strategy on the router's own
``plan_route`` (no network): start cheap, escalate after failures, a retried turn goes
a tier up, feedback and retries correct a counted success once, floors per class and
team, the budget running low, bounded exploration, fading estimates, and settings
errors reported together."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest
from clasp_router.difficulty import bucket_of
from clasp_router.learn_settings import LearnPolicy, LearnSettings
from clasp_router.learning import TICKET, Learner, watch_chunk
from clasp_router.runtime import LEARN_VIEW_KEY, plan_route
from clasp_router.settings import RouterSettings, parse_settings

from clasp_gateway import (
    Attempt,
    ConfigError,
    Deployment,
    ModelInfo,
    Principal,
    RequestContext,
    StateSettings,
    UpstreamError,
    create_state,
    request_features,
)
from clasp_gateway.testing import config_from


def dep(name: str, price: float, **info: Any) -> Deployment:
    return Deployment(id=name, provider="openai", model=name, api_base="http://127.0.0.1:9",
                      info=ModelInfo(input_cost_per_token=price, output_cost_per_token=4 * price, **info))


POOL = [dep("cheap", 1e-7), dep("mid", 1e-6), dep("dear", 1e-5)]
QUESTION = {"model": "m", "messages": [{"role": "user", "content": "what is 2 + 2?"}]}
CODING = {"model": "m", "messages": [{"role": "user", "content": "fix the bug"}],
          "tools": [{"type": "function", "function": {"name": "edit", "parameters": {"type": "object"}}}]}


LOOPS: list[asyncio.AbstractEventLoop] = []


@pytest.fixture(autouse=True)
def close_loops() -> Iterator[None]:
    yield
    while LOOPS:
        LOOPS.pop().close()


class Rig:
    """A learner and the router's planning, driven the way the plugin's hooks drive them."""

    def __init__(self, policy: LearnPolicy | None = None, deployments: list[Deployment] = POOL, **learn: Any) -> None:
        self.clock = [1000.0]
        self.settings = LearnSettings(policy=policy or LearnPolicy(explore=0.0), **learn)
        self.router = RouterSettings(strategy="cheapest-capable", learn=self.settings)
        self.deployments = deployments
        self.learner = Learner(self.settings, deployments, create_state(StateSettings(), clock=lambda: self.clock[0]),
                               lambda: self.clock[0], rng=random.Random(5))
        self.count = 0
        self.loop = asyncio.new_event_loop()  # one loop, as in a gateway: background syncs run between calls
        LOOPS.append(self.loop)

    def run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(awaitable)

    def ctx(self, body: dict[str, Any], team: str | None = "qa", request_class: str | None = None) -> RequestContext:
        self.count += 1
        ctx = RequestContext(f"req-{self.count}", "openai", "m", False,
                             principal=Principal(key_id="k1", name="k1", team=team))
        ctx.request_class = request_class or ("coding" if body.get("tools") else "question")
        return ctx

    def route(self, ctx: RequestContext, body: dict[str, Any], budget_left: float | None = None,
              ttfb: dict[str, float] | None = None, headers: dict[str, str] | None = None) -> tuple[list[str], Any]:
        ctx.headers = headers or {}
        ctx.state[LEARN_VIEW_KEY] = self.run(self.learner.prepare(ctx, body, budget_left))
        result = plan_route(ctx, body, self.deployments, self.router, (ttfb or {}).get, lambda _: True,
                            self.deployments)
        assert not isinstance(result, Exception), result
        ordered, plan = result
        return [d.id for d in ordered], plan

    def answer(self, ctx: RequestContext, deployment: str, *, status: int = 200, finish: str = "stop",
               tool_args: str | None = None) -> None:
        delta: dict[str, Any] = {"content": "ok"}
        if tool_args is not None:
            delta = {"tool_calls": [{"index": 0, "function": {"name": "edit", "arguments": tool_args}}]}
        watch_chunk(ctx, {"choices": [{"delta": delta, "finish_reason": finish}]})
        self.run(self.learner.finished(ctx, {"kind": "request", "deployment": deployment, "status": status}))

    def fail_attempt(self, ctx: RequestContext, deployment: str, status: int = 500) -> None:
        attempt = Attempt(next(d for d in self.deployments if d.id == deployment))
        attempt.error = UpstreamError("boom", upstream_status=status)
        self.learner.attempt_ended(ctx, attempt)

    def counts(self, deployment: str, body: dict[str, Any], request_class: str = "question") -> tuple[float, float]:
        bucket = bucket_of(request_features(body))
        s, f = self.learner.estimates.counts(f"{deployment}|{request_class}|{bucket}")
        return round(s, 3), round(f, 3)


def question(n: int) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": f"question number {n}"}]}


def test_it_starts_cheap_and_escalates_after_failures() -> None:
    rig = Rig(LearnPolicy(explore=0.0, success_target=0.7))
    order, plan = rig.route(rig.ctx(question(1)), question(1))
    assert order == ["cheap", "mid", "dear"]  # optimistic prior: the cheapest first, stronger tiers next
    assert plan.strategy == "cheapest-capable" and "question/0" in plan.note
    for n in range(2, 4):  # the cheap model fails (visible errors, fallen back from)
        ctx = rig.ctx(question(n))
        rig.route(ctx, question(n))
        rig.fail_attempt(ctx, "cheap")
        rig.answer(ctx, "mid")
    order, _ = rig.route(rig.ctx(question(9)), question(9))
    assert order[0] == "mid" and rig.counts("cheap", QUESTION) == (0.0, 2.0)
    assert rig.counts("mid", QUESTION) == (2.0, 0.0)


def test_busy_upstreams_are_not_failures_of_ability() -> None:
    rig = Rig()
    ctx = rig.ctx(QUESTION)
    rig.route(ctx, QUESTION)
    rig.fail_attempt(ctx, "cheap", status=429)
    rig.fail_attempt(ctx, "mid", status=529)
    assert rig.counts("cheap", QUESTION) == (0.0, 0.0) and rig.counts("mid", QUESTION) == (0.0, 0.0)


def test_a_retried_turn_goes_one_tier_up_and_corrects_the_earlier_answer() -> None:
    rig = Rig()
    first = rig.ctx(QUESTION)
    assert rig.route(first, QUESTION)[0][0] == "cheap"
    rig.answer(first, "cheap")
    assert rig.counts("cheap", QUESTION) == (1.0, 0.0)
    again = rig.ctx(QUESTION)  # the same turn, sent again: the answer did not do
    order, plan = rig.route(again, QUESTION)
    assert order[0] == "mid" and "retry above tier 0" in plan.note
    rig.answer(again, "mid")
    assert rig.counts("cheap", QUESTION) == (0.0, 1.0)  # the counted success became a failure
    third = rig.ctx(QUESTION)
    assert rig.route(third, QUESTION)[0][0] == "dear"
    other_key = rig.ctx(QUESTION)
    other_key.principal = Principal(key_id="k2", name="k2", team="qa")
    assert rig.route(other_key, QUESTION)[0][0] != "dear"  # another key's same text is not a retry


def test_a_negative_feedback_turns_a_success_into_a_failure_once() -> None:
    rig = Rig(feedback_fail_below=0.0)
    ctx = rig.ctx(QUESTION)
    rig.route(ctx, QUESTION)
    rig.answer(ctx, "cheap")
    rig.run(rig.learner.feedback({"kind": "feedback", "request_id": ctx.request_id, "score": 1}))
    assert rig.counts("cheap", QUESTION) == (1.0, 0.0)
    rig.run(rig.learner.feedback({"kind": "feedback", "request_id": ctx.request_id, "score": -1}))
    assert rig.counts("cheap", QUESTION) == (0.0, 1.0)
    rig.run(rig.learner.feedback({"kind": "feedback", "request_id": ctx.request_id,
                                      "metrics": {"tests_passed": False}}))
    assert rig.counts("cheap", QUESTION) == (0.0, 1.0)  # once
    other = rig.ctx(question(2))
    rig.route(other, question(2))
    rig.answer(other, "cheap")
    rig.run(rig.learner.feedback({"kind": "feedback", "request_id": other.request_id,
                                      "metrics": {"tests_passed": False, "pr_merged": True}}))
    assert rig.counts("cheap", QUESTION) == (0.0, 2.0)
    rig.run(rig.learner.feedback({"kind": "feedback", "request_id": "unknown", "score": -5}))


def test_truncation_and_invalid_tool_json_are_failures() -> None:
    rig = Rig()
    ctx = rig.ctx(CODING)
    rig.route(ctx, CODING)
    rig.answer(ctx, "cheap", finish="tool_calls", tool_args='{"path": ')
    assert rig.counts("cheap", CODING, "coding") == (0.0, 1.0)
    ctx = rig.ctx(question(3))
    rig.route(ctx, question(3))
    rig.answer(ctx, "cheap", finish="length")
    assert rig.counts("cheap", QUESTION) == (0.0, 1.0)
    ctx = rig.ctx(question(4), request_class="background")  # a short background answer is meant to stop
    rig.route(ctx, question(4))
    rig.answer(ctx, "cheap", finish="length")
    assert rig.counts("cheap", question(4), "background") == (1.0, 0.0)
    ctx = rig.ctx(CODING)
    rig.route(ctx, {**CODING, "messages": [{"role": "user", "content": "again, other words"}]})
    rig.answer(ctx, "mid", finish="tool_calls", tool_args='{"path": "a.py"}')
    assert rig.counts("mid", CODING, "coding") == (1.0, 0.0)


def test_a_class_never_goes_below_its_minimum_tier_and_teams_differ() -> None:
    rig = Rig(LearnPolicy(explore=0.0, min_tier={"coding": 1}),
              teams={"research": LearnPolicy(explore=0.0, min_tier={"coding": 2, "question": 1})})
    order, plan = rig.route(rig.ctx(CODING), CODING)
    assert order == ["mid", "dear"] and plan.removed == {"cheap": "min-tier"}
    assert rig.route(rig.ctx(QUESTION), QUESTION)[0] == ["cheap", "mid", "dear"]
    order, plan = rig.route(rig.ctx(CODING, team="research"), CODING)
    assert order == ["dear"]
    assert rig.route(rig.ctx(question(5), team="research"), question(5))[0][0] == "mid"


def test_tiers_come_from_prices_unless_configured() -> None:
    assert Rig().learner.tiers == {"cheap": 0, "mid": 1, "dear": 2}
    twins = [dep("a", 1e-7), dep("b", 1e-7), dep("c", 1e-6)]
    assert Rig(deployments=twins).learner.tiers == {"a": 0, "b": 0, "c": 1}
    assert Rig(tiers={"cheap": 2}).learner.tiers["cheap"] == 2


def test_a_budget_running_low_moves_traffic_to_cheaper_models() -> None:
    rig = Rig(LearnPolicy(explore=0.0, success_target=0.7, budget_low=0.2, budget_target=0.3))
    for n in range(3):  # cheap succeeds 1 time in 3 on these: normally not good enough
        ctx = rig.ctx(question(10 + n))
        rig.route(ctx, question(10 + n))
        if n == 0:
            rig.answer(ctx, "cheap")
        else:
            rig.fail_attempt(ctx, "cheap")
            rig.answer(ctx, "mid")
    assert rig.route(rig.ctx(question(20)), question(20))[0][0] == "mid"
    assert rig.route(rig.ctx(question(21)), question(21), budget_left=0.5)[0][0] == "mid"
    order, plan = rig.route(rig.ctx(question(22)), question(22), budget_left=0.1)
    assert order[0] == "cheap" and "budget low (10% left)" in plan.note


def test_exploration_is_bounded() -> None:
    for share in (0.0, 0.1):
        rig = Rig(LearnPolicy(explore=share))
        explored = 0
        for n in range(600):
            ctx = rig.ctx(question(n))
            rig.route(ctx, question(n))
            explored += ctx.state[LEARN_VIEW_KEY].explored
            ctx.state.pop(TICKET)
        assert explored / 600 == pytest.approx(share, abs=0.04)
    rig = Rig(LearnPolicy(explore=1.0))
    ctx = rig.ctx(QUESTION)
    rig.route(ctx, QUESTION, budget_left=0.05)
    assert not ctx.state[LEARN_VIEW_KEY].explored  # no exploring on a budget running out


def test_old_outcomes_fade_back_to_the_prior() -> None:
    rig = Rig(LearnPolicy(explore=0.0, success_target=0.7), half_life=60.0)
    for n in range(4):
        ctx = rig.ctx(question(n))
        rig.route(ctx, question(n))
        rig.fail_attempt(ctx, "cheap")
        rig.answer(ctx, "mid")
    assert rig.route(rig.ctx(question(30)), question(30))[0][0] == "mid"
    rig.clock[0] += 600  # ten half-lives: the failures say little about today
    assert rig.learner.estimates.counts("cheap|question|0")[1] < 0.01
    assert rig.route(rig.ctx(question(31)), question(31))[0][0] == "cheap"


def test_a_latency_target_keeps_slow_models_out_of_the_choice() -> None:
    rig = Rig()
    order, plan = rig.route(rig.ctx(QUESTION), QUESTION, ttfb={"cheap": 5000.0, "mid": 300.0},
                            headers={"x-clasp-latency-target-ms": "1000"})
    assert order[0] == "mid" and "latency target" in plan.note


def test_a_cost_ceiling_still_applies() -> None:
    rig = Rig(LearnPolicy(explore=0.0, min_tier={"question": 2}))
    ctx = rig.ctx(QUESTION)
    ctx.headers = {"x-clasp-max-cost-usd": "0.001"}
    ctx.state[LEARN_VIEW_KEY] = rig.run(rig.learner.prepare(ctx, QUESTION))
    result = plan_route(ctx, QUESTION, POOL, rig.router, lambda _: None, lambda _: True, POOL)
    assert not isinstance(result, Exception)
    assert [d.id for d in result[0]] == ["cheap"]  # dearer ones are over the ceiling: the floor yields


def test_difficulty_buckets_grow_with_size_tools_and_history() -> None:
    small = request_features(QUESTION)
    long_loop = request_features({"messages": [{"role": "user", "content": "x" * 80_000}] * 45,
                                  "tools": [{"type": "function", "function": {"name": f"t{i}"}} for i in range(25)],
                                  "reasoning_effort": "high"})
    assert bucket_of(small) == 0 and bucket_of(long_loop) == 3


def test_learn_settings_report_every_mistake_at_once() -> None:
    models = {"m": [{"id": "a", "model": "openai/gpt-4o", "api_key": "sk-x-123456789012345"}]}
    config = config_from({"models": models, "router": {"learn": {
        "success_target": 2, "explore": -1, "min_tier": {"coding": "high"}, "tiers": {"ghost": 1},
        "teams": {"red": {"explore": 0.5, "colour": "red"}}, "half_life": "soon", "surprise": True}}})
    with pytest.raises(ConfigError) as caught:
        parse_settings(config)
    text = "\n".join(caught.value.problems)
    for fragment in ("router.learn.success_target", "router.learn.explore", "router.learn.min_tier.coding",
                     "router.learn.tiers.ghost: not a deployment id", "router.learn.teams.red.colour",
                     "router.learn.half_life", "router.learn.surprise"):
        assert fragment in text, text
    good = config_from({"models": models, "router": {"learn": {
        "success_target": 0.7, "half_life": "2h", "tiers": {"a": 3},
        "teams": {"red": {"explore": 0, "min_tier": {"coding": 1}}}}}})
    learn = parse_settings(good).learn
    assert learn.half_life == 7200 and learn.tiers == {"a": 3}
    assert learn.policy_for("red").explore == 0 and learn.policy_for("red").success_target == 0.7
    assert learn.policy_for("red").min_tier == {"coding": 1} and learn.policy_for("blue") is learn.policy


def test_repeated_probes_are_not_retries_and_cached_answers_teach_nothing() -> None:
    rig = Rig()
    probe = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "quota"}]}
    for _ in range(3):  # Claude Code sends the same probe at every start
        ctx = rig.ctx(probe, request_class="background")
        order, plan = rig.route(ctx, probe)
        assert order[0] == "cheap" and "retry" not in plan.note
        rig.answer(ctx, "cheap")
    assert rig.counts("cheap", probe, "background") == (3.0, 0.0)
    ctx = rig.ctx(question(40))
    rig.route(ctx, question(40))
    rig.run(rig.learner.finished(ctx, {"kind": "request", "deployment": "cheap", "status": 200, "cache_hit": "exact"}))
    assert rig.counts("cheap", question(40)) == (0.0, 0.0)


def test_with_team_scope_one_teams_outcomes_do_not_move_another() -> None:
    rig = Rig(LearnPolicy(explore=0.0, success_target=0.7), scope="team")
    for n in range(2):
        ctx = rig.ctx(question(50 + n), team="red")
        rig.route(ctx, question(50 + n))
        rig.fail_attempt(ctx, "cheap")
        rig.answer(ctx, "mid")
    assert rig.route(rig.ctx(question(60), team="red"), question(60))[0][0] == "mid"
    assert rig.route(rig.ctx(question(61), team="blue"), question(61))[0][0] == "cheap"
    assert rig.learner.estimates.counts("red@cheap|question|0") == (0.0, 2.0)
    shared = Rig(LearnPolicy(explore=0.0, success_target=0.7))
    for n in range(2):
        ctx = shared.ctx(question(50 + n), team="red")
        shared.route(ctx, question(50 + n))
        shared.fail_attempt(ctx, "cheap")
        shared.answer(ctx, "mid")
    assert shared.route(shared.ctx(question(61), team="blue"), question(61))[0][0] == "mid"


def test_a_teams_latency_target_and_cost_ceiling_are_only_ever_lowered() -> None:
    from clasp_router.settings import cost_ceiling, latency_target

    models = {"m": [{"id": "a", "model": "openai/gpt-4o", "api_key": "sk-x-123456789012345"}]}
    settings = parse_settings(config_from({"models": models, "router": {
        "max_request_cost_usd": 1.0, "teams": {"interns": {"max_request_cost_usd": 0.05, "latency_target_ms": 4000}}}}))
    assert cost_ceiling(settings, {}, None, "interns") == 0.05
    assert cost_ceiling(settings, {}, None, "staff") == 1.0
    assert cost_ceiling(settings, {"x-clasp-max-cost-usd": "0.5"}, None, "interns") == 0.05  # a header cannot raise it
    assert cost_ceiling(settings, {"x-clasp-max-cost-usd": "0.01"}, {"max_request_cost_usd": 0.02}, "interns") == 0.01
    assert latency_target(settings, {"x-clasp-latency-target-ms": "9000"}, None, "interns") == 4000
    with pytest.raises(ConfigError) as caught:
        parse_settings(config_from({"models": models, "router": {"teams": {"x": {"max_request_cost_usd": -1,
                                                                                  "colour": 1}}}}))
    assert any("router.teams.x.max_request_cost_usd" in p for p in caught.value.problems)
    assert any("router.teams.x.colour" in p for p in caught.value.problems)

"""Two replicas' learners share estimates, retried turns and feedback through the
gateway's state: a real Redis and a real SQLite file (the merge is one atomic script,
Lua on Redis and Python on SQLite)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from clasp_router.estimates import STATE_KEY
from clasp_router.learn_settings import LearnPolicy, LearnSettings
from clasp_router.learning import Learner

from clasp_gateway import (
    Deployment,
    ModelInfo,
    Principal,
    RequestContext,
    StateBackend,
    create_state,
    parse_state_settings,
)
from clasp_gateway.testing import RedisServer, config_from, redis_server

POOL = [Deployment(id=n, provider="openai", model=n, api_base="http://127.0.0.1:9",
                   info=ModelInfo(input_cost_per_token=p, output_cost_per_token=p)) for n, p in
        (("cheap", 1e-7), ("mid", 1e-6), ("dear", 1e-5))]
BODY = {"model": "m", "messages": [{"role": "user", "content": "the same turn"}]}
MODELS = {"m": [{"id": "a", "model": "openai/gpt-4o", "api_key": "sk-x-123456789012345"}]}


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(params=["redis", "sqlite"])
def state_section(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    if request.param == "sqlite":
        yield {"backend": "sqlite", "url": "sqlite:///" + str(tmp_path / "state.db")}
        return
    server: RedisServer = request.getfixturevalue("redis")
    with server.namespace() as ns:
        yield {"backend": "redis", "url": ns.url, "prefix": ns.prefix}


async def opened(section: dict[str, Any]) -> StateBackend:
    state = create_state(parse_state_settings(config_from({"models": MODELS, "state": section})))
    await state.open()
    return state


def learner(state: StateBackend) -> Learner:
    settings = LearnSettings(policy=LearnPolicy(explore=0.0), half_life=3600.0)
    return Learner(settings, POOL, state, lambda: 1000.0, rng=random.Random(1))


def context(request_id: str) -> RequestContext:
    ctx = RequestContext(request_id, "openai", "m", False, principal=Principal(key_id="k", name="k", team="t"))
    ctx.request_class = "question"
    return ctx


@pytest.fixture
async def replicas(state_section: dict[str, Any]) -> AsyncIterator[tuple[Learner, Learner]]:
    a, b = await opened(state_section), await opened(state_section)
    await a.delete(STATE_KEY)
    yield learner(a), learner(b)
    await a.close()
    await b.close()


async def test_estimates_merge_across_replicas(replicas: tuple[Learner, Learner]) -> None:
    a, b = replicas
    a.estimates.observe("cheap", "question", 0, 0.0, 3.0)
    b.estimates.observe("cheap", "question", 0, 1.0, 0.0)
    assert await a.estimates.sync(a.state) and await b.estimates.sync(b.state)
    assert b.estimates.counts("cheap|question|0") == pytest.approx((1.0, 3.0), abs=1e-3)
    assert await a.estimates.sync(a.state)  # nothing queued: it only reads the merged whole
    assert a.estimates.counts("cheap|question|0") == pytest.approx((1.0, 3.0), abs=1e-3)
    assert a.estimates.counts("cheap|question|*") == pytest.approx((1.0, 3.0), abs=1e-3)
    a.estimates.observe("cheap", "question", 0, -1.0, 1.0)  # a correction is a delta too
    assert await a.estimates.sync(a.state) and await b.estimates.sync(b.state)
    assert b.estimates.counts("cheap|question|0") == pytest.approx((0.0, 4.0), abs=1e-3)


async def test_a_retry_and_a_feedback_reach_the_replica_that_served_the_turn(
    replicas: tuple[Learner, Learner]
) -> None:
    a, b = replicas
    first = context("req-a-1")
    view = await a.prepare(first, BODY)
    assert view.retry_tier is None
    await a.finished(first, {"kind": "request", "deployment": "cheap", "status": 200})
    again = context("req-b-1")  # the client retries; another replica answers
    view = await b.prepare(again, BODY)
    assert view.retry_tier == 0
    await b.finished(again, {"kind": "request", "deployment": "mid", "status": 200})
    assert b.estimates.counts("cheap|question|0") == pytest.approx((-0.0, 1.0), abs=1e-3)
    await b.feedback({"kind": "feedback", "request_id": "req-a-1", "score": -1})
    # replica A's success of req-a-1 was already corrected by the retry: not twice
    assert b.estimates.counts("cheap|question|0") == pytest.approx((0.0, 1.0), abs=1e-3)
    await a.feedback({"kind": "feedback", "request_id": "req-b-1", "score": -2})  # B's answer, A hears it
    assert a.estimates.counts("mid|question|0") == pytest.approx((0.0, 1.0), abs=1e-3)


async def test_a_state_outage_keeps_the_deltas(replicas: tuple[Learner, Learner]) -> None:
    a, _ = replicas
    a.estimates.observe("mid", "question", 1, 2.0, 0.0)
    await a.state.close()  # the state goes away under it
    assert not await a.estimates.sync(a.state)
    assert a.estimates.pending["mid|question|1"][:2] == pytest.approx([2.0, 0.0])  # kept for the next sync
    assert a.estimates.counts("mid|question|1") == pytest.approx((2.0, 0.0))  # and still used here

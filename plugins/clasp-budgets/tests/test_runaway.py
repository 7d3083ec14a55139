"""Runaway agents with a fake clock: a steady agent is never flagged, a loop that goes
20x is flagged within a minute (one alert per episode, even from two replicas sharing
the state), a pause refuses the agent until it lifts or an admin lifts it."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from clasp_budgets.limits.runaway import Detector  # noqa: E402
from clasp_budgets.limits.runtime import LimitsRuntime  # noqa: E402
from clasp_budgets.limits.settings import LimitsSettings, RunawaySettings  # noqa: E402
from clasp_budgets.limits.shape import LimitExceeded  # noqa: E402

from clasp_gateway import Principal, RequestContext, StateSettings, create_state  # noqa: E402
from clasp_gateway.testing import GATEWAY_KEY, FakeClock, FakeUpstream, GatewayServer, config_from, openai_models  # noqa: E402

START = 1_800_000_000.0  # on a minute boundary


def runtime(clock: FakeClock, state: Any = None, **runaway: Any) -> LimitsRuntime:
    state = state or create_state(StateSettings(backend="memory"), clock=clock)
    return LimitsRuntime(state, LimitsSettings(runaway=RunawaySettings(**runaway)), clock=clock)


def ctx(key: str = "k1", user: str | None = None) -> RequestContext:
    context = RequestContext(request_id="r", api="anthropic", public_model="m", client_stream=False,
                             principal=Principal(key_id=key, name=key))
    context.user = user
    return context


async def drive(rt: LimitsRuntime, clock: FakeClock, per_minute: float, minutes: float, **kw: Any) -> int:
    """``per_minute`` requests, evenly spaced, for ``minutes``; returns the refused ones."""
    refused = 0
    gap = 60.0 / per_minute
    for _ in range(round(per_minute * minutes)):
        try:
            await rt.before_call(ctx(**kw), {"messages": []})
        except LimitExceeded:
            refused += 1
        clock.advance(gap)
    return refused


async def test_a_steady_agent_is_never_flagged() -> None:
    clock = FakeClock(START)
    rt = runtime(clock, multiplier=5, floor_rpm=30)
    await drive(rt, clock, 20, 60)  # an hour at 20 rpm
    await drive(rt, clock, 28, 10)  # a busier stretch, still under the floor
    assert rt.alerts == []


async def test_a_20x_loop_is_flagged_within_a_minute_and_paused_until_it_lifts() -> None:
    clock = FakeClock(START + 17)  # mid-minute: the sliding estimate must still catch it
    rt = runtime(clock, multiplier=5, floor_rpm=30, pause=True, pause_for=300)
    await drive(rt, clock, 10, 30)
    assert rt.alerts == []
    began = clock()
    refused = await drive(rt, clock, 200, 1)  # the loop: 20x its usual rate
    assert len(rt.alerts) == 1
    alert = rt.alerts[0]
    assert alert["subject"] == "key 'k1'" and alert["series"] == "requests"
    assert alert["time"] - began < 60
    assert refused > 0  # the pause began within that minute
    with pytest.raises(LimitExceeded) as caught:
        await rt.before_call(ctx(), {"messages": []})
    assert caught.value.status == 429 and "paused until" in caught.value.message
    assert "runaway" in caught.value.message and "/admin/limits/unpause" in caught.value.message
    assert 1 <= int(caught.value.headers["retry-after"]) <= 300
    await rt.before_call(ctx("k2"), {"messages": []})  # another key is not affected
    clock.advance(301)
    await rt.before_call(ctx(), {"messages": []})  # the pause lifted


async def test_spend_runaway_and_alert_once_per_episode() -> None:
    clock = FakeClock(START)
    rt = runtime(clock, multiplier=5, floor_usd_per_minute=0.5, floor_rpm=10_000)
    event = {"kind": "request", "usage": {}, "cost_usd": 0.01}
    for _ in range(30):  # $0.05/min for 30 minutes
        for _ in range(5):
            await rt.record(ctx(), event)
        clock.advance(60)
    assert rt.alerts == []
    for _ in range(20):  # $2/min: 40x the usual spend
        await rt.record(ctx(), {**event, "cost_usd": 0.1})
        clock.advance(3)
    assert [a["series"] for a in rt.alerts] == ["spend"]  # once per episode, not per request


async def test_per_user_behind_a_shared_key_and_two_replicas_alert_once() -> None:
    clock = FakeClock(START)
    shared = create_state(StateSettings(backend="memory"), clock=clock)
    one, two = runtime(clock, shared, multiplier=5, floor_rpm=20), runtime(clock, shared, multiplier=5, floor_rpm=20)
    for _minute in range(10):  # alice steady at 4 rpm, through both replicas
        for i in range(4):
            await (one if i % 2 else two).before_call(ctx("team-key", "alice"), {"messages": []})
            clock.advance(15)
    for i in range(60):  # bob's loop behind the same key, through both replicas
        await (one if i % 2 else two).before_call(ctx("team-key", "bob"), {"messages": []})
        clock.advance(0.5)
    subjects = [a["subject"] for a in one.alerts + two.alerts]
    assert subjects.count("user 'bob'") == 1 and "user 'alice'" not in subjects


async def test_flagged_within_an_episode_costs_no_extra_operation_and_unpause_ends_it() -> None:
    """While a subject's episode lasts, each request is still one state operation (the
    admission script says the flag exists: no lease attempt per request); an admin's
    unpause on another replica ends the episode, so the loop alerts again."""
    clock = FakeClock(START)
    shared = create_state(StateSettings(backend="memory"), clock=clock)
    one, two = runtime(clock, shared, multiplier=5, floor_rpm=20), runtime(clock, shared, multiplier=5, floor_rpm=20)
    operations: list[str] = []
    for name in ("run", "get", "set", "delete"):
        original = getattr(shared, name)

        def counted(*args: Any, _original: Any = original, _name: str = name, **kw: Any) -> Any:
            operations.append(_name)
            return _original(*args, **kw)

        setattr(shared, name, counted)
    for _ in range(30):  # a loop from the first minute: above the floor of 20/min
        await one.before_call(ctx("k1"), {"messages": []})
        clock.advance(0.5)
    assert [a["subject"] for a in one.alerts] == ["key 'k1'"]
    operations.clear()
    for _ in range(10):
        await one.before_call(ctx("k1"), {"messages": []})
        clock.advance(0.5)
    assert operations == ["run"] * 10 and len(one.alerts) == 1
    assert await two.unpause("key:k1")  # no pause (pause: false), but the flag: the episode ends
    await one.before_call(ctx("k1"), {"messages": []})
    assert len(one.alerts) == 2


def test_detector_forgets_quiet_minutes() -> None:
    clock = FakeClock(START)
    detector = Detector(RunawaySettings(multiplier=3, floor_rpm=5, alpha=0.5), clock)
    for minute in range(10):
        detector.observe("s", "requests", minute, 0.99, 100)  # a new agent: flagged at first, then usual
    assert detector.observe("s", "requests", 10, 0.99, 100) is None  # busy: 100/min is its usual
    # An hour of silence: the usual decays, so 100/min again is far above it.
    assert detector.observe("s", "requests", 70, 0.5, 100) is not None


@pytest.fixture
def paused_gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[GatewayServer, str]]:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "budgets_limits")
    admin = "clasp-admin-key-0123456789abcdef"
    with FakeUpstream("openai") as up:
        config = config_from({
            "models": openai_models(up.base_url),
            "keys": [{"key": GATEWAY_KEY, "name": "agent"}, {"key": admin, "name": "ops", "role": "admin"}],
            "limits": {"runaway": {"pause": True, "floor_rpm": 3, "multiplier": 5}},
        })
        with GatewayServer(config) as server:
            yield server, admin


def test_pause_over_http_and_admin_unpause(paused_gateway: tuple[GatewayServer, str]) -> None:
    server, admin = paused_gateway
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    agent = {"authorization": f"Bearer {GATEWAY_KEY}"}
    statuses = [httpx.post(server.base_url + "/v1/chat/completions", json=body, headers=agent).status_code
                for _ in range(6)]
    assert statuses[:3] == [200, 200, 200] and statuses[-1] == 429
    refused = httpx.post(server.base_url + "/v1/chat/completions", json=body, headers=agent)
    assert "paused until" in refused.json()["error"]["message"]
    alerts = httpx.get(server.base_url + "/admin/limits/alerts", headers={"x-api-key": admin}).json()["alerts"]
    assert alerts[0]["subject"] == "key 'agent'"
    unpause = server.base_url + "/admin/limits/unpause"
    assert httpx.post(unpause, json={"user": "x"}, headers=agent).status_code == 403  # not an admin key
    bad = httpx.post(unpause, json={}, headers={"x-api-key": admin})
    assert bad.status_code == 400 and bad.json()["type"] == "error"
    lifted = httpx.post(unpause, json={"key_id": _key_id(GATEWAY_KEY)}, headers={"x-api-key": admin})
    assert lifted.status_code == 200 and lifted.json()["unpaused"] is True
    assert httpx.post(server.base_url + "/v1/chat/completions", json=body, headers=agent).status_code == 200


def _key_id(secret: str) -> str:
    """A static key's id (the core's: the first 12 hex digits of its SHA-256)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


async def test_counters_expire_with_their_minute() -> None:
    clock = FakeClock(START)
    rt = runtime(clock)
    await rt.before_call(ctx("k1", "u1"), {"messages": []})
    minute = int(START // 60)
    state = rt.store.shared
    assert await state.get(f"limits:rw:key:k1:requests:{minute}") == b"1"
    assert await state.get(f"limits:rw:user:u1:requests:{minute}") == b"1"
    clock.advance(181)  # COUNT_TTL
    assert await state.get(f"limits:rw:key:k1:requests:{minute}") is None

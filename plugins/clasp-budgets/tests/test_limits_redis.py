"""Limits across replicas on a real Redis (two ``clasp serve`` processes), and through a
Redis outage: per-process limits (limit / expected replicas) while it is down, logged
once, shared enforcement again once it is back."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from clasp_gateway.testing import (  # noqa: E402
    GATEWAY_KEY,
    FakeUpstream,
    GatewayProcesses,
    GatewayServer,
    RedisServer,
    config_from,
    openai_models,
    redis_server,
)

BODY = {"model": "gpt-4o", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}


@pytest.fixture(scope="module")
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as upstream:
        yield upstream


def test_two_processes_share_one_limit_through_redis(up: FakeUpstream) -> None:
    up.reset()
    with redis_server() as redis, redis.namespace() as ns:
        config = {
            "keys": [{"key": GATEWAY_KEY, "name": "shared", "rpm": 3, "max_concurrency": 5}],
            "models": openai_models(up.base_url),
            "state": {"backend": "redis", "url": ns.url, "prefix": ns.prefix},
            "limits": {"expected_replicas": 2},
        }
        processes = GatewayProcesses(config, count=2, env={"CLASP_LOAD_PLUGINS": "budgets_limits"}).start()
        try:
            urls = [p.base_url for p in processes]
            statuses = [httpx.post(urls[i % 2] + "/v1/chat/completions", json=BODY, headers=AUTH, timeout=10)
                        for i in range(6)]
            assert [r.status_code for r in statuses] == [200, 200, 200, 429, 429, 429]
            assert {r.headers["x-ratelimit-limit-requests"] for r in statuses} == {"3"}
            assert len(up.requests) == 3
            keys = ns.keys()
            assert any(k.endswith(":rpm") and ":limits:key:" in k for k in keys)
            assert not any(k.endswith(":concurrency") for k in keys)  # every slot released
        finally:
            processes.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with redis_server(own=True) as server:
        yield server


def test_redis_down_then_back(up: FakeUpstream, own_redis: RedisServer, caplog: pytest.LogCaptureFixture,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "budgets_limits")
    up.reset()
    caplog.set_level(logging.WARNING, logger="clasp.limits")
    with own_redis.namespace() as ns:
        config = config_from({
            "keys": [{"key": GATEWAY_KEY, "name": "k", "rpm": 4}],
            "models": openai_models(up.base_url),
            "state": {"backend": "redis", "url": ns.url, "prefix": ns.prefix, "timeout": 0.5},
            "limits": {"expected_replicas": 2},
        })
        with GatewayServer(config) as gateway:
            url = gateway.base_url + "/v1/chat/completions"

            def post() -> int:
                return httpx.post(url, json=BODY, headers=AUTH, timeout=10).status_code

            assert post() == 200  # shared: 1 of 4 counted in Redis
            own_redis.stop()
            # Down: this process allows 4 / 2 expected replicas = 2 a minute on its own.
            assert [post() for _ in range(4)] == [200, 200, 429, 429]
            down = [r for r in caplog.records if r.name == "clasp.limits" and "unavailable" in r.getMessage()]
            assert len(down) == 1 and "per-process limits" in down[0].getMessage()
            own_redis.restart()
            deadline = time.monotonic() + 10
            status = post()
            while status == 429 and time.monotonic() < deadline:
                # The core leaves a failed store alone for a moment; then shared counting resumes
                # (3 of 4 in Redis: the one before the outage, this one, and one more).
                time.sleep(0.3)
                status = post()
            assert status == 200
            assert [r for r in caplog.records if r.name == "clasp.limits" and "is back" in r.getMessage()]
            assert any(k.endswith(":rpm") for k in ns.keys())
            assert len([r for r in caplog.records if r.name == "clasp.limits" and "unavailable" in r.getMessage()]) == 1


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
async def test_admit_and_settle_script_twins_agree(backend: str, tmp_path: Any) -> None:
    """The two scripts of a request (Lua on Redis, Python elsewhere): admission all or
    nothing, runaway pauses and counters, settlement; their data stays readable by the
    core's hit/add_within/incr (corrections, releases, counters)."""
    from clasp_budgets.limits.admit import ADMIT, SETTLE, Tally

    from clasp_gateway import Secret, StateSettings, create_state

    def layout(pauses: int, counters: int, windows: int, now: float = 0.0) -> list[Any]:
        return [pauses, counters, windows, now, 1, 60_000]

    with redis_server() as redis, redis.namespace() as ns:
        if backend == "redis":
            settings = StateSettings(backend="redis", url=Secret(ns.url, ns.url), prefix=ns.prefix)
        elif backend == "sqlite":
            settings = StateSettings(backend="sqlite", path=str(tmp_path / "state.db"))
        else:
            settings = StateSettings(backend="memory")
        state = create_state(settings)
        await state.open()
        try:
            keys = ["limits:t:rpm", "limits:t:tpm", "limits:t:concurrency"]
            args = [*layout(0, 0, 2), 2, 60, 1, 100, 60, 40, 3, 60_000]  # rpm 2, tpm 100 (cost 40), 3 slots
            first = await state.run(ADMIT, keys, args)
            assert first.ok and first.failed == -1 and first.counts == (1.0, 40.0) and first.paused is None
            second = await state.run(ADMIT, keys, args)
            assert second.ok and second.counts[1] == 80.0
            third = await state.run(ADMIT, keys, args)  # rpm full (and tpm too): nothing counted
            assert not third.ok and third.failed == 0 and 0 < third.retry_after <= 120
            assert (await state.add_within("limits:t:concurrency", 0, None)).total == 2.0
            # A correction and a release through the core's own operations on the same keys.
            assert (await state.hit("limits:t:tpm", 1e18, 60, cost=-70)).count == pytest.approx(10.0, abs=1)
            assert (await state.add_within("limits:t:concurrency", -1, None)).total == 1.0
            slots = ["limits:u:concurrency"]
            assert (await state.run(ADMIT, slots, [*layout(0, 0, 0), 1, 60_000])).ok
            refused = await state.run(ADMIT, slots, [*layout(0, 0, 0), 1, 60_000])
            assert not refused.ok and refused.failed == 0 and refused.counts == ()

            # Settlement: a slot released, a token window corrected (+25), nothing else touched.
            tally = await state.run(SETTLE, ["limits:t:concurrency", "limits:t:tpm"], [1, 1, 0, 60_000, 0, 0, 60, 25])
            assert tally == Tally((), ())
            assert (await state.add_within("limits:t:concurrency", 0, None)).total == 0.0
            assert (await state.hit("limits:t:tpm", 1e18, 60, cost=0)).count == pytest.approx(35.0, abs=1)

            # Runaway counters (the core's incr) and episode flags, at admission and settlement.
            await state.incr("rw:k:requests", 5)
            await state.set("rw:flag:u", "flagged")
            counted = ["rw:k:requests", "rw:u:requests", "rw:flag:k", "rw:flag:u"]
            admitted = await state.run(ADMIT, [*counted, "limits:v:rpm"], [*layout(0, 2, 1), 1, 60, 2])
            assert not admitted.ok and admitted.totals == (6, 1) and admitted.episodes == (False, True)
            assert await state.incr("rw:u:requests", 1) == 2  # counted although the rpm refused
            spent = await state.run(SETTLE, ["rw:k:spend", "rw:u:spend", "rw:flag:k", "rw:flag:u"],
                                    [0, 0, 2, 60_000, 1500, 60_000])
            assert spent == Tally((1500, 1500), (False, True))

            # Pauses: one that lasts refuses before anything is counted; an ended one does not.
            await state.set("pause:k", "1000.5 a loop")
            before = await state.incr("rw:k:requests", 0)
            paused = await state.run(ADMIT, ["pause:x", "pause:k", *counted], layout(2, 2, 0, now=1000.0))
            assert not paused.ok and paused.failed == 1 and paused.paused == b"1000.5 a loop"
            assert paused.totals == () and await state.incr("rw:k:requests", 0) == before
            ended = await state.run(ADMIT, ["pause:x", "pause:k", *counted], layout(2, 2, 0, now=1001.0))
            assert ended.ok and ended.totals == (before + 1, 3)
        finally:
            await state.close()

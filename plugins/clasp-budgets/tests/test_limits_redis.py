"""Limits across replicas on a real Redis (two ``clasp serve`` processes), and through a
Redis outage: per-process limits (limit / expected replicas) while it is down, logged
once, shared enforcement again once it is back."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

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


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_admit_script_twins_agree(backend: str) -> None:
    """The atomic admission (Lua on Redis, Python elsewhere): all or nothing, and its data
    stays readable by the core's hit/add_within (corrections and releases)."""
    from clasp_budgets.limits.admit import ADMIT

    from clasp_gateway import Secret, StateSettings, create_state

    with redis_server() as redis, redis.namespace() as ns:
        settings = (StateSettings(backend="redis", url=Secret(ns.url, ns.url), prefix=ns.prefix) if backend == "redis"
                    else StateSettings(backend="memory"))
        state = create_state(settings)
        await state.open()
        try:
            keys = ["limits:t:rpm", "limits:t:tpm", "limits:t:concurrency"]
            args = [2, 2, 60, 1, 100, 60, 40, 3, 60_000]  # rpm 2, tpm 100 (cost 40), 3 slots
            first = await state.run(ADMIT, keys, args)
            assert first.ok and first.failed == -1 and first.counts == (1.0, 40.0)
            second = await state.run(ADMIT, keys, args)
            assert second.ok and second.counts[1] == 80.0
            third = await state.run(ADMIT, keys, args)  # rpm full (and tpm too): nothing counted
            assert not third.ok and third.failed == 0 and 0 < third.retry_after <= 120
            assert (await state.add_within("limits:t:concurrency", 0, None)).total == 2.0
            # A correction and a release through the core's own operations on the same keys.
            assert (await state.hit("limits:t:tpm", 1e18, 60, cost=-70)).count == pytest.approx(10.0, abs=1)
            assert (await state.add_within("limits:t:concurrency", -1, None)).total == 1.0
            slots = ["limits:u:concurrency"]
            assert (await state.run(ADMIT, slots, [0, 1, 60_000])).ok
            refused = await state.run(ADMIT, slots, [0, 1, 60_000])
            assert not refused.ok and refused.failed == 0 and refused.counts == ()
        finally:
            await state.close()

"""Active health checks: they open breakers before users notice, and recover them.

Nothing here counts what happens in a stretch of wall-clock time: cooldowns pass on a
clock the test moves, and rounds of checks are run by the test when it needs them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from clasp_gateway import hookimpl
from clasp_gateway.testing import Error, FakeClock, FakeUpstream, Text, free_port


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


class LoopOf:
    """Catches a gateway's event loop at start-up, to run a round of checks on it."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    @hookimpl
    def startup(self, app: Any) -> None:
        self.loop = asyncio.get_running_loop()


def models_calls(up: FakeUpstream) -> int:
    return sum(1 for r in up.requests if r.path.endswith("/models"))


def test_checks_open_a_dead_deployments_breaker_before_any_request(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]
) -> None:
    _, secondary = up
    port = free_port()
    clock = FakeClock()
    gw = serve(kit.pair(f"http://127.0.0.1:{port}/v1", secondary), fallback={
        "health": {"interval": 0.1, "timeout": 0.5, "method": "models"},
        "breaker": {"failures": 2, "cooldown": 0.3},
    }, clock=clock)
    wait_for(lambda: gw.status()["by_id"]["primary"]["state"] == "open")
    check = gw.status()["by_id"]["primary"]["last_check"]
    assert check["ok"] is False and "cannot reach the provider" in check["verdict"] and check["method"] == "models"
    assert "127.0.0.1" not in gw.http.get("/health/providers").text  # no internal addresses either
    assert gw.status()["by_id"]["secondary"]["last_check"]["ok"] is True
    assert gw.text(gw.chat()) == "from secondary"
    assert [a["deployment"] for a in gw.events.kind("attempt")] == ["secondary"]  # no user paid for the discovery

    with FakeUpstream(port=port) as revived:
        revived.script = lambda body, rec: Text("primary is back")
        wait_for(lambda: gw.status()["by_id"]["primary"]["last_check"]["ok"])
        # GET /models proves reachability, not answers: the breaker stays open until its
        # cooldown ends, then a real request is the probe that closes it.
        assert gw.status()["by_id"]["primary"]["state"] == "open"
        clock.advance(0.31)
        assert gw.text(gw.chat()) == "primary is back"
        assert gw.status()["by_id"]["primary"]["state"] == "closed"


def test_a_completion_check_recovers_the_breaker_on_its_own(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]
) -> None:
    primary, secondary = up
    primary.script = lambda body, rec: Error(500)
    gw = serve(kit.pair(primary, secondary), fallback={
        "health": {"interval": 0.1, "method": "call", "public": True},
        "breaker": {"failures": 2, "cooldown": 0.2},
    })
    wait_for(lambda: gw.status()["by_id"]["primary"]["state"] == "open")
    primary.script = lambda body, rec: Text("pong")
    wait_for(lambda: gw.status()["by_id"]["primary"]["state"] == "closed")
    assert gw.status()["by_id"]["primary"]["last_check"]["verdict"] == "reachable, authorised, model answered"
    assert httpx.get(gw.base_url + "/health/providers").status_code == 200  # public: no key needed


def test_replicas_share_checks_instead_of_multiplying_them(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream], redis_url: str, key_prefix: str
) -> None:
    primary, secondary = up
    # A long interval: one lease (90% of it) covers everything below, however slow the machine.
    fallback = {"health": {"interval": 60, "method": "models"},
                "breaker": {"redis_url": redis_url, "key_prefix": key_prefix}}
    loops = [LoopOf() for _ in range(3)]
    gateways = [serve(kit.pair(primary, secondary), fallback=fallback, plugins=[loop]) for loop in loops]
    runtimes = [gw.server.app.starlette_app.state.fallback for gw in gateways]
    # Each replica's loop ran (or is running) its first round; run one more on each.
    for runtime, loop in zip(runtimes, loops, strict=True):
        assert loop.loop is not None
        asyncio.run_coroutine_threadsafe(runtime.health.check_all(), loop.loop).result(timeout=10)
    # Six rounds by three replicas within one interval: one lease holder, one check.
    assert models_calls(primary) == 1
    for gw in gateways:
        assert gw.status()["by_id"]["primary"]["last_check"]["ok"] is True
    for gw in gateways:
        gw.stop()
    assert all(runtime.health._task is None for runtime in runtimes)  # shutdown cancelled the checks

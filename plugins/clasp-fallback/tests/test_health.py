"""Active health checks: they open breakers before users notice, and recover them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from clasp_gateway.testing import Error, FakeUpstream, Text, free_port


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def models_calls(up: FakeUpstream) -> int:
    return sum(1 for r in up.requests if r.path.endswith("/models"))


def test_checks_open_a_dead_deployments_breaker_before_any_request(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]
) -> None:
    _, secondary = up
    port = free_port()
    gw = serve(kit.pair(f"http://127.0.0.1:{port}/v1", secondary), fallback={
        "health": {"interval": 0.1, "timeout": 0.5, "method": "models"},
        "breaker": {"failures": 2, "cooldown": 0.3},
    })
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
        time.sleep(0.35)  # GET /models proves reachability, not answers: a real probe closes it
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
    fallback = {"health": {"interval": 0.2, "method": "models"},
                "breaker": {"redis_url": redis_url, "key_prefix": key_prefix}}
    gateways = [serve(kit.pair(primary, secondary), fallback=fallback) for _ in range(3)]
    start = models_calls(primary)
    time.sleep(1.0)
    # Three replicas checking every ~0.2 s would make ~15 calls in 1 s; with one lease
    # holder per interval (leases last 90% of it) it is ~5.
    assert 3 <= models_calls(primary) - start <= 8
    for gw in gateways:
        assert gw.status()["by_id"]["primary"]["last_check"]["ok"] is True
    for gw in gateways:
        gw.stop()
    stopped = models_calls(primary)
    time.sleep(0.4)
    assert models_calls(primary) == stopped  # shutdown cancelled the checks

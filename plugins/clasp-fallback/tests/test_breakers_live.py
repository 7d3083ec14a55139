"""Circuit breakers through a real gateway: traffic stops, one probe, recovery, budgets.

Cooldowns pass on a clock the test moves (the gateway's memory state reads it), never by
sleeping: whatever must happen inside a cooldown does, however busy the machine."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

from clasp_gateway.testing import Error, FakeClock, FakeUpstream, Text

BREAKER = {"retry": {"attempts": 0}, "breaker": {"failures": 2, "cooldown": 0.5, "max_cooldown": 2}}


def test_an_open_breaker_stops_traffic_and_closes_after_recovery(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]
) -> None:
    primary, secondary = up
    primary.script = lambda body, rec: Error(500)
    clock = FakeClock()
    gw = serve(kit.pair(primary, secondary), fallback={**BREAKER, "breaker": {"failures": 2, "cooldown": 1.0}},
               clock=clock)
    for _ in range(2):
        assert gw.text(gw.chat()) == "from secondary"
    assert kit.chat_requests(primary) == 2
    status = gw.status()
    assert status["status"] == "degraded" and status["by_id"]["primary"]["state"] == "open"

    for _ in range(10):
        assert gw.text(gw.chat()) == "from secondary"
    assert kit.chat_requests(primary) == 2  # not one call while open
    assert gw.status()["by_id"]["primary"]["attempts"]["skipped_open_breaker"] == 10

    primary.script = lambda body, rec: Text("primary is back")
    clock.advance(0.99)
    assert gw.text(gw.chat()) == "from secondary" and kit.chat_requests(primary) == 2  # still cooling down
    clock.advance(0.02)
    assert gw.text(gw.chat()) == "primary is back"  # the half-open probe
    entry = gw.status()["by_id"]["primary"]
    assert entry["state"] == "closed" and entry["attempts"]["probes"] == 1
    for _ in range(3):
        assert gw.text(gw.chat()) == "primary is back"
    assert gw.status()["status"] == "ok"


def test_half_open_lets_exactly_one_probe_through(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]
) -> None:
    primary, secondary = up
    primary.script = lambda body, rec: Error(503)
    clock = FakeClock()
    gw = serve(kit.pair(primary, secondary), fallback=BREAKER, clock=clock)
    gw.chat(), gw.chat()
    assert gw.status()["by_id"]["primary"]["state"] == "open"
    primary.script = lambda body, rec: Text("slow probe", delay=0.4)
    clock.advance(0.51)
    before = kit.chat_requests(primary)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda _: gw.text(gw.chat()), range(8)))
    assert kit.chat_requests(primary) == before + 1
    assert texts.count("slow probe") == 1 and texts.count("from secondary") == 7


def test_a_failed_probe_reopens_for_longer(serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]) -> None:
    primary, secondary = up
    primary.script = lambda body, rec: Error(500)
    clock = FakeClock()
    gw = serve(kit.pair(primary, secondary), fallback=BREAKER, clock=clock)
    gw.chat(), gw.chat()
    clock.advance(0.51)
    assert gw.text(gw.chat()) == "from secondary"  # the probe failed, then fell back
    breaker = gw.status()["by_id"]["primary"]["breaker"]
    assert breaker["trips"] == 2 and breaker["reason"] == "the half-open probe failed"
    assert breaker["probe_in_s"] == 1.0  # cooldown doubled (0.5 s -> 1 s), to the millisecond


def test_the_retry_budget_limits_retries_during_an_outage(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]
) -> None:
    primary, secondary = up
    primary.script = lambda body, rec: Error(503)
    fallback = {"retry": {"attempts": 3, "base_delay": 0.001, "max_delay": 0.002,
                          "budget": {"ratio": 0.2, "window": 60, "min_retries": 0}},
                "breaker": {"failures": 1000, "error_rate": None}}
    gw = serve(kit.pair(primary, secondary), fallback=fallback)
    for _ in range(20):
        assert gw.text(gw.chat()) == "from secondary"
    # Without a budget: 20 x 4 = 80 calls. With it: 20 first tries + 20% retries.
    assert kit.chat_requests(primary) == 24
    assert gw.status()["by_id"]["primary"]["attempts"]["retries"] == 4


def test_each_retry_is_its_own_attempt_event(serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]) -> None:
    primary, secondary = up
    primary.queue(Error(500), Error(502), Text("third time lucky"))
    gw = serve(kit.pair(primary, secondary), fallback={"retry": {"attempts": 2, "base_delay": 0.001}})
    assert gw.text(gw.chat()) == "third time lucky"
    attempts = gw.events.kind("attempt")
    assert [(a["deployment"], a["ok"], a["upstream_status"]) for a in attempts] == [
        ("primary", False, 500), ("primary", False, 502), ("primary", True, 200)]
    assert [a["ok"] for a in gw.events.kind("request")[-1]["attempts"]] == [False, False, True]


def test_the_status_page_shows_state_but_never_secrets(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]
) -> None:
    primary, secondary = up
    # A provider that echoes our key in its error must not leak it through the status page.
    primary.script = lambda body, rec: Error(500, {"error": {"message": f"bad key {kit.UPSTREAM_KEY} for you"}})
    gw = serve(kit.pair(primary, secondary), fallback=BREAKER)
    gw.chat(), gw.chat()
    response = gw.http.get("/health/providers")
    body = response.text
    assert kit.UPSTREAM_KEY not in body and primary.base_url not in body and "127.0.0.1" not in body
    entry = response.json()["deployments"][0]
    assert entry["last_error"]["message"] == "primary: provider answered 500: bad key *** for you"
    assert entry["serves"] == ["chain"] and entry["breaker"]["reason"] == "2 consecutive failures"
    assert gw.http.get("/health/providers", headers={"x-api-key": "wrong"}).status_code == 401

"""Hedged first byte through a real gateway and fake upstreams: a primary that hangs is
hedged on the next candidate long before its first-byte timeout, on both APIs, streamed
or not; the loser is cancelled and recorded (with its input tokens, in the attempt
events, the ledger and the budget); hedges obey regions and their budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest

from clasp_gateway import hookimpl
from clasp_gateway.testing import GATEWAY_KEY, Error, FakeUpstream, GatewayServer, Hang, Text, config_from

FIRST_BYTE = 5.0
HEDGE = {"hedge": {"initial_delay": 0.2, "floor": 0.05}, "retry": {"base_delay": 0.01}}
PRICES = {"input": 1, "output": 2}  # USD per million tokens


def dep(kit: Any, up: FakeUpstream, ident: str, **extra: Any) -> dict[str, Any]:
    return kit.deployment(up.base_url, ident, timeouts={"connect": 1, "first_byte": FIRST_BYTE, "idle": 5, "total": 10},
                          **extra)


@pytest.fixture
def trio() -> Iterator[tuple[FakeUpstream, FakeUpstream, FakeUpstream]]:
    with FakeUpstream("openai") as a, FakeUpstream("openai") as b, FakeUpstream("openai") as c:
        a.script = lambda body, rec: Hang()
        b.script = lambda body, rec: Text("from secondary", usage=(100, 5))
        c.script = lambda body, rec: Text("from third", usage=(100, 5))
        yield a, b, c


def settled(gw: Any, count: int = 1) -> None:
    """Wait for ``count`` request events (recorded as an answer's last bytes go out)."""
    deadline = time.monotonic() + 5
    while len(gw.events.kind("request")) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(gw.events.kind("request")) >= count


def assert_hedged(gw: Any, response: httpx.Response | None = None) -> None:
    settled(gw)
    if response is not None:
        assert response.headers["x-clasp-deployment"] == "secondary"
        assert response.headers["x-clasp-hedged"] == "secondary"
    attempts = gw.events.kind("attempt")
    assert [a["deployment"] for a in attempts] == ["primary", "secondary"]
    lost, won = attempts
    assert not lost["ok"] and "the hedge on secondary answered first" in lost["error"]
    assert "no answer within" not in lost["error"]  # not the first-byte timeout: the hedge
    assert lost["usage"]["input_tokens"] > 0 and lost["usage"]["output_tokens"] == 0  # billed for its prompt
    assert won["ok"] and lost["ms"] < FIRST_BYTE * 1000
    request = gw.events.kind("request")[-1]
    assert request["status"] == 200 and [a["deployment"] for a in request["attempts"]] == ["primary", "secondary"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_hanging_primary_is_hedged_on_chat_completions(
    serve: Callable[..., Any], kit: Any, trio: tuple[FakeUpstream, ...], stream: bool,
) -> None:
    primary, secondary, _ = trio
    gw = serve([dep(kit, primary, "primary"), dep(kit, secondary, "secondary")], fallback=HEDGE)
    response = gw.chat(stream=stream)
    assert gw.text(response) == "from secondary"
    assert_hedged(gw, response)
    assert kit.chat_requests(primary) == 1 and kit.chat_requests(secondary) == 1
    health = gw.status()["by_id"]
    assert health["primary"]["attempts"]["total"] == 1


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "fallback,claude")


def test_a_hanging_primary_is_hedged_on_messages(
    claude: None, serve: Callable[..., Any], kit: Any, trio: tuple[FakeUpstream, ...],
) -> None:
    primary, secondary, _ = trio
    gw = serve([dep(kit, primary, "primary"), dep(kit, secondary, "secondary")], fallback=HEDGE)
    with anthropic.Anthropic(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=10) as client:
        message = client.messages.create(model="chain", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
        assert message.content[0].text == "from secondary"  # type: ignore[union-attr]
        assert_hedged(gw)
        gw.events.items.clear()
        with client.messages.stream(model="chain", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
            assert "".join(s.text_stream) == "from secondary"
            assert s.get_final_message().stop_reason == "end_turn"
    assert_hedged(gw)


def test_a_slow_primary_that_answers_first_wins_and_the_hedge_is_cancelled(
    serve: Callable[..., Any], kit: Any, trio: tuple[FakeUpstream, ...],
) -> None:
    primary, secondary, _ = trio
    primary.script = lambda body, rec: Text("from primary", delay=0.6)
    secondary.script = lambda body, rec: Hang()
    gw = serve([dep(kit, primary, "primary"), dep(kit, secondary, "secondary")], fallback=HEDGE)
    for stream in (False, True):
        gw.events.items.clear()
        response = gw.chat(stream=stream)
        assert gw.text(response) == "from primary" and response.headers["x-clasp-deployment"] == "primary"
        settled(gw)
        attempts = gw.events.kind("attempt")
        assert sorted(a["deployment"] for a in attempts) == ["primary", "secondary"]
        hedge = next(a for a in attempts if a["deployment"] == "secondary")
        assert not hedge["ok"] and "hedge cancelled" in hedge["error"] and hedge["usage"]["input_tokens"] > 0
    # A cancelled hedge says nothing about its deployment's health.
    secondary_status = gw.status()["by_id"]["secondary"]
    assert secondary_status["state"] == "closed" and secondary_status["breaker"]["consecutive_failures"] == 0


def test_both_failing_is_still_a_clear_failure(serve: Callable[..., Any], kit: Any, trio: tuple[FakeUpstream, ...]) -> None:
    primary, secondary, _ = trio
    primary.script = lambda body, rec: Error(503, delay=0.4)
    secondary.script = lambda body, rec: Error(500)
    gw = serve([dep(kit, primary, "primary", retry={"attempts": 0}), dep(kit, secondary, "secondary")], fallback=HEDGE)
    response = gw.chat()
    assert response.status_code in (502, 503, 529), response.text
    assert response.json()["error"]["message"]
    settled(gw)
    attempts = gw.events.kind("attempt")
    assert sorted(a["deployment"] for a in attempts) == ["primary", "secondary"]  # each once: no second try of the hedge


def test_healthy_traffic_makes_no_hedges(serve: Callable[..., Any], kit: Any, trio: tuple[FakeUpstream, ...]) -> None:
    primary, secondary, _ = trio
    primary.script = lambda body, rec: Text("from primary")
    gw = serve([dep(kit, primary, "primary"), dep(kit, secondary, "secondary")],
               fallback={"hedge": {"initial_delay": 2.0, "floor": 1.0}})
    for _ in range(20):
        assert gw.text(gw.chat()) == "from primary"
    assert kit.chat_requests(secondary) == 0


def test_a_spent_hedge_budget_waits_for_the_timeout(serve: Callable[..., Any], kit: Any, trio: tuple[FakeUpstream, ...]) -> None:
    primary, secondary, _ = trio
    fast = {"connect": 1, "first_byte": 0.6, "idle": 5, "total": 10}
    gw = serve([kit.deployment(primary.base_url, "primary", timeouts=fast), dep(kit, secondary, "secondary")],
               fallback={"hedge": {"initial_delay": 0.1, "floor": 0.05, "budget": {"ratio": 0, "burst": 0}},
                         "retry": {"attempts": 0}})
    assert gw.text(gw.chat()) == "from secondary"
    settled(gw)
    attempts = gw.events.kind("attempt")
    assert [a["deployment"] for a in attempts] == ["primary", "secondary"]
    assert "no answer within" in attempts[0]["error"]  # the plain fallback, after the timeout


def test_hedging_can_be_turned_off(serve: Callable[..., Any], kit: Any, trio: tuple[FakeUpstream, ...]) -> None:
    primary, secondary, _ = trio
    fast = {"connect": 1, "first_byte": 0.6, "idle": 5, "total": 10}
    gw = serve([kit.deployment(primary.base_url, "primary", timeouts=fast), dep(kit, secondary, "secondary")],
               fallback={"hedge": {"enabled": False, "initial_delay": 0.1}, "retry": {"attempts": 0}})
    assert gw.text(gw.chat()) == "from secondary"
    settled(gw)
    assert "no answer within" in gw.events.kind("attempt")[0]["error"]


def test_a_hedge_never_leaves_the_keys_regions(kit: Any, trio: tuple[FakeUpstream, ...],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    primary, us, eu = trio
    config = config_from({
        "keys": [{"key": GATEWAY_KEY, "name": "eu-only", "regions": ["eu"]}],
        "models": {"chain": [dep(kit, primary, "primary", region="eu"), dep(kit, us, "us-secondary", region="us"),
                             dep(kit, eu, "eu-third", region="eu")]},
        "fallback": HEDGE,
    })
    with GatewayServer(config) as gw:
        response = httpx.post(gw.base_url + "/v1/chat/completions", headers={"x-api-key": GATEWAY_KEY}, timeout=10,
                              json={"model": "chain", "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "from third"
        assert response.headers["x-clasp-hedged"] == "eu-third"
    assert kit.chat_requests(us) == 0


class BudgetSpy:
    """Reads the budget as the request goes: the reservation when the loser is recorded,
    the spend once the request settled (``trylast``: after clasp-budgets' own ``record``)."""

    def __init__(self) -> None:
        self.runtime: Any = None
        self.reserved_at_loss: float | None = None
        self.spent: float | None = None

    @hookimpl(trylast=True)
    async def record(self, ctx: Any, event: dict[str, Any]) -> None:
        if event["kind"] == "attempt" and not event["ok"]:
            self.reserved_at_loss = ctx.state["clasp_budgets.hold"].amount
        if event["kind"] == "request":
            [(spent, _)] = await self.runtime.reservations.status(self.runtime.known_slots({}))
            self.spent = spent


def test_a_hedge_counts_against_the_budget_and_lands_in_the_ledger(
    kit: Any, trio: tuple[FakeUpstream, ...], sqlite_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from clasp_budgets.ledger import ATTEMPTS
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import create_async_engine

    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "fallback,budgets_budgets,budgets_ledger")
    primary, secondary, _ = trio
    config = config_from({
        "storage": {"url": sqlite_url},
        "models": {"chain": [dep(kit, primary, "primary", prices=PRICES), dep(kit, secondary, "secondary", prices=PRICES)]},
        "fallback": HEDGE,
        "budgets": {"limits": [{"name": "all", "scope": "global", "usd": 1.0, "period": "daily"}]},
        "ledger": {"flush_interval": "1h", "spool_path": str(tmp_path / "spool.jsonl")},
    })
    prompt = "x" * 4000  # ~1000 input tokens by the gateway's estimate
    spy = BudgetSpy()
    server = GatewayServer(config, plugins=[spy]).start()
    try:
        spy.runtime = server.app.starlette_app.state.clasp_budgets
        response = httpx.post(server.base_url + "/v1/chat/completions", headers={"x-api-key": GATEWAY_KEY}, timeout=10,
                              json={"model": "chain", "max_tokens": 50, "messages": [{"role": "user", "content": prompt}]})
        assert response.status_code == 200 and response.headers["x-clasp-hedged"] == "secondary"
    finally:
        server.stop()

    async def rows() -> list[dict[str, Any]]:
        engine = create_async_engine(sqlite_url.replace("sqlite:///", "sqlite+aiosqlite:///", 1))
        try:
            async with engine.connect() as conn:
                return [dict(r) for r in (await conn.execute(select(ATTEMPTS))).mappings().all()]
        finally:
            await engine.dispose()

    attempts = sorted(asyncio.run(rows()), key=lambda r: r["attempt"])
    assert [a["deployment"] for a in attempts] == ["primary", "secondary"]
    lost, won = attempts
    assert lost["ok"] is False and lost["input_tokens"] >= 900
    assert lost["cost_usd"] == pytest.approx(lost["input_tokens"] / 1e6)
    assert won["ok"] is True and won["input_tokens"] == 100
    # The reservation grew for the hedge: the winner's worst case plus the loser's input.
    one_worst = lost["input_tokens"] * 1e-6 + 50 * 2e-6
    assert spy.reserved_at_loss is not None and spy.reserved_at_loss >= one_worst + lost["input_tokens"] * 1e-6 * 0.99
    # Settled: both attempts, the cancelled one's prompt included.
    assert spy.spent == pytest.approx(lost["cost_usd"] + won["cost_usd"])


def test_a_race_lost_before_the_latency_is_learned_says_nothing_and_after_it_counts(
    serve: Callable[..., Any], kit: Any, trio: tuple[FakeUpstream, ...],
) -> None:
    primary, secondary, _ = trio
    hang = [True]
    primary.script = lambda body, rec: Hang() if hang[0] else Text("from primary")
    gw = serve([dep(kit, primary, "primary"), dep(kit, secondary, "secondary")],
               fallback={"hedge": {"initial_delay": 0.2, "floor": 0.1, "min_samples": 3}})
    assert gw.text(gw.chat()) == "from secondary"
    settled(gw)
    cold = gw.status()["by_id"]["primary"]
    assert cold["breaker"]["consecutive_failures"] == 0  # slow or hung: not known yet
    hang[0] = False
    for _ in range(3):
        assert gw.text(gw.chat()) == "from primary"
    assert gw.status()["by_id"]["primary"]["latency_ms"]["ttfb_p99"] is not None
    hang[0] = True
    assert gw.text(gw.chat()) == "from secondary"
    settled(gw, 5)
    warm = gw.status()["by_id"]["primary"]
    assert warm["breaker"]["consecutive_failures"] == 1  # learned: late past its p99 is a failure
    assert warm["hedges"]["started"] == 2
    # Now suspect: the next hedge away from it is free (no budget spent).
    assert gw.text(gw.chat()) == "from secondary"
    settled(gw, 6)
    assert gw.status()["by_id"]["primary"]["hedges"]["free"] == 1


def test_cold_losses_may_be_counted(serve: Callable[..., Any], kit: Any, trio: tuple[FakeUpstream, ...]) -> None:
    primary, secondary, _ = trio
    gw = serve([dep(kit, primary, "primary"), dep(kit, secondary, "secondary")],
               fallback={"hedge": {"initial_delay": 0.2, "floor": 0.1, "cold_losses": "count"}})
    for done in (1, 2):
        assert gw.text(gw.chat()) == "from secondary"
        settled(gw, done)
    status = gw.status()["by_id"]["primary"]
    assert status["breaker"]["consecutive_failures"] == 2 and status["hedges"]["free"] == 1  # suspect after the first

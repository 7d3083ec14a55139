"""Reservations on the shared state, on memory (a clock the test moves) and Redis:
admit, busy, exhausted, settle, leases of a dead process, waiting woken by a
settlement, lowering max_tokens, outages, and threshold alerts once across replicas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from clasp_budgets.budgets.costs import WorstCase, count_tokens, load_tokenizers
from clasp_budgets.budgets.periods import current_period
from clasp_budgets.budgets.reservations import TAIL_LIMIT, BudgetRefused, Hold, Reservations, Slot
from clasp_budgets.budgets.scripts import BUSY, EXHAUSTED, FITS, REFRESH, RESERVE, SETTLE
from clasp_budgets.budgets.settings import BudgetSettings, BudgetSpec

from clasp_gateway import StateBackend, create_state
from clasp_gateway.state import StateSettings
from clasp_gateway.state.redis import RedisState
from clasp_gateway.testing import FakeClock
from clasp_gateway.testing.processes import RedisServer, free_port

NOW = time.time()  # key TTLs run from the period of the wall clock


def slot(name: str = "team-month", usd: float = 1.0, **kw: Any) -> Slot:
    spec = BudgetSpec(name=name, usd=usd, scope="team", **kw)
    period = current_period(spec.period, NOW)
    return Slot(spec, "platform", period, f"budgets:{name}:team:platform:{period.label}")


def hold(amount: float, *slots: Slot, output_tokens: int = 1000) -> Hold:
    price = amount / output_tokens
    return Hold(slots or (slot(),), WorstCase(amount, 0, output_tokens, 0.0, price, "gpt-4o"), None)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[tuple[StateBackend, FakeClock | None]]:
    if request.param == "memory":
        clock = FakeClock(1000.0)
        yield create_state(StateSettings(backend="memory"), clock=clock), clock
        return
    with redis_server.namespace() as ns:
        yield RedisState(ns.url, prefix=ns.prefix, timeout=2.0), None  # a loaded CI machine


@pytest.fixture
async def store(backend: tuple[StateBackend, FakeClock | None]) -> AsyncIterator[Reservations]:
    state, _ = backend
    reservations = Reservations(state, BudgetSettings(lease_ttl=30.0, poll_interval=0.05))
    await reservations.start()
    yield reservations
    await reservations.close()
    await state.close()


def no_lowering(h: Hold, tokens: int) -> None:
    raise AssertionError("lowered without opting in")


async def test_fits_then_busy_then_exhausted(store: Reservations) -> None:
    s = slot(usd=1.0)
    first = await store.admit(hold(0.6, s), max_wait=0, lower=no_lowering)
    # 0.6 reserved: another 0.6 would fit the spend (0) but not the reservations: busy.
    with pytest.raises(BudgetRefused) as busy:
        await store.admit(hold(0.6, s), max_wait=0, lower=no_lowering)
    assert busy.value.why == "busy"
    await store.settle(first, 0.5)
    # 0.5 spent: 0.6 can never fit again this period: exhausted, at once.
    with pytest.raises(BudgetRefused) as exhausted:
        await store.admit(hold(0.6, s), max_wait=10, lower=no_lowering)
    assert exhausted.value.why == "exhausted" and exhausted.value.standing.spent == pytest.approx(0.5)
    second = await store.admit(hold(0.5, s), max_wait=0, lower=no_lowering)
    await store.settle(second, 0.25)
    assert await store.status([s]) == [(pytest.approx(0.75), 0.0)]


async def test_all_budgets_or_none(store: Reservations) -> None:
    team, glob = slot("team", usd=10.0), slot("global", usd=1.0)
    with pytest.raises(BudgetRefused) as refused:
        await store.admit(hold(2.0, team, glob), max_wait=0, lower=no_lowering)
    assert refused.value.slot == glob
    # Nothing was reserved on the budget that had room.
    assert await store.status([team, glob]) == [(0.0, 0.0), (0.0, 0.0)]


async def test_soft_budgets_never_refuse_and_count_spend(store: Reservations) -> None:
    soft = slot("soft", usd=1.0, mode="soft")
    h = await store.admit(hold(5.0, soft), max_wait=0, lower=no_lowering)
    await store.settle(h, 3.0)
    assert (await store.status([soft]))[0][0] == pytest.approx(3.0)


async def test_a_waiting_request_is_admitted_when_the_one_in_flight_settles(store: Reservations) -> None:
    s = slot(usd=1.0)
    first = await store.admit(hold(0.8, s), max_wait=0, lower=no_lowering)
    waiting = asyncio.create_task(store.admit(hold(0.5, s), max_wait=30, lower=no_lowering))
    await asyncio.sleep(0.02)
    assert not waiting.done() and store.stats["waited"] == 1
    await store.settle(first, 0.3)  # 0.3 spent: 0.5 fits now
    admitted = await asyncio.wait_for(waiting, 5)
    assert admitted.amount == 0.5


async def test_lowering_max_tokens_is_opt_in(store: Reservations) -> None:
    s = slot(usd=1.0, lower_max_tokens=True, min_tokens=100)
    spent = await store.admit(hold(0.7, s), max_wait=0, lower=no_lowering)
    await store.settle(spent, 0.7)
    lowered: list[int] = []
    h = await store.admit(hold(0.6, s, output_tokens=1000), max_wait=0, lower=lambda _, t: lowered.append(t))
    # 0.3 left at 0.0006 per token: 500 tokens.
    assert lowered == [500] and h.lowered == 500 and h.amount == pytest.approx(0.3)
    await store.settle(h, 0.29)  # 0.99 spent
    with pytest.raises(BudgetRefused):  # 0.01 left: 16 tokens, under min_tokens
        await store.admit(hold(0.6, s), max_wait=0, lower=lambda _, t: lowered.append(t))


async def test_a_dead_process_lease_is_charged_its_progress_when_it_expires() -> None:
    # (On Redis, leases run on Redis's clock: the race test kills a real process instead.)
    clock = FakeClock(1000.0)
    state = create_state(StateSettings(backend="memory"), clock=clock)
    s = slot(usd=1.0)
    key_ttl = s.key_ttl_ms(NOW)
    # A process reserves 0.8 with a charge of 0.3 (what it reported having served), then dies.
    admitted = await state.run(RESERVE, [s.key], ["dead", 0.8, 10_000, 0.3, 1.0, key_ttl])
    assert admitted.ok
    assert (await state.run(RESERVE, [s.key], ["other", 0.5, 10_000, 0.5, 1.0, key_ttl])).standings[0].status == BUSY
    clock.advance(11)
    # Expired: charged 0.3, and the room is back.
    again = await state.run(RESERVE, [s.key], ["other", 0.5, 10_000, 0.5, 1.0, key_ttl])
    assert again.ok and again.standings[0].spent == pytest.approx(0.3)
    # A settlement that comes after its lease expired adds only the difference.
    await state.run(RESERVE, [s.key], ["slow", 0.1, 1000, 0.05, 1.0, key_ttl])
    clock.advance(2)
    [(spent, _)] = await state.run(SETTLE, [s.key], ["slow", 0.08, 0.05, key_ttl])
    assert spent == pytest.approx(0.3 + 0.08)


async def test_scripts_agree_on_both_backends(backend: tuple[StateBackend, FakeClock | None]) -> None:
    state, _ = backend
    s = slot(usd=1.0)
    ttl = s.key_ttl_ms(NOW)
    a = await state.run(RESERVE, [s.key], ["a", 0.4, 60_000, 0.4, 1.0, ttl])
    b = await state.run(RESERVE, [s.key], ["b", 0.4, 60_000, 0.4, 1.0, ttl])
    c = await state.run(RESERVE, [s.key], ["c", 0.4, 60_000, 0.4, 1.0, ttl])
    assert [a.ok, b.ok, c.ok] == [True, True, False]
    assert c.standings[0].status == BUSY and c.standings[0].reserved == pytest.approx(0.8)
    [(spent, waited)] = await state.run(SETTLE, [s.key], ["a", 0.7, 0.4, ttl])
    assert spent == pytest.approx(0.7) and waited  # c marked the budget as waited on
    d = await state.run(RESERVE, [s.key], ["d", 0.4, 60_000, 0.4, 1.0, ttl])
    assert d.standings[0].status == EXHAUSTED and not d.ok
    e = await state.run(RESERVE, [s.key], ["e", 0.3, 60_000, 0.3, -1.0, ttl])  # no limit: soft
    assert e.ok and e.standings[0].status == FITS
    # Leases renewed in one call: the settled one is gone.
    assert await state.run(REFRESH, [s.key], [60_000, ttl, "b", 0.1, "a", 0.2, "e", 0.05]) == [True, False, True]
    await state.close()


async def test_checkpoints_renew_leases_with_what_was_served(tmp_path: Path) -> None:
    # Charges matter to other processes only: a shared state (SQLite here, on a clock the test moves).
    clock = FakeClock(1000.0)
    state = create_state(StateSettings(backend="sqlite", path=str(tmp_path / "state.db")), clock=clock)
    store = Reservations(state, BudgetSettings(lease_ttl=3.0, checkpoint_interval=0.5), monotonic=clock)
    s = slot(usd=1.0)
    running = await store.admit(hold(0.8, s, output_tokens=1000), max_wait=0, lower=no_lowering)
    clock.advance(2.0)
    load_tokenizers(["gpt-4o"])
    running.texts = ["tok " * 100]  # 100 tokens at 0.0008 in 2 s: 0.08 served, 0.02 more per half second
    await store.checkpoint()
    counted = store.count(running)
    assert counted in (100, 101) and running.charge == pytest.approx(counted * 0.0008 * 1.125)
    clock.advance(2.9)  # renewed at 1002: still alive at 1004.9
    assert (await store.status([s]))[0] == (0.0, pytest.approx(0.8))
    clock.advance(0.2)  # the process "died": its lease expired, charged what it served
    assert (await store.status([s]))[0] == (pytest.approx(running.charge), 0.0)
    await state.close()


@pytest.mark.parametrize("chunks", [
    ["tok " * 5] * 40,  # chunks that end in a space: each piece counted alone would count it apart
    ["tok", *[" tok"] * 199],  # chunks that start with one, as most providers stream
    ["Hel", "lo wor", "ld, how are", " you to", "day?\n", "Fine"] * 30,  # words split across chunks
    ["x" * 500] * 3,  # no space at all: counted as it comes
])
def test_a_stream_counted_piece_by_piece_counts_what_its_whole_text_counts(chunks: list[str]) -> None:
    """Checkpoints count a stream's text in pieces; the sum equals the whole text's
    count (each piece's last word is counted with the next), so a dead replica's
    leases are charged what the provider served, not ~8% more."""
    load_tokenizers(["gpt-4o"])
    running = hold(1.0)
    for at in range(0, len(chunks), 3):  # a checkpoint every three chunks
        running.texts += chunks[at:at + 3]
        Reservations.count(running)
    whole = count_tokens("gpt-4o", ["".join(chunks)])
    assert Reservations.count(running) == whole
    assert len(running.tail) <= TAIL_LIMIT


async def test_outage_fail_closed_refuses_and_fail_open_caps_per_process() -> None:
    dead = RedisState(f"redis://127.0.0.1:{free_port()}/0", prefix="x:", timeout=0.2)
    alerts: list[dict[str, Any]] = []
    store = Reservations(dead, BudgetSettings(), alert=alerts.append)
    closed, opened = slot("closed", usd=100.0), slot("open", usd=100.0, on_outage="fail_open", local_cap_usd=1.0)
    with pytest.raises(BudgetRefused) as refused:
        await store.admit(hold(0.1, closed), max_wait=0, lower=no_lowering)
    assert refused.value.why == "outage"
    first = await store.admit(hold(0.6, opened), max_wait=0, lower=no_lowering)
    assert first.local
    with pytest.raises(BudgetRefused):  # 0.6 + 0.6 is over the local cap of 1.0
        await store.admit(hold(0.6, opened), max_wait=0, lower=no_lowering)
    await store.settle(first, 0.2)
    await store.admit(hold(0.6, opened), max_wait=0, lower=no_lowering)  # 0.2 + 0.6 fits
    assert [a["kind"] for a in alerts] == ["budget_outage"]  # once per outage
    await dead.close()


async def test_thresholds_alert_once_across_replicas(redis_server: RedisServer) -> None:
    with redis_server.namespace() as ns:
        alerts: list[dict[str, Any]] = []
        replicas = [Reservations(RedisState(ns.url, prefix=ns.prefix, timeout=2.0), BudgetSettings(), alert=alerts.append)
                    for _ in range(2)]
        s = slot(usd=1.0)
        for i in range(10):  # 10 x 0.1 over two replicas: 100%
            store = replicas[i % 2]
            await store.settle(await store.admit(hold(0.1, s), max_wait=0, lower=no_lowering), 0.1)
        crossed = sorted(a["threshold_pct"] for a in alerts if a["kind"] == "budget_threshold")
        assert crossed == [50.0, 80.0, 100.0]
        for store in replicas:
            await store.state.close()


def test_streamed_text_reads_text_reasoning_and_tool_arguments() -> None:
    from clasp_budgets.budgets.costs import streamed_text

    texts: list[str] = []
    for delta in ({"content": "a"}, {"role": "assistant", "content": "b"}, {"reasoning_content": "c"},
                  {"content": None, "tool_calls": [{"index": 0, "function": {"name": "Bash", "arguments": "{}"}}]},
                  {"content": "d", "tool_calls": [{"index": 0, "function": {"arguments": "e"}}]}):
        streamed_text({"choices": [{"index": 0, "delta": delta}]}, texts)
    assert texts == ["a", "b", "c", "Bash{}", "d", "e"]


async def test_a_reservation_grows_for_a_dearer_fallback_only_if_it_fits(store: Reservations) -> None:
    s = slot(usd=1.0)
    first = await store.admit(hold(0.3, s), max_wait=0, lower=no_lowering)
    other = await store.admit(hold(0.3, s), max_wait=0, lower=no_lowering)
    assert await store.top_up(first, 0.6)  # 0.6 + 0.3 in flight: fits
    assert not await store.top_up(other, 0.5)  # 0.6 + 0.5: does not; the reservation stays 0.3
    assert other.amount == 0.3 and (await store.status([s]))[0][1] == pytest.approx(0.9)
    await store.settle(first, 0.1)
    await store.settle(other, 0.1)
    assert await store.status([s]) == [(pytest.approx(0.2), 0.0)]

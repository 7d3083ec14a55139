"""Which budgets a request counts against, worked out once per caller (key and user)
and reused: the plan must follow the periods (a new day is a new state key), stored
budgets added or removed, a key's own budget, and the user."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from clasp_budgets.budgets.reservations import Reservations
from clasp_budgets.budgets.runtime import PLANS_LIMIT, BudgetRuntime, safe_subject
from clasp_budgets.budgets.settings import BudgetSettings, BudgetSpec
from clasp_budgets.budgets.store import DatabaseBudgets

from clasp_gateway import KeyPolicy, Principal, RequestContext, StateSettings, create_state

SETTINGS = BudgetSettings(limits=(
    BudgetSpec(name="everyone", usd=100.0, scope="global", period="monthly"),
    BudgetSpec(name="per-user", usd=10.0, scope="user", period="daily"),
))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def runtime(clock: Clock) -> BudgetRuntime:
    state = create_state(StateSettings(backend="memory"))
    gateway: Any = SimpleNamespace(resolve_model=lambda name: SimpleNamespace(deployments=[]))
    return BudgetRuntime(gateway, SETTINGS, Reservations(state, SETTINGS), DatabaseBudgets(None, state), clock=clock)


def request(user: str | None, principal: Principal | None = None) -> RequestContext:
    ctx = RequestContext(request_id="r", api="anthropic", public_model="m", client_stream=True,
                         principal=principal or Principal("key_a", name="a", team="platform"))
    ctx.user = user
    return ctx


EVERYONE = f"budgets:everyone:global:{safe_subject('*')}"


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_a_callers_plan_is_reused_and_follows_the_user() -> None:
    budgets = runtime(Clock(at("2026-12-07T10:00:00")))
    first = budgets.plan(request("alice"))
    assert budgets.plan(request("alice")) is first
    assert [s.key for s in first.slots] == [f"{EVERYONE}:2026-12-01",
                                            "budgets:per-user:user:alice:2026-12-07"]
    assert [s.key for s in budgets.slots_for(request("bob"))][1] == "budgets:per-user:user:bob:2026-12-07"
    assert [s.key for s in budgets.slots_for(request(None))] == [f"{EVERYONE}:2026-12-01"]
    assert first.max_wait == SETTINGS.max_wait


def test_a_new_period_makes_a_new_plan() -> None:
    clock = Clock(at("2026-12-31T23:59:59"))
    budgets = runtime(clock)
    before = budgets.plan(request("alice"))
    clock.now = at("2027-01-01T00:00:00")
    after = budgets.plan(request("alice"))
    assert [s.key for s in after.slots] == [f"{EVERYONE}:2027-01-01",
                                            "budgets:per-user:user:alice:2027-01-01"]
    clock.now = at("2026-12-31T12:00:00")  # a clock set back: the old period again
    assert [s.key for s in budgets.plan(request("alice")).slots] == [s.key for s in before.slots]


def test_stored_budgets_and_a_keys_own_budget_change_the_plan() -> None:
    budgets = runtime(Clock(at("2026-12-07T10:00:00")))
    assert len(budgets.plan(request("alice")).slots) == 2
    budgets.stored.specs = (BudgetSpec(name="platform", usd=5.0, scope="team", match="platform", source="database"),)
    assert [s.spec.name for s in budgets.plan(request("alice")).slots] == ["everyone", "per-user", "platform"]
    budgets.stored.specs = ()
    assert len(budgets.plan(request("alice")).slots) == 2
    capped = Principal("key_a", name="a", team="platform", policy=KeyPolicy(max_budget_usd=1.0, budget_period="daily"))
    own = budgets.plan(request("alice", capped)).slots[-1]
    assert (own.spec.source, own.spec.usd, own.key) == ("key", 1.0, "budgets:key:key:key_a:2026-12-07")
    assert len(budgets.plan(request("alice")).slots) == 2  # the same key without it


def test_plans_are_bounded() -> None:
    budgets = runtime(Clock(at("2026-12-07T10:00:00")))
    for i in range(PLANS_LIMIT + 10):
        budgets.plan(request(f"user-{i}"))
    assert len(budgets._plans) == PLANS_LIMIT

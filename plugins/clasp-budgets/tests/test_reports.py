"""Reports against a seeded ledger whose right answers are known, on SQLite and
PostgreSQL: totals, groups, time buckets, filters (tags included), projections to the
end of each period, and both savings suggestions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from clasp_budgets.ledger import REQUESTS
from clasp_budgets.reports import ReportError, Scope, period_bounds, projection, savings, spend
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from clasp_gateway.testing import load_module

support = load_module(Path(__file__).with_name("ledger_support.py"), "clasp_budgets_ledger_support")

MONDAY = 1796601600.0  # 2026-12-07T00:00:00Z, a Monday
DAY = 86400.0


def row(n: int, ts: float, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {c.name: None for c in REQUESTS.columns}
    base.update(request_id=f"req_{n:04d}", ts=ts, api="anthropic", input_tokens=100, output_tokens=10,
                cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0, saved_usd=0.0, duration_ms=5.0,
                status=200, cut=False, stream=False, attempts=1, retries=0, fallbacks=0, tags={})
    base.update(values)
    return base


def seeded_rows() -> list[dict[str, Any]]:
    """71 requests, $0.35 (see the module's tests for what each part adds up to)."""
    rows = []
    core = {"key_id": "k1", "key_name": "alice-key", "team": "core", "project": "api", "user_id": "alice",
            "request_class": "coding"}
    for i in range(30):  # 30 coding requests on the dear model, 2 of them errors, $0.01 each
        rows.append(row(i, MONDAY + i * 600, public_model="sonnet", deployment="anthropic/sonnet",
                        provider="anthropic", model="claude-sonnet", cost_usd=0.01, status=500 if i in (3, 4) else 200,
                        prompt_hash="a" * 64 if i >= 20 else f"{i:064d}", **core))
    for i in range(30):  # 30 coding requests on the cheap one, 1 error, $0.001 each
        rows.append(row(100 + i, MONDAY + i * 600, public_model="cheap", deployment="openai/mini", provider="openai",
                        model="gpt-4o-mini", cost_usd=0.001, status=502 if i == 7 else 200,
                        prompt_hash="b" * 64 if i == 0 else None, **core))
    rows.append(row(200, MONDAY + 100, public_model="sonnet", deployment="gateway", provider="gateway",
                    model="gateway", cost_usd=0.0, cache_hit="exact", saved_usd=0.01, prompt_hash="a" * 64, **core))
    ml = {"key_id": "k2", "key_name": "bob-key", "team": "ml", "project": "research", "user_id": "bob",
          "request_class": "question", "tags": {"feature": "review"}}
    for i in range(10):  # Tuesday: 10 questions of team ml, $0.002 each
        rows.append(row(300 + i, MONDAY + DAY + i * 600, public_model="cheap", deployment="openai/mini",
                        provider="openai", model="gpt-4o-mini", cost_usd=0.002,
                        prompt_hash="b" * 64 if i < 2 else None, **ml))
    return rows


@pytest.fixture(params=["sqlite", "postgresql"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with support.ledger_engine(request.param, tmp_path) as engine:
        async with engine.begin() as conn:
            await conn.execute(insert(REQUESTS), seeded_rows())
        yield engine


async def run(engine: AsyncEngine, **params: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        return await spend(conn, Scope.parse(params))


def by(result: dict[str, Any], *names: str) -> dict[Any, dict[str, Any]]:
    return {tuple(g[n] for n in names) if len(names) > 1 else g[names[0]]: g for g in result["groups"]}


async def test_totals_and_groups(ledger: AsyncEngine) -> None:
    total = (await run(ledger))["total"]
    assert total["requests"] == 71 and total["errors"] == 3 and total["cache_hits"] == 1
    assert total["cost_usd"] == pytest.approx(0.35) and total["saved_usd"] == pytest.approx(0.01)
    assert total["input_tokens"] == 7100 and total["unpriced"] == 0
    teams = by(await run(ledger, by="team"), "team")
    assert teams["core"]["requests"] == 61 and teams["core"]["cost_usd"] == pytest.approx(0.33)
    assert teams["ml"]["requests"] == 10 and teams["ml"]["cost_usd"] == pytest.approx(0.02)
    result = await run(ledger, by="provider,model")
    assert [g["provider"] for g in result["groups"]] == ["anthropic", "openai", "gateway"]  # dearest first
    assert by(result, "provider", "model")[("openai", "gpt-4o-mini")]["requests"] == 40
    keys = by(await run(ledger, by="key"), "key")
    assert keys["k2"]["key_name"] == "bob-key" and keys["k1"]["requests"] == 61
    assert by(await run(ledger, by="user"), "user")["alice"]["cost_usd"] == pytest.approx(0.33)
    assert by(await run(ledger, by="project"), "project")["research"]["requests"] == 10


async def test_time_buckets(ledger: AsyncEngine) -> None:
    days = by(await run(ledger, bucket="day"), "bucket")
    assert set(days) == {"2026-12-07", "2026-12-08"}
    assert days["2026-12-07"]["requests"] == 61 and days["2026-12-08"]["cost_usd"] == pytest.approx(0.02)
    hours = by(await run(ledger, bucket="hour"), "bucket")
    assert hours["2026-12-07T00:00"]["requests"] == 13 and hours["2026-12-08T01:00"]["requests"] == 4
    weeks = by(await run(ledger, bucket="week"), "bucket")
    assert list(weeks) == ["2026-12-07"] and weeks["2026-12-07"]["requests"] == 71
    months = by(await run(ledger, bucket="month", by="team"), "bucket", "team")
    assert months[("2026-12", "core")]["cost_usd"] == pytest.approx(0.33)
    assert [g["bucket"] for g in (await run(ledger, bucket="day", by="team"))["groups"]] == [
        "2026-12-07", "2026-12-08"]


async def test_filters(ledger: AsyncEngine) -> None:
    assert (await run(ledger, team="core", provider="openai"))["total"]["cost_usd"] == pytest.approx(0.03)
    tagged = await run(ledger, **{"tag:feature": "review", "by": "tag:feature"})
    assert tagged["total"]["requests"] == 10 and tagged["groups"][0]["tag:feature"] == "review"
    assert (await run(ledger, since="2026-12-08"))["total"]["requests"] == 10
    assert (await run(ledger, until=str(MONDAY + 600)))["total"]["requests"] == 3
    assert (await run(ledger, request_class="question", key="k1"))["total"]["requests"] == 0
    for bad in ({"by": "colour"}, {"bucket": "year"}, {"since": "yesterday"}, {"tag:bad name": "x"}):
        with pytest.raises(ReportError):
            Scope.parse(bad)


def test_period_bounds() -> None:
    now = MONDAY + DAY + 12 * 3600  # Tuesday 2026-12-08 12:00 UTC
    assert period_bounds("daily", now) == (MONDAY + DAY, MONDAY + 2 * DAY)
    assert period_bounds("weekly", now) == (MONDAY, MONDAY + 7 * DAY)
    assert period_bounds("monthly", now) == (MONDAY - 6 * DAY, MONDAY + 25 * DAY)  # Dec 1 .. Jan 1


async def test_projection_to_the_end_of_each_period(ledger: AsyncEngine) -> None:
    now = MONDAY + DAY + 12 * 3600
    budgets = {("key", "k2", "daily"): 0.03, ("key", "k1", "weekly"): 100.0}
    async with ledger.connect() as conn:
        result = await projection(conn, Scope.parse({"by": "key"}), now, budgets=budgets)
    assert result["method"].startswith("linear")
    daily, weekly, monthly = result["periods"]
    assert daily["spent_usd"] == pytest.approx(0.02) and daily["projected_usd"] == pytest.approx(0.04)
    assert daily["elapsed_fraction"] == pytest.approx(0.5)
    assert weekly["projected_usd"] == pytest.approx(0.35 * 7 / 1.5)
    assert monthly["projected_usd"] == pytest.approx(0.35 * 31 / 7.5)  # Dec 1 to Dec 8 12:00
    k2 = {g["key"]: g for g in daily["groups"]}["k2"]
    assert k2["budget_usd"] == 0.03 and k2["projected_over_budget"] is True
    k1 = {g["key"]: g for g in weekly["groups"]}["k1"]
    assert k1["projected_usd"] == pytest.approx(0.33 * 7 / 1.5) and k1["projected_over_budget"] is False
    assert "budget_usd" not in {g["key"]: g for g in monthly["groups"]}["k1"]


async def test_savings_suggestions(ledger: AsyncEngine) -> None:
    async with ledger.connect() as conn:
        result = await savings(conn, Scope())
    [suggestion] = result["cheaper_models"]
    assert (suggestion["public_model"], suggestion["request_class"], suggestion["deployment"]) == (
        "sonnet", "coding", "anthropic/sonnet")
    assert suggestion["cheaper_deployment"] == "openai/mini" and suggestion["requests"] == 30
    assert suggestion["success_rate"] == pytest.approx(28 / 30) and suggestion["cheaper_success_rate"] == pytest.approx(29 / 30)
    assert suggestion["saving_usd"] == pytest.approx(30 * (0.01 - 0.001))
    assert "$0.27" in suggestion["text"]
    cache = result["cache"]
    # 10 identical sonnet prompts of team core (9 repeats, $0.09), 2 of team ml (1 repeat, $0.002);
    # the cache hit, the errors and team core's lone copy of "b" do not count
    assert cache["repeats"] == 10 and cache["repeated_prompts"] == 2
    assert cache["saving_usd"] == pytest.approx(0.092)
    assert cache["top"][0]["prompt_hash"] == "a" * 16 and cache["top"][0]["tenant"] == "core"
    assert result["saving_usd"] == pytest.approx(0.27 + 0.092)
    async with ledger.connect() as conn:
        strict = await savings(conn, Scope(), min_requests=31)
        ml_only = await savings(conn, Scope.parse({"team": "ml"}))
    assert strict["cheaper_models"] == [] and ml_only["cache"]["repeats"] == 1

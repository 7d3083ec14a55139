"""Reports, cohorts, quality and exports against a seeded ledger whose right answers
were worked out by hand (``analytics_support.SEED``), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from clasp_analytics import cohorts, export, quality_report, reports
from clasp_analytics.filters import parse_filters
from clasp_analytics.tables import FEEDBACK, QUALITY

from clasp_gateway import InvalidRequestError
from clasp_gateway.testing import load_module

support = load_module(Path(__file__).with_name("analytics_support.py"), "clasp_analytics_test_support")
T0, H = support.T0, support.H
WHOLE = {"since": str(T0), "until": str(T0 + 10 * 86400)}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def seeded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database URL holding the seeded ledger, quality rows and feedback (one per module and dialect)."""
    url, name = asyncio.run(support.create_database(request.param, tmp_path_factory.mktemp("db")))

    async def seed() -> None:
        async with support.engine_at(url) as engine:
            await support.seed_ledger(engine)
            async with engine.begin() as conn:
                await conn.execute(QUALITY.insert(), QUALITY_ROWS)
                await conn.execute(FEEDBACK.insert(), FEEDBACK_ROWS)

    asyncio.run(seed())
    yield url
    asyncio.run(support.drop_database(name))


def q(rid: str, hours: float, public: str, model: str, deployment: str, cls: str, *, error: bool = False,
      truncated: bool = False, bad_json: bool = False, retry_of: str | None = None, team: str = "red") -> dict[str, Any]:
    return {"request_id": rid, "ts": T0 + hours * H, "api": "anthropic", "public_model": public, "request_class": cls,
            "provider": deployment.split("/")[0], "model": model, "deployment": deployment, "key_id": "id_alice",
            "key_name": "alice", "team": team, "project": "api", "status": 502 if error else 200, "error": error,
            "truncated": truncated, "invalid_tool_json": bad_json, "fingerprint": None, "retry_of": retry_of}


QUALITY_ROWS = [
    q("q1", 1, "gpt-4o", "gpt-4o", "openai/gpt-4o", "coding"),
    q("q2", 1.1, "gpt-4o", "gpt-4o", "openai/gpt-4o", "coding", truncated=True, retry_of="q1"),
    q("q3", 2, "gpt-4o", "gpt-4o", "azure/gpt4o", "coding", bad_json=True, team="blue"),
    q("q4", 3, "gpt-4o", "gpt-4o", "azure/gpt4o", "coding", error=True, team="blue"),
    q("q5", 4, "haiku", "gpt-4o-mini", "openai/gpt-4o-mini", "background"),
]
FEEDBACK_ROWS = [
    {"request_id": "q1", "ts": T0 + 2 * H, "key_id": "id_alice", "by_admin": False, "score": 1.0, "comment": "good",
     "metrics": {"tests_passed": True}},
    {"request_id": "q2", "ts": T0 + 2 * H, "key_id": "id_alice", "by_admin": False, "score": 0.0, "comment": None,
     "metrics": {"tests_passed": False, "pr_merged": True}},
    {"request_id": "q3", "ts": T0 + 3 * H, "key_id": None, "by_admin": True, "score": None, "comment": "bad args",
     "metrics": {"review_rounds": 3}},
]


def run(url: str, fn: Any, *args: Any) -> Any:
    async def go() -> Any:
        async with support.engine_at(url) as engine:
            return await fn(engine, *args)

    return asyncio.run(go())


def filters(**params: Any) -> Any:
    return parse_filters({**WHOLE, **params}, max_range_days=400, now=T0 + 10 * 86400)


def test_summary_totals_equal_the_seed(seeded: str) -> None:
    t = run(seeded, reports.summary, filters())["totals"]
    assert t["requests"] == 8 and t["errors"] == 2 and t["cut"] == 1
    assert t["input_tokens"] == 13500 and t["output_tokens"] == 1990 and t["cache_read_tokens"] == 600
    assert t["cost_usd"] == pytest.approx(0.0968) and t["unpriced"] == 1
    assert t["cache_hits"] == 2 and t["saved_usd"] == pytest.approx(0.065) and t["cache_hit_rate"] == 0.25
    assert t["retries"] == 3 and t["fallback_requests"] == 1 and t["error_rate"] == 0.25
    assert t["duration_ms"] == {"p50": 1000.0, "p90": 5000.0, "p99": 5000.0}
    assert t["ttfb_ms"]["p50"] == 200.0
    assert t["output_tokens_per_second"] == pytest.approx(1990 / 8.82, abs=1e-3)


@pytest.mark.parametrize(("params", "requests", "cost", "input_tokens"), [
    ({"team": "red"}, 4, 0.0458, 4900),
    ({"model": "haiku"}, 2, 0.0018, 900),
    ({"tag": "feature=review"}, 3, 0.08, 8000),
    ({"provider": "azure"}, 1, 0.0, 3000),
    ({"class": "coding"}, 5, 0.08, 11100),
    ({"key": "dave", "status": "error"}, 1, 0.0, 100),
    ({"project": "web", "team": "blue"}, 2, 0.001, 3500),
    ({"since": str(T0), "until": str(T0 + 86400)}, 3, 0.031, 3500),
])
def test_filters_change_the_totals(seeded: str, params: dict[str, str], requests: int, cost: float,
                                   input_tokens: int) -> None:
    t = run(seeded, reports.summary, filters(**params))["totals"]
    assert (t["requests"], t["input_tokens"]) == (requests, input_tokens)
    assert t["cost_usd"] == pytest.approx(cost)


def test_timeseries_by_day_has_every_day_and_the_right_counts(seeded: str) -> None:
    series = run(seeded, reports.timeseries, filters(until=str(T0 + 9 * 86400)), "day")
    assert series["bucket_seconds"] == 86400
    points = series["points"]
    assert [p["t"] for p in points] == [T0 + d * 86400 for d in range(9)]
    assert [p["requests"] for p in points] == [3, 2, 0, 0, 0, 0, 0, 0, 3]
    assert points[0]["cost_usd"] == pytest.approx(0.031) and points[0]["p50_duration_ms"] == 1000.0
    assert points[1]["errors"] == 1 and points[1]["cache_hits"] == 1 and points[8]["errors"] == 1
    assert sum(p["requests"] for p in points) == 8


def test_breakdown_by_team_most_expensive_first(seeded: str) -> None:
    rows = run(seeded, reports.breakdown, filters(), "team")["rows"]
    assert [(r["value"], r["requests"], round(r["cost_usd"], 6)) for r in rows] == [
        ("green", 2, 0.05), ("red", 4, 0.0458), ("blue", 2, 0.001)]


def test_dimension_values_list_what_the_range_holds(seeded: str) -> None:
    values = run(seeded, reports.dimension_values, filters())
    assert values["team"] == ["blue", "green", "red"]
    assert values["model"] == ["gpt-4o", "haiku"] and values["provider"] == ["azure", "openai"]
    assert values["tag"] == ["feature=chat", "feature=review"]
    assert values["key"] == ["alice", "bob", "carol", "dave"]


def test_cohorts_by_key(seeded: str) -> None:
    rows = {r["value"]: r for r in run(seeded, cohorts.cohorts, filters(), "key")["rows"]}
    alice = rows["alice"]
    assert (alice["requests"], alice["active_days"], alice["first_seen"], alice["last_seen"]) == (
        3, 2, T0 + 1 * H, T0 + 193 * H)
    assert alice["cost_usd"] == pytest.approx(0.0308)
    assert rows["dave"]["errors"] == 1 and rows["bob"]["input_tokens"] == 3500


def test_cohorts_by_first_seen_week(seeded: str) -> None:
    view = run(seeded, cohorts.cohorts, filters(), "first_seen_week")
    week = 7 * 86400
    got = [(r["cohort_week"] - T0, r["weeks_since"], r["cohort_size"], r["active"], r["requests"],
            round(r["cost_usd"], 6)) for r in view["rows"]]
    assert got == [(0, 0, 3, 3, 5, 0.046), (0, 1, 3, 1, 1, 0.0008), (week, 0, 1, 1, 2, 0.05)]


def test_quality_joins_signals_and_feedback_to_the_route(seeded: str) -> None:
    rows = run(seeded, quality_report.quality, filters())["rows"]
    by = {(r["deployment"], r["request_class"]): r for r in rows}
    openai = by[("openai/gpt-4o", "coding")]
    assert (openai["requests"], openai["success_rate"], openai["truncated_rate"], openai["retried_rate"]) == (
        2, 1.0, 0.5, 0.5)
    assert openai["feedback"] == {"count": 2, "avg_score": 0.5, "metrics": {
        "pr_merged": {"mean": 1.0, "count": 1}, "tests_passed": {"mean": 0.5, "count": 2}}}
    azure = by[("azure/gpt4o", "coding")]
    assert (azure["requests"], azure["success_rate"], azure["invalid_tool_json_rate"]) == (2, 0.5, 0.5)
    assert azure["feedback"] == {"count": 1, "avg_score": None, "metrics": {"review_rounds": {"mean": 3.0, "count": 1}}}
    assert by[("openai/gpt-4o-mini", "background")]["feedback"]["count"] == 0
    only_blue = run(seeded, quality_report.quality, filters(team="blue"))["rows"]
    assert [r["deployment"] for r in only_blue] == ["azure/gpt4o"]


async def _collect(fmt: str, url: str, **params: Any) -> bytes:
    async with support.engine_at(url) as engine:
        out = b""
        async for chunk in export.encode(fmt, export.rows(engine, filters(**params), batch=3, limit=1000)):
            out += chunk
        return out


def test_csv_export_streams_every_row(seeded: str) -> None:
    text = asyncio.run(_collect("csv", seeded)).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["request_id"] for r in rows] == [f"r{i}" for i in range(1, 9)]
    assert rows[0]["tags"] == '{"feature":"review"}' and rows[4]["cut"] == "True" and rows[3]["cost_usd"] == ""
    assert sum(int(r["input_tokens"]) for r in rows) == 13500
    assert rows[0]["output_tokens_per_second"] == "250.0" and rows[3]["output_tokens_per_second"] == ""


def test_jsonl_export_with_a_filter(seeded: str) -> None:
    lines = asyncio.run(_collect("jsonl", seeded, team="green")).splitlines()
    records = [orjson.loads(line) for line in lines]
    assert [r["request_id"] for r in records] == ["r7", "r8"]
    assert records[0]["tags"] == {"feature": "review"} and records[1]["status"] == 429


def test_parquet_export_reads_back(seeded: str, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "out.parquet"
    path.write_bytes(asyncio.run(_collect("parquet", seeded)))
    table = pq.read_table(path)
    assert table.num_rows == 8 and table.column_names == list(export.EXPORTED)
    assert sum(table.column("input_tokens").to_pylist()) == 13500
    assert table.column("cut").to_pylist().count(True) == 1
    assert pq.ParquetFile(path).num_row_groups == 3  # batches of 3: streamed, not built whole


def test_an_empty_export_is_a_header() -> None:
    async def none() -> Any:
        if False:
            yield []

    async def go() -> bytes:
        return b"".join([c async for c in export.encode("csv", none())])

    assert asyncio.run(go()).decode().startswith("request_id,ts,")


@pytest.mark.parametrize(("params", "message"), [
    ({"since": "yesterday"}, "since: expected unix seconds or an ISO 8601 time"),
    ({"since": str(T0 + 10), "until": str(T0)}, "since: must be before until"),
    ({"since": "0", "until": str(T0)}, "the range is at most 400 days"),
    ({"tag": "no-equals"}, "tag: expected name=value"),
    ({"status": "maybe"}, "status: expected ok or error"),
])
def test_bad_filters_are_400s_naming_the_parameter(params: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        parse_filters(params, max_range_days=400, now=T0)


def test_iso_times_are_utc_by_default() -> None:
    f = parse_filters({"since": "2025-12-01T00:00:00", "until": "2025-12-02T00:00:00Z"}, max_range_days=400)
    assert (f.since, f.until) == (T0, T0 + 86400)

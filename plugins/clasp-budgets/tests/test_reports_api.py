"""The report routes of the admin API and ``clasp report``, on a gateway's own
database seeded with a known ledger: what each role sees (a member only its own key,
a team admin its team, whatever it asks), shaped 4xx for bad parameters, the routes
in the OpenAPI document, and the command's text, JSON and CSV."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from clasp_budgets.ledger import REQUESTS
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from clasp_gateway.testing import GatewayServer, config_from, load_module

reports = load_module(Path(__file__).with_name("test_reports.py"), "clasp_budgets_test_reports_seed")

ADMIN = "admin-key-0123456789abcdef"
LEAD = "lead-key-0123456789abcdefg"
ALICE = "alice-key-0123456789abcdef"


def key_id(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def keys() -> list[dict[str, Any]]:
    return [
        {"key": ADMIN, "name": "root", "role": "admin"},
        {"key": LEAD, "name": "lead", "team": "ml", "role": "team_admin"},
        {"key": ALICE, "name": "alice-key", "team": "core", "max_budget_usd": 1.0, "budget_period": "monthly"},
    ]


def seed(url: str) -> None:
    rows = reports.seeded_rows()
    for r in rows:  # team core's requests are alice's key
        if r["key_id"] == "k1":
            r["key_id"] = key_id(ALICE)

    async def go() -> None:
        engine = create_async_engine(url.replace("sqlite:///", "sqlite+aiosqlite:///", 1))
        try:
            async with engine.begin() as conn:
                await conn.execute(insert(REQUESTS), rows)
        finally:
            await engine.dispose()

    asyncio.run(go())


@pytest.fixture(scope="module")
def gateway(sqlite_url: str) -> Any:
    config = config_from({"models": {}, "keys": keys(), "storage": {"url": sqlite_url}})
    with GatewayServer(config) as server:  # migrates the ledger's tables
        seed(sqlite_url)
        yield server


def get(gateway: Any, path: str, api_key: str | None, **params: str) -> httpx.Response:
    headers = {"x-api-key": api_key} if api_key else {}
    return httpx.get(gateway.base_url + path, headers=headers, params=params, timeout=30)


def test_admin_sees_everything(gateway: Any) -> None:
    answer = get(gateway, "/admin/usage", ADMIN, by="team")
    assert answer.status_code == 200
    body = answer.json()
    assert body["total"]["requests"] == 71 and body["total"]["cost_usd"] == pytest.approx(0.35)
    assert {g["team"]: g["requests"] for g in body["groups"]} == {"core": 61, "ml": 10}
    days = get(gateway, "/admin/reports/spend", ADMIN, bucket="day", team="ml").json()
    assert [(g["bucket"], g["requests"]) for g in days["groups"]] == [("2026-12-08", 10)]


def test_a_member_sees_only_its_own_key_and_a_team_admin_its_team(gateway: Any) -> None:
    mine = get(gateway, "/admin/usage", ALICE, by="key").json()
    assert mine["total"]["requests"] == 61 and [g["key"] for g in mine["groups"]] == [key_id(ALICE)]
    # asking for someone else's key or team narrows to nothing, never widens
    assert get(gateway, "/admin/usage", ALICE, key="k2").json()["total"]["requests"] == 0
    assert get(gateway, "/admin/usage", ALICE, team="ml").json()["total"]["requests"] == 0
    team = get(gateway, "/admin/usage", LEAD, by="team").json()
    assert team["total"]["requests"] == 10 and [g["team"] for g in team["groups"]] == ["ml"]
    savings = get(gateway, "/admin/reports/savings", LEAD).json()
    assert savings["cheaper_models"] == [] and savings["cache"]["repeats"] == 1


def test_projection_and_savings_routes(gateway: Any) -> None:
    projected = get(gateway, "/admin/reports/projection", ADMIN, by="key", period="monthly").json()
    assert projected["method"].startswith("linear") and [p["period"] for p in projected["periods"]] == ["monthly"]
    savings = get(gateway, "/admin/reports/savings", ADMIN).json()
    assert savings["saving_usd"] == pytest.approx(0.362)
    assert savings["cheaper_models"][0]["cheaper_deployment"] == "openai/mini"


def test_bad_parameters_and_no_key_are_shaped(gateway: Any) -> None:
    for path, params in (("/admin/usage", {"by": "colour"}), ("/admin/usage", {"bucket": "year"}),
                         ("/admin/usage", {"since": "last tuesday"}),
                         ("/admin/reports/projection", {"period": "hourly"}),
                         ("/admin/reports/savings", {"min_requests": "-3"})):
        answer = get(gateway, path, ADMIN, **params)
        assert answer.status_code == 400, (path, params)
        assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "invalid_request_error"
    assert get(gateway, "/admin/usage", None).status_code == 401
    assert get(gateway, "/admin/usage", "wrong-key-0123456789abcdef").status_code == 401


def test_the_routes_are_in_the_openapi_document(gateway: Any) -> None:
    document = get(gateway, "/admin/openapi.json", ADMIN).json()
    for path in ("/admin/usage", "/admin/reports/spend", "/admin/reports/projection", "/admin/reports/savings"):
        assert "get" in document["paths"][path], path
    assert ADMIN not in json.dumps(document) and ALICE not in json.dumps(document)


def clasp(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "clasp.yaml"
    path.write_text(yaml.safe_dump({"models": {}, "keys": keys(), "storage": {"url": url}}))
    return subprocess.run([sys.executable, "-m", "clasp_gateway.cli", "report", *args, "--config", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_clasp_report_command(gateway: Any, sqlite_url: str, tmp_path: Path) -> None:
    text = clasp(tmp_path, sqlite_url)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split()[:3] == ["provider", "model", "requests"]
    assert [line.split()[:3] for line in lines[2:5]] == [
        ["anthropic", "claude-sonnet", "30"], ["openai", "gpt-4o-mini", "40"], ["gateway", "gateway", "1"]]
    assert "total: 71 request(s), $0.350000" in text.stdout


def report(capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str, *args: str) -> tuple[int, str, str]:
    from clasp_budgets.reports.cli import main

    path = tmp_path / "clasp.yaml"
    path.write_text(yaml.safe_dump({"models": {}, "keys": keys(), "storage": {"url": url}}))
    code = main([*args, "--config", str(path)], "clasp.yaml")
    out, err = capsys.readouterr()
    return code, out, err


def test_clasp_report_outputs(gateway: Any, sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = report(capsys, tmp_path, sqlite_url, "spend", "--by", "team", "--bucket", "day", "--json")
    groups = json.loads(out)["groups"]
    assert code == 0 and {(g["bucket"], g["team"]): g["requests"] for g in groups} == {
        ("2026-12-07", "core"): 61, ("2026-12-08", "ml"): 10}
    _, out, _ = report(capsys, tmp_path, sqlite_url, "spend", "--by", "project", "--filter", "tag:feature=review", "--csv")
    [only] = list(csv.DictReader(io.StringIO(out)))
    assert only["project"] == "research" and only["requests"] == "10" and float(only["cost_usd"]) == pytest.approx(0.02)
    code, out, _ = report(capsys, tmp_path, sqlite_url, "projection", "--by", "key")
    assert code == 0 and "method: linear" in out
    assert "1" in [c for line in out.splitlines() if key_id(ALICE) in line and "monthly" in line for c in line.split()]
    code, out, _ = report(capsys, tmp_path, sqlite_url, "savings")
    assert "openai/mini served that class" in out and "an exact cache would have saved" in out
    code, _, err = report(capsys, tmp_path, sqlite_url, "spend", "--by", "colour")
    assert code == 1 and "unknown dimension 'colour'" in err
    code, _, err = report(capsys, tmp_path, "postgresql://clasp:S3cret-pw@127.0.0.1:9/nothing", "spend")
    assert code == 1 and "cannot read the ledger" in err and "S3cret-pw" not in err

"""``clasp export``: the ledger (or a cohort view) to a file, with the API's filters."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml
from clasp_analytics.command import export_command

from clasp_gateway.testing import load_module

support = load_module(Path(__file__).with_name("analytics_support.py"), "clasp_analytics_test_support")
T0 = support.T0
RANGE = ["--since", str(T0), "--until", str(T0 + 10 * 86400)]


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("export")
    url, _ = asyncio.run(support.create_database("sqlite", directory))

    async def seed() -> None:
        async with support.engine_at(url) as engine:
            await support.seed_ledger(engine)

    asyncio.run(seed())
    path = directory / "clasp.yaml"
    path.write_text(yaml.safe_dump({"models": {}, "storage": {"url": url.replace("+aiosqlite", "")}}))
    return path


def test_csv_to_a_file_with_filters(config_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "red.csv"
    assert export_command(["--config", str(config_path), *RANGE, "--team", "red", "-o", str(out)], "unused") == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["request_id"] for r in rows] == ["r1", "r2", "r5", "r6"]


def test_a_cohort_view_as_jsonl(config_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "cohorts.jsonl"
    args = ["-c", str(config_path), *RANGE, "--cohort", "first_seen_week", "-f", "jsonl", "-o", str(out)]
    assert export_command(args, "unused") == 0
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [(r["weeks_since"], r["active"], r["requests"]) for r in rows] == [(0, 3, 5), (1, 1, 1), (0, 1, 2)]


def test_mistakes_exit_2_with_a_message(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export_command(["-c", str(config_path), "--since", "whenever"], "unused") == 2
    assert "since: expected unix seconds or an ISO 8601 time" in capsys.readouterr().err
    assert export_command(["-c", str(config_path.with_name("missing.yaml"))], "unused") == 2


def test_through_the_clasp_command(config_path: Path) -> None:
    env = {**os.environ, "CLASP_LOAD_PLUGINS": support.PLUGINS, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run([sys.executable, "-m", "clasp_gateway.cli", "export", "-c", str(config_path), *RANGE,
                           "--format", "jsonl", "--model", "haiku"], capture_output=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert [orjson.loads(line)["request_id"] for line in done.stdout.splitlines()] == ["r3", "r6"]

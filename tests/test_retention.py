"""Retention and deletion across data stores (clasp_gateway/retention.py), with a
store of the test's own: the job by age, one replica per round, deletion on demand
(admin route and ``clasp data delete``), audited."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from clasp_gateway import DataSelection, hookimpl
from clasp_gateway.cli import main
from clasp_gateway.retention import Retention, parse_date
from clasp_gateway.testing import GATEWAY_KEY, StartGateway

ADMIN_KEY = "clasp-admin-key-0123456789"


@pytest.fixture(autouse=True)
def no_installed_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the test's store (the installed plugins' stores have tests of their own)."""
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "")


class Rows:
    """A data store kept in a list: (ts, key_id, team)."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, str, str]] = []
        self.selections: list[DataSelection] = []

    async def purge(self, gateway: Any, selection: DataSelection) -> int:
        self.selections.append(selection)
        keep, gone = [], 0
        for row in self.rows:
            ts, key, team = row
            match = ((selection.before is None or ts < selection.before)
                     and (selection.key_id is None or key == selection.key_id)
                     and (selection.team is None or team == selection.team))
            if match:
                gone += 1
            else:
                keep.append(row)
        self.rows = keep
        return gone

    @hookimpl
    def register_data_stores(self, register: Any) -> None:
        register("rows", self.purge, "the test's rows")


def config(**extra: Any) -> dict[str, Any]:
    return {"models": {}, "keys": [{"key": GATEWAY_KEY, "name": "tests", "team": "qa"},
                                   {"key": ADMIN_KEY, "name": "root", "role": "admin"}], **extra}


def test_the_admin_route_deletes_a_teams_records_and_audits_it(start_gateway: StartGateway,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    store = Rows()
    now = time.time()
    store.rows = [(now - 10, "k1", "qa"), (now - 10, "k2", "ml"), (now - 86400 * 40, "k3", "qa")]
    gateway = start_gateway(config(), plugins=[store])
    url = gateway.base_url + "/admin/data/delete"
    caplog.set_level(logging.INFO, "clasp.audit")
    member = httpx.post(url, headers={"x-api-key": GATEWAY_KEY}, json={"team": "qa"})
    assert member.status_code == 403 and member.json()["type"] == "error"
    for bad, says in (({}, "name a key"), ({"team": "qa", "before": "yesterday"}, "before: expected a date"),
                      ({"team": 3}, "team: expected a non-empty string"), ({"team": "qa", "x": 1}, "unknown field")):
        answer = httpx.post(url, headers={"x-api-key": ADMIN_KEY}, json=bad)
        assert answer.status_code == 400 and says in answer.json()["error"]["message"]
    assert httpx.post(url, headers={"x-api-key": ADMIN_KEY}, content=b"[").status_code == 400
    old = httpx.post(url, headers={"x-api-key": ADMIN_KEY}, json={"team": "qa", "before": "2000-01-01"})
    assert old.json()["deleted"] == {"rows": 0}
    answer = httpx.post(url, headers={"x-api-key": ADMIN_KEY}, json={"team": "qa"})
    assert answer.status_code == 200 and answer.json()["deleted"] == {"rows": 2}
    assert store.rows == [(now - 10, "k2", "ml")]
    assert store.selections[-1].actor == "admin:root"
    audit = [r for r in caplog.records if r.name == "clasp.audit"]
    assert audit and "admin:root" in audit[-1].getMessage() and "'team': 'qa'" in audit[-1].getMessage()


def test_the_job_deletes_by_age_once_per_round_across_replicas(start_gateway: StartGateway) -> None:
    store = Rows()
    now = time.time()
    store.rows = [(now - 3 * 86400, "k", "qa"), (now - 3600, "k", "qa")]
    gateway = start_gateway(config(retention={"max_age": {"rows": "2d"}, "interval": "1h"}), plugins=[store])
    job: Retention = gateway.gateway.pm.get_plugin("clasp_gateway.retention")
    deadline = time.monotonic() + 5
    while store.selections == [] and time.monotonic() < deadline:  # the first round runs at start-up
        time.sleep(0.02)
    assert store.rows == [(now - 3600, "k", "qa")]
    assert store.selections[0].before is not None and abs(store.selections[0].before - (now - 2 * 86400)) < 60
    # Another replica on the same state in the same interval finds the round claimed.
    other = Retention({"max_age": {"rows": "2d"}, "interval": "1h"})
    assert asyncio.run(other.run_once(gateway.gateway)) == {}  # (the memory state is loop-free)
    assert len(store.selections) == 1 and job.rounds == 1


def test_retention_mistakes_are_reported(start_gateway: StartGateway) -> None:
    from clasp_gateway import ConfigError

    with pytest.raises(ConfigError) as caught:
        start_gateway(config(retention={"max_age": {"nosuch": "1d", "rows": "5m"}, "interval": 5}),
                      plugins=[Rows()])
    text = str(caught.value)
    assert "retention.max_age.rows" in text and "retention.interval" in text
    with pytest.raises(ConfigError, match="retention.max_age.nosuch: no data store 'nosuch'"):
        start_gateway(config(retention={"max_age": {"nosuch": "1d"}}), plugins=[Rows()])


@pytest.fixture
def root_logging() -> Any:
    """The command sets up logging on the root logger (as `clasp` does): put it back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_clasp_data_delete(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                           root_logging: None) -> None:
    path = tmp_path / "clasp.yaml"
    path.write_text(f"keys:\n  - key: {GATEWAY_KEY}\n    name: tests\nmodels: {{}}\n")
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "")
    assert main(["data", "delete", "--config", str(path), "--team", "qa", "--before", "not a date"]) == 2
    assert "expected a date" in capsys.readouterr().err
    assert main(["data", "delete", "--config", str(path), "--key", "k1", "--before", "2026-01-01"]) == 0
    out = capsys.readouterr().out
    assert "deleted the records of key k1 before 2026-01-01" in out and "no loaded plugin keeps records" in out


def test_parse_date() -> None:
    assert parse_date("1970-01-02") == 86400.0
    assert parse_date("1970-01-01T01:00:00+01:00") == 0.0
    with pytest.raises(ValueError, match="expected a date"):
        parse_date("soon")

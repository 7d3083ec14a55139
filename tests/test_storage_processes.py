"""The database across processes: replicas starting together against one PostgreSQL
migrate once (advisory lock), ``clasp db upgrade|current``, and a password in the
database URL never reaching a log line, an error or ``clasp check``."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from clasp_gateway.testing import GatewayProcesses, GatewayServer, PostgresServer, config_from, load_module

TOYS = Path(__file__).parent / "storage_toys"
NOTES_PLUGIN = str(TOYS / "toy_notes" / "__init__.py")
PASSWORD = "S3cret-DbPassw0rd-91x"
toy_notes = load_module(TOYS / "toy_notes" / "__init__.py", "toy_notes")


def clasp(*args: str, config: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "clasp.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "clasp_gateway.cli", "--config", str(path), *args],
                          capture_output=True, text=True, timeout=120, env=process_env(env))


def process_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment for a ``clasp`` process, with every plugin allowed (the
    core tests' CLASP_LOAD_PLUGINS would leave out the toy plugin of plugins.paths)."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "CLASP_LOAD_PLUGINS"}
    return {**env, **(extra or {})}


def with_password(url: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")


def test_replicas_starting_together_migrate_once(postgres_server: PostgresServer) -> None:
    # The toy's first revision sleeps 0.3 s on PostgreSQL: without the advisory lock both
    # replicas would create the table and one would fail to start.
    with postgres_server.database() as url:
        config = {"models": {}, "plugins": {"paths": [NOTES_PLUGIN]}, "storage": {"url": url},
                  "keys": [{"key": "clasp-test-key-0123456789", "name": "tests"}]}
        with GatewayProcesses(config, count=2, env={"CLASP_LOAD_PLUGINS": None}) as replicas:
            for replica in replicas:
                assert httpx.get(replica.base_url + "/ready").status_code == 200
            done = subprocess.run([sys.executable, "-m", "clasp_gateway.cli", "--config", str(replicas.config_path),
                                   "db", "current"], capture_output=True, text=True, timeout=120, env=process_env())
            logs = [replica.log_path.read_text() for replica in replicas]
        assert done.returncode == 0, done.stderr
        assert "notes: n002tags (up to date)" in done.stdout
        # Each migration ran once, in one of the replicas; the others found nothing to do.
        assert sum(log.count("Running upgrade  -> n001notes") for log in logs) == 1
        assert all("notes at n002tags" in log for log in logs)


def test_clasp_db_upgrade_and_current(postgres_server: PostgresServer, tmp_path: Path) -> None:
    with postgres_server.database() as url:
        config = {"models": {}, "plugins": {"paths": [NOTES_PLUGIN]},
                  "storage": {"url": "${TEST_DATABASE_URL}", "auto_migrate": False}}
        env = {"TEST_DATABASE_URL": with_password(url)}
        before = clasp("db", "current", config=config, tmp_path=tmp_path, env=env)
        assert before.returncode == 0, before.stderr
        assert "notes: - (not created: latest is n002tags)" in before.stdout
        upgraded = clasp("db", "upgrade", config=config, tmp_path=tmp_path, env=env)
        assert upgraded.returncode == 0, upgraded.stderr
        assert "notes: n002tags (up to date)" in upgraded.stdout
        assert "postgres:***@127.0.0.1" in upgraded.stdout
        for out in (before, upgraded):
            assert PASSWORD not in out.stdout + out.stderr


def test_the_password_stays_out_of_clasp_check_and_errors(tmp_path: Path) -> None:
    # Nothing listens on port 9: the database cannot be reached.
    config = {"models": {}, "plugins": {"paths": [NOTES_PLUGIN]},
              "storage": {"url": "${TEST_DATABASE_URL}", "connect_timeout": "2s"}}
    env = {"TEST_DATABASE_URL": f"postgresql://clasp:{PASSWORD}@127.0.0.1:9/ledger"}
    check = clasp("check", "--no-probe", config=config, tmp_path=tmp_path, env=env)
    assert check.returncode == 0, check.stderr
    # (installed plugins' branches, e.g. clasp-budgets' ``ledger``, are listed too)
    line = next(x.strip() for x in check.stdout.splitlines() if x.strip().startswith("storage: "))
    assert line.startswith("storage: postgresql+asyncpg://clasp:***@127.0.0.1:9/ledger (migrations: ") and "notes" in line
    upgrade = clasp("db", "upgrade", config=config, tmp_path=tmp_path, env=env)
    assert upgrade.returncode == 1
    assert "the database at postgresql+asyncpg://clasp:***@127.0.0.1:9/ledger cannot be used" in upgrade.stderr
    for out in (check, upgrade):
        assert PASSWORD not in out.stdout + out.stderr


def test_a_gateway_that_cannot_reach_its_database_does_not_start(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_DATABASE_URL", f"postgresql://clasp:{PASSWORD}@127.0.0.1:9/ledger")
    config = config_from({"models": {}, "storage": {"url": "${TEST_DATABASE_URL}", "connect_timeout": "2s"}})
    caplog.set_level(logging.INFO)
    with pytest.raises(RuntimeError, match="gateway failed to start"):
        GatewayServer(config, plugins=[toy_notes]).start()
    # (Another test in the same process may have registered "clasp" as a secret: the
    # redactor may hide more than the password, never less.)
    assert re.search(r"the database at postgresql\+asyncpg://\S+:\*\*\*@\S+ cannot be used", caplog.text)
    assert PASSWORD not in caplog.text


def test_a_served_gateway_logs_its_database_without_the_password(
        postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO)
    with postgres_server.database() as url:
        monkeypatch.setenv("TEST_DATABASE_URL", with_password(url))
        config = config_from({"models": {}, "storage": {"url": "${TEST_DATABASE_URL}"}})
        with GatewayServer(config, plugins=[toy_notes]) as server:
            assert server.gateway.database.url.startswith("postgresql+asyncpg://postgres:***@127.0.0.1")
            assert PASSWORD not in repr(server.gateway.database) + repr(server.gateway.storage)
    assert "notes at n002tags" in caplog.text
    assert PASSWORD not in caplog.text


def test_two_processes_share_one_sqlite_file(tmp_path: Path) -> None:
    url = "sqlite:///" + str(tmp_path / "shared.db")
    config = {"models": {}, "plugins": {"paths": [NOTES_PLUGIN]}, "storage": {"url": url},
              "keys": [{"key": "clasp-test-key-0123456789", "name": "tests"}]}
    with GatewayProcesses(config, count=2, env={"CLASP_LOAD_PLUGINS": None}) as replicas:
        logs = [replica.log_path.read_text() for replica in replicas]
    assert sum(log.count("Running upgrade  -> n001notes") for log in logs) == 1
    assert all("notes at n002tags" in log for log in logs)

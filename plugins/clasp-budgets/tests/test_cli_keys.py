"""``clasp keys`` and ``clasp teams`` on the gateway's own database (a SQLite file here):
the key printed once, the same checks and audit rows as the admin API, and a gateway on
the same database serving the key with its limits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import clasp_budgets.keys.plugin as keys_plugin
import httpx
import pytest
import yaml
from clasp_budgets.keys.cli import keys_command, teams_command

from clasp_gateway.testing import GatewayServer, config_from

ADMIN_KEY = "admin-static-key-Cc31mNw0pLx7"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> str:
    where = tmp_path_factory.mktemp("cli")
    path = where / "clasp.yaml"
    path.write_text(yaml.safe_dump({
        "keys": [{"key": ADMIN_KEY, "name": "ops", "role": "admin"}], "models": {},
        "storage": {"url": f"sqlite:///{where / 'clasp.db'}"},
    }))
    return str(path)


def run(capsys: pytest.CaptureFixture[str], command: object, *argv: str) -> tuple[int, str, str]:
    code = command(list(argv), None)  # type: ignore[operator]
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_and_teams_from_the_command_line(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, teams_command, "create", "platform", "--models", "claude-*", "--rpm", "60",
                       "--config", config)
    assert code == 0 and "created team platform" in err
    code, out, err = run(capsys, keys_command, "create", "--name", "ana", "--team", "platform", "--models",
                         "claude-*sonnet*", "--rpm", "120", "--max-budget-usd", "25", "--budget-period", "monthly",
                         "--expires", "30d", "--user", "ana@example.com", "--tag", "project=api", "--config", config)
    assert code == 0, err
    key = out.strip()
    assert key.startswith("sk-clasp-") and len(key) == 52 and key not in err and "shown this once" in err
    code, out, _ = run(capsys, keys_command, "list", "--config", config)
    assert code == 0 and "ana" in out and "platform" in out and key[:13] in out and key not in out
    code, out, _ = run(capsys, keys_command, "list", "--json", "--config", config)
    listed = [json.loads(line) for line in out.splitlines()]
    assert listed[0]["policy"]["rpm"] == 120 and listed[0]["policy"]["max_budget_usd"] == 25.0
    assert listed[0]["tags"] == {"project": "api"} and key not in out

    with GatewayServer(config_from(yaml.safe_load(Path(config).read_text())), plugins=[keys_plugin]) as gateway:
        me = httpx.get(gateway.base_url + "/admin/me", headers={"x-api-key": key}, timeout=30).json()
        assert me["kind"] == "virtual" and me["effective_policy"]["rpm"] == 60
        assert me["effective_policy"]["models"] == ["claude-*sonnet*"]
        audit = httpx.get(gateway.base_url + "/admin/audit", headers={"x-api-key": ADMIN_KEY}, timeout=30).json()
        assert {r["action"] for r in audit["data"]} == {"team.create", "key.create"}
        assert all(r["actor"]["name"].startswith("cli:") for r in audit["data"]) and key not in str(audit)

    code, _, err = run(capsys, keys_command, "create", "--name", "ana", "--config", config)
    assert code == 0
    code, _, err = run(capsys, keys_command, "revoke", "ana", "--config", config)
    assert code == 1 and "2 active keys are named 'ana'" in err
    code, _, err = run(capsys, keys_command, "revoke", "ana", "--team", "platform", "--config", config)
    assert code == 0 and "revoked key_" in err
    code, _, err = run(capsys, teams_command, "update", "platform", "--rpm", "30", "--clear", "models",
                       "--config", config)
    assert code == 0
    code, out, _ = run(capsys, teams_command, "list", "--json", "--config", config)
    team = json.loads(out.splitlines()[0])
    assert team["policy"]["rpm"] == 30 and team["policy"]["models"] == [] and team["active_keys"] == 0
    code, _, err = run(capsys, teams_command, "delete", "platform", "--config", config)
    assert code == 0 and "deleted team platform" in err


@pytest.mark.parametrize("argv, message", [
    (("create", "--name", "x", "--rpm", "lots"), "rpm: expected an integer between 1 and 1000000000, got 'lots'"),
    (("create", "--name", "x", "--team", "nobody"), "no team named 'nobody'"),
    (("create", "--name", "x", "--expires", "someday"), "expires_at: expected unix seconds"),
    (("revoke", "key_0000000000000000"), "no key with id 'key_0000000000000000'"),
    (("revoke", "nobody"), "no active key named 'nobody'"),
])
def test_mistakes_are_one_line_and_exit_1(config: str, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...],
                                         message: str) -> None:
    code, out, err = run(capsys, keys_command, *argv, "--config", config)
    assert code == 1 and message in err and "Traceback" not in err and out == ""


def test_the_clasp_command_runs_them(config: str) -> None:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    before = subprocess.run([sys.executable, "-m", "clasp_gateway.cli", "-c", config, "keys", "list", "--status", "all"],
                            capture_output=True, text=True, env=env, timeout=120)  # --config before the command
    assert before.returncode == 0 and before.stdout.startswith("ID"), before.stderr
    bad = subprocess.run([sys.executable, "-m", "clasp_gateway.cli", "keys", "list", "--config", "/nonexistent.yaml"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr

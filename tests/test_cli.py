"""The `clasp` command as a user runs it: serve with the shipped clasp.yaml, check, plugins."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from clasp_gateway.testing import FakeUpstream, free_port

ROOT = Path(__file__).parent.parent
CLI = [sys.executable, "-m", "clasp_gateway.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k not in ("OPENAI_BASE_URL", "CLASP_LOAD_PLUGINS")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env.update(extra)
    return env


def test_serve_with_the_shipped_config_and_no_provider_credentials(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*CLI, "serve", "--config", str(ROOT / "clasp.yaml"), "--port", str(port)],
            env=clean_env(CLASP_API_KEY="local-gateway-key-42"), stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "gateway did not become ready"
            time.sleep(0.1)
        response = httpx.post(base + "/v1/messages?beta=true", headers={"x-api-key": "local-gateway-key-42"},
                              json={"model": "claude-sonnet-4-5", "max_tokens": 10,
                                    "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 500
        assert "set OPENAI_API_KEY" in response.json()["error"]["message"]
        response = httpx.get(base + "/v1/models", headers={"x-api-key": "wrong"})
        assert response.status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    text = log.read_text()
    assert "set OPENAI_API_KEY" in text and "ready" in text
    assert "Traceback" not in text and "local-gateway-key-42" not in text


def test_serve_without_a_gateway_key_says_what_to_set(tmp_path: Path) -> None:
    from clasp_gateway.config import load_config

    env_backup = os.environ.pop("CLASP_API_KEY", None)
    try:
        config = load_config(ROOT / "clasp.yaml")
    finally:
        if env_backup is not None:
            os.environ["CLASP_API_KEY"] = env_backup
    assert any("set CLASP_API_KEY" in w for w in config.warnings)


def test_check_probes_each_deployment_without_leaking_secrets(tmp_path: Path) -> None:
    with FakeUpstream("openai", require_key="sk-good-key-123456") as good, \
            FakeUpstream("openai", require_key="sk-another-key-000000") as bad:
        config = {
            "models": {
                "good": [{"model": "openai/gpt-4o", "api_base": good.base_url, "api_key": "sk-good-key-123456"}],
                "absent": [{"model": "openai/no-such-model", "api_base": good.base_url, "api_key": "sk-good-key-123456"}],
                "bad": [{"model": "openai/gpt-4o-mini", "api_base": bad.base_url, "api_key": "sk-bad-key-987654"}],
                "unset": [{"model": "openai/gpt-4o", "api_key": "${CLASP_TEST_UNSET_KEY}"}],
            }
        }
        path = tmp_path / "clasp.yaml"
        path.write_text(yaml.safe_dump(config))
        done = subprocess.run([*CLI, "check", "--config", str(path), "--timeout", "5"], env=clean_env(),
                              capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    lines = {line.split(":")[0].strip(): line for line in out.splitlines() if line.startswith("  ")}
    assert "model present" in out
    assert "'no-such-model' is not listed" in out
    assert "NOT authorised" in out
    assert "set CLASP_TEST_UNSET_KEY" in out
    assert "sk-good-key" not in out and "sk-bad-key" not in out
    assert lines


def test_plugins_lists_the_installed_plugins() -> None:
    done = subprocess.run([*CLI, "plugins", "--config", str(ROOT / "clasp.yaml")], env=clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "claude 0.1.0" in done.stdout and "register_routes" in done.stdout


def test_invalid_config_is_reported_for_a_person(tmp_path: Path) -> None:
    path = tmp_path / "clasp.yaml"
    path.write_text("models:\n  m:\n    - model: gpt-4o\n  bad: [\n")
    done = subprocess.run([*CLI, "check", "--config", str(path)], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not valid YAML" in done.stderr and "Traceback" not in done.stderr

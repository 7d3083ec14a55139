"""``clasp code``: run as a user runs it, with a stand-in ``claude`` that reports what it got.

The stand-in records its argv, its own ``/proc/<pid>/cmdline`` and its environment,
then exits with a chosen code; the gateway is a real one on 127.0.0.1. The real
Claude Code CLI is driven in ``tests/e2e/test_clasp_code.py``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from clasp_gateway.claude_code import compact_window_env, key_file_path, main_entry, model_env, read_key_file, save_key
from clasp_gateway.shaping.context import input_budget
from clasp_gateway.shell.served import claude_code_profile
from clasp_gateway.testing import GATEWAY_KEY, GatewayServer, config_from, free_port

UPSTREAM_KEY = "sk-upstream-secret-0987654321"
API_BASE = "http://10.9.8.7:1234/v1"
PERSONAL_ANTHROPIC_KEY = "sk-ant-personal-key-must-not-travel"

MODELS: dict[str, Any] = {
    "claude-*haiku*": [{"model": "openai/gpt-4o-mini", "api_base": API_BASE, "api_key": UPSTREAM_KEY}],
    # A bigger window for sonnet, so the main tier is visible in the window.
    "claude-*sonnet*": [{"model": "openai/gpt-4.1", "api_base": API_BASE, "api_key": UPSTREAM_KEY,
                         "max_input_tokens": 300000, "max_output_tokens": 8192}],
    "claude-*": [{"model": "openai/gpt-4o", "api_base": API_BASE, "api_key": UPSTREAM_KEY}],
}
OPUS_WINDOW = 128000 - 16384  # gpt-4o: its window less its output limit (Claude Code asks more)
SONNET_WINDOW = 300000 - 8192

FAKE_CLAUDE = f"""#!{sys.executable}
import json, os, sys, urllib.request
pid = os.getpid()
with open(f"/proc/{{pid}}/cmdline", "rb") as f:
    cmdline = [a.decode() for a in f.read().split(b"\\0") if a]
with open(f"/proc/{{os.getppid()}}/cmdline", "rb") as f:
    parent = [a.decode() for a in f.read().split(b"\\0") if a]
seen = {{"argv": sys.argv[1:], "cmdline": cmdline, "parent_cmdline": parent, "env": dict(os.environ)}}
if os.environ.get("FAKE_CLAUDE_CALL"):
    request = urllib.request.Request(os.environ["ANTHROPIC_BASE_URL"] + "/v1/models",
                                     headers={{"authorization": "Bearer " + os.environ["ANTHROPIC_AUTH_TOKEN"]}})
    with urllib.request.urlopen(request, timeout=10) as response:
        seen["models"] = json.load(response)
with open(os.environ["FAKE_CLAUDE_OUT"], "w") as out:
    json.dump(seen, out)
sys.exit(int(os.environ.get("FAKE_CLAUDE_EXIT", "0")))
"""


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayServer]:
    with GatewayServer(config_from({"models": MODELS})) as server:
        yield server


class Home:
    """A user's home for one test: config dir, a stand-in claude, a clean environment."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir()
        self.bin = root / "bin"
        self.bin.mkdir()
        self.claude = self.bin / "claude"
        self.claude.write_text(FAKE_CLAUDE)
        self.claude.chmod(0o755)
        self.report = root / "claude.json"
        self.env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("ANTHROPIC_", "CLAUDE_", "CLASP_")) and not k.endswith("_API_KEY")
        }
        self.env.update({
            "HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / ".config"),
            "PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "FAKE_CLAUDE_OUT": str(self.report), "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        })

    def clasp(self, *args: str, stdin: str | None = None, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        """``clasp code ARGS`` in a subprocess, bounded by a timeout."""
        return subprocess.run(
            [sys.executable, "-m", "clasp_gateway.cli", "code", *args], input=stdin, capture_output=True, text=True,
            env={**self.env, **env}, cwd=cwd or self.root, timeout=120,
        )

    def seen(self) -> dict[str, Any]:
        """What the stand-in claude reported."""
        return json.loads(self.report.read_text())  # type: ignore[no-any-return]


@pytest.fixture
def user(tmp_path: Path) -> Home:
    return Home(tmp_path)


def no_secret(result: subprocess.CompletedProcess[str], *secrets: str) -> None:
    for secret in (GATEWAY_KEY, UPSTREAM_KEY, *secrets):
        assert secret not in result.stdout and secret not in result.stderr


# --- the key ----------------------------------------------------------------------------------


def test_save_key_writes_a_0600_file_in_the_config_dir(user: Home) -> None:
    result = user.clasp("--save-key", stdin=GATEWAY_KEY + "\n")
    assert result.returncode == 0, result.stderr
    path = user.home / ".config" / "clasp" / "key"
    assert path.read_text() == GATEWAY_KEY + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert str(path) in result.stderr
    no_secret(result)
    # Replacing it keeps the mode, and leaves no temporary file behind.
    again = user.clasp("--save-key", "--key", "another-key-1234567890")
    assert again.returncode == 0 and path.read_text() == "another-key-1234567890\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and os.listdir(path.parent) == ["key"]
    no_secret(again, "another-key-1234567890")


def test_key_file_location_follows_xdg_config_home(tmp_path: Path) -> None:
    assert key_file_path({"XDG_CONFIG_HOME": "/x/cfg", "HOME": "/h"}) == Path("/x/cfg/clasp/key")
    assert key_file_path({"HOME": "/h"}) == Path("/h/.config/clasp/key")


def test_a_key_file_others_can_read_gets_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "clasp" / "key"
    save_key("k-1234567890", path)
    assert read_key_file(path) == "k-1234567890" and capsys.readouterr().err == ""
    path.chmod(0o644)
    assert read_key_file(path) == "k-1234567890"
    assert "readable by other users" in capsys.readouterr().err


# --- running Claude Code ----------------------------------------------------------------------


def test_claude_gets_the_gateway_and_key_in_its_environment_never_argv(user: Home, gateway: GatewayServer) -> None:
    result = user.clasp("--url", gateway.base_url, "-p", "hello there", "--output-format", "json",
                        CLASP_API_KEY=GATEWAY_KEY, ANTHROPIC_API_KEY=PERSONAL_ANTHROPIC_KEY,
                        CLAUDE_CODE_USE_BEDROCK="1", FAKE_CLAUDE_EXIT="7")
    assert result.returncode == 7, result.stderr  # Claude Code's exit code, passed through
    seen = user.seen()
    assert seen["argv"] == ["-p", "hello there", "--output-format", "json"]
    # Not on the command line of claude, nor of clasp (it came from the environment).
    assert not any(GATEWAY_KEY in arg for arg in seen["cmdline"] + seen["parent_cmdline"])
    env = seen["env"]
    assert env["ANTHROPIC_AUTH_TOKEN"] == GATEWAY_KEY
    assert env["ANTHROPIC_BASE_URL"] == gateway.base_url
    # A personal Anthropic key never travels to the gateway; nothing bypasses it.
    assert "ANTHROPIC_API_KEY" not in env and "CLAUDE_CODE_USE_BEDROCK" not in env
    assert env["ANTHROPIC_DEFAULT_OPUS_MODEL"] == "claude-opus-4-6"
    assert env["ANTHROPIC_DEFAULT_OPUS_MODEL_NAME"] == "gpt-4o (openai)"
    assert "openai/gpt-4o" in env["ANTHROPIC_DEFAULT_OPUS_MODEL_DESCRIPTION"]
    assert env["ANTHROPIC_DEFAULT_SONNET_MODEL"] == "claude-sonnet-4-6"
    assert env["ANTHROPIC_DEFAULT_SONNET_MODEL_NAME"] == "gpt-4.1 (openai)"
    assert env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "claude-haiku-4-5"
    assert env["ANTHROPIC_DEFAULT_HAIKU_MODEL_NAME"] == "gpt-4o-mini (openai)"
    # No thinking advertised for models that cannot reason.
    assert "thinking" not in env["ANTHROPIC_DEFAULT_OPUS_MODEL_SUPPORTED_CAPABILITIES"]
    assert env["CLAUDE_CODE_DISABLE_THINKING"] == "1"
    # Claude Code's default tier is opus: its window, less the answer room.
    assert env["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == str(OPUS_WINDOW)
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY"] == "1"
    no_secret(result, PERSONAL_ANTHROPIC_KEY)


def test_the_main_model_sets_the_window_and_user_settings_win(user: Home, gateway: GatewayServer) -> None:
    save_key(GATEWAY_KEY, user.home / ".config" / "clasp" / "key")
    result = user.clasp("--url", gateway.base_url, "--model", "sonnet", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="0")
    assert result.returncode == 0, result.stderr
    env = user.seen()["env"]
    assert env["ANTHROPIC_AUTH_TOKEN"] == GATEWAY_KEY  # from the key file
    assert env["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == str(SONNET_WINDOW)
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "0"
    # A model named outright: its own route's window (asked of the gateway).
    result = user.clasp("--url", gateway.base_url, "--model=claude-3-5-haiku-latest")
    assert result.returncode == 0, result.stderr
    assert user.seen()["env"]["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == str(128000 - 16384)
    no_secret(result)


def test_a_wrong_key_is_refused_before_claude_starts(user: Home, gateway: GatewayServer) -> None:
    result = user.clasp("--url", gateway.base_url, "--key", "wrong-key-1234567890")
    assert result.returncode == 1
    assert "refused the key from --key" in result.stderr and "--save-key" in result.stderr
    assert not user.report.exists()
    no_secret(result, "wrong-key-1234567890")
    result = user.clasp("--url", gateway.base_url)
    assert result.returncode == 1 and "needs a key" in result.stderr


def test_remote_names_and_windows_come_from_the_gateway(user: Home, gateway: GatewayServer) -> None:
    """A clasp.yaml here that says otherwise is not read with --url."""
    (user.root / "clasp.yaml").write_text(yaml.safe_dump({"models": {"claude-*": [{"model": "openai/gpt-4o-mini"}]}}))
    result = user.clasp("--url", gateway.base_url, CLASP_API_KEY=GATEWAY_KEY)
    assert result.returncode == 0, result.stderr
    env = user.seen()["env"]
    assert env["ANTHROPIC_DEFAULT_SONNET_MODEL_NAME"] == "gpt-4.1 (openai)"
    assert env["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == str(OPUS_WINDOW)


def write_config(root: Path, port: int, **extra: Any) -> Path:
    data = {"server": {"host": "127.0.0.1", "port": port}, "keys": [{"key": "${CLASP_API_KEY}", "name": "me"}],
            "models": MODELS, **extra}
    path = root / "clasp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_an_unreachable_gateway_says_how_to_start_it(user: Home) -> None:
    port = free_port()
    write_config(user.root, port)
    result = user.clasp(CLASP_API_KEY=GATEWAY_KEY)
    assert result.returncode == 1
    assert f"no gateway answers at http://127.0.0.1:{port}" in result.stderr
    assert "clasp serve" in result.stderr and "clasp code --serve" in result.stderr
    assert not user.report.exists()
    remote = user.clasp("--url", f"http://127.0.0.1:{port}", CLASP_API_KEY=GATEWAY_KEY)
    assert remote.returncode == 1 and "Check --url" in remote.stderr
    no_secret(result)


def test_serve_starts_a_gateway_for_the_session_and_stops_it(user: Home) -> None:
    port = free_port()
    write_config(user.root, port)
    result = user.clasp("--serve", CLASP_API_KEY=GATEWAY_KEY, FAKE_CLAUDE_CALL="1")
    assert result.returncode == 0, result.stderr
    seen = user.seen()
    # Claude Code ran while the gateway served, with the local file's names.
    assert [m["id"] for m in seen["models"]["data"]][:3] == ["claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-6"]
    assert seen["env"]["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{port}"
    # ...and it is gone once Claude Code exited.
    import socket

    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    no_secret(result)


def test_no_claude_on_path(user: Home, gateway: GatewayServer) -> None:
    user.claude.unlink()
    result = user.clasp("--url", gateway.base_url, CLASP_API_KEY=GATEWAY_KEY, PATH=str(user.bin))
    assert result.returncode == 127
    assert "`claude`) is not on PATH" in result.stderr and "--claude" in result.stderr
    explicit = user.clasp("--url", gateway.base_url, "--claude", str(user.root / "nope"), CLASP_API_KEY=GATEWAY_KEY)
    assert explicit.returncode == 127 and "--claude" in explicit.stderr


# --- --print-env and --settings-json ----------------------------------------------------------


def test_print_env_references_the_key_and_works_in_a_shell(user: Home, gateway: GatewayServer) -> None:
    result = user.clasp("--url", gateway.base_url, "--print-env", CLASP_API_KEY=GATEWAY_KEY)
    assert result.returncode == 0, result.stderr
    assert 'export ANTHROPIC_AUTH_TOKEN="$CLASP_API_KEY"' in result.stdout
    assert "unset ANTHROPIC_API_KEY" in result.stdout
    assert f"export CLAUDE_CODE_AUTO_COMPACT_WINDOW={OPUS_WINDOW}" in result.stdout
    no_secret(result)
    # From the key file: the file is read by the shell, not printed.
    path = user.home / ".config" / "clasp" / "key"
    save_key(GATEWAY_KEY, path)
    from_file = user.clasp("--url", gateway.base_url, "--print-env")
    assert f'export ANTHROPIC_AUTH_TOKEN="$(cat {path})"' in from_file.stdout
    no_secret(from_file)
    shell = subprocess.run(
        ["bash", "-c", 'eval "$1"; printf "%s|%s|%s" "$ANTHROPIC_AUTH_TOKEN" "$ANTHROPIC_BASE_URL" '
                       '"$ANTHROPIC_DEFAULT_OPUS_MODEL_DESCRIPTION"', "-", from_file.stdout],
        capture_output=True, text=True, env={**user.env, "ANTHROPIC_API_KEY": PERSONAL_ANTHROPIC_KEY}, timeout=30,
    )
    token, url, description = shell.stdout.split("|")
    assert token == GATEWAY_KEY and url == gateway.base_url and description.startswith("opus tier: openai/gpt-4o")
    # A key given on the command line has nothing to reference: refused, not printed.
    refused = user.clasp("--url", gateway.base_url, "--print-env", "--key", "cli-key-1234567890")
    assert refused.returncode == 2 and "never prints a key" in refused.stderr
    no_secret(refused, "cli-key-1234567890")


def test_print_env_from_the_local_file_without_a_gateway(user: Home) -> None:
    write_config(user.root, free_port())
    result = user.clasp("--print-env", CLASP_API_KEY=GATEWAY_KEY)
    assert result.returncode == 0, result.stderr
    assert "export ANTHROPIC_DEFAULT_SONNET_MODEL=claude-sonnet-4-6" in result.stdout
    assert f"export CLAUDE_CODE_AUTO_COMPACT_WINDOW={OPUS_WINDOW}" in result.stdout
    no_secret(result)


def test_settings_json_for_central_management(user: Home, gateway: GatewayServer) -> None:
    result = user.clasp("--url", gateway.base_url, "--settings-json", CLASP_API_KEY=GATEWAY_KEY)
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert set(settings) == {"apiKeyHelper", "env"}
    env = settings["env"]
    assert env["ANTHROPIC_BASE_URL"] == gateway.base_url
    assert env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "claude-haiku-4-5"
    assert env["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == str(OPUS_WINDOW)
    assert not any(k in env for k in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"))
    no_secret(result)
    # Each user's apiKeyHelper prints their own saved key.
    save_key(GATEWAY_KEY, user.home / ".config" / "clasp" / "key")
    helper = subprocess.run(["sh", "-c", settings["apiKeyHelper"]], capture_output=True, text=True,
                            env=user.env, timeout=30)
    assert helper.stdout.strip() == GATEWAY_KEY


# --- the settings, without a process ----------------------------------------------------------


def test_compact_window_settings() -> None:
    assert compact_window_env(111_616) == {"CLAUDE_CODE_AUTO_COMPACT_WINDOW": "111616"}
    # Claude Code reads a window under 100k as 100k: the compaction point is lowered.
    small = compact_window_env(58_982)
    assert small["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == "100000"
    threshold = float(small["CLAUDE_AUTOCOMPACT_PCT_OVERRIDE"]) / 100 * 80_000
    assert 58_982 // 2 - 100 <= threshold <= 58_982 // 2
    assert compact_window_env(16_000) == {}  # too small to compact in: the gateway trims


def test_model_env_from_a_profile() -> None:
    config = config_from({"models": {
        "claude-*haiku*": [{"model": "openai/gpt-4o-mini", "api_key": "x"}],
        "claude-*": [{"model": "openai/o3-mini", "api_key": "x", "supports_reasoning": True,
                      "max_input_tokens": 200000, "max_output_tokens": 100000}],
        "local": [{"model": "ollama/qwen2.5-coder:7b", "max_input_tokens": 32768, "max_output_tokens": 4096}],
    }})
    profile = claude_code_profile(config)
    env, notes = model_env(profile, None)
    assert "thinking" in env["ANTHROPIC_DEFAULT_OPUS_MODEL_SUPPORTED_CAPABILITIES"]
    assert "thinking" not in env["ANTHROPIC_DEFAULT_HAIKU_MODEL_SUPPORTED_CAPABILITIES"]
    assert "CLAUDE_CODE_DISABLE_THINKING" not in env and not notes
    o3 = config.models[1].deployments[0]
    assert env["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == str(input_budget(o3, 64_000)[0])  # type: ignore[index]
    # Haiku as the main model: no thinking for it.
    assert model_env(profile, "haiku")[0]["CLAUDE_CODE_DISABLE_THINKING"] == "1"
    # A model the gateway does not serve is said, not guessed.
    env, notes = model_env(claude_code_profile(config, "nope"), "nope")
    assert "CLAUDE_CODE_AUTO_COMPACT_WINDOW" not in env and "does not serve 'nope'" in notes[0]
    # Only a non-Claude route: Claude Code is told which model to start with.
    local = config_from({"models": {"claude-*sonnet*": [{"model": "ollama/qwen2.5-coder:7b", "max_input_tokens": 65536}]}})
    env, _ = model_env(claude_code_profile(local), None)
    assert env["ANTHROPIC_MODEL"] == "claude-sonnet-4-6"
    assert env["CLAUDE_AUTOCOMPACT_PCT_OVERRIDE"]
    assert main_entry(claude_code_profile(local), "opus") is None

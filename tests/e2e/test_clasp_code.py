"""``clasp code`` with the real Claude Code CLI, through a real gateway, to a fake upstream.

- ``-p``: one command, no hand-set variables, completes a tool task (Bash writes a
  file, checked on disk), with the key only in the environment.
- The interactive TUI (in tmux, with a pre-seeded config): ``/context`` shows the
  route's usable window, not the Claude model's own; ``/model`` lists the team's
  model names.
- A conversation longer than that window: Claude Code compacts it itself (it sends
  a summary request), and the gateway never trims (``x-clasp-context`` is ``fit`` on
  every answer).

The fake upstream reports usage as gpt-4o would (tiktoken's o200k count of what it
received): Claude Code sizes its context from those numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from clasp_gateway.shaping.context import input_budget
from clasp_gateway.shaping.tokens import count_canonical, get_encoding
from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import GATEWAY_KEY, FakeUpstream, GatewayServer, Reply, Text, ToolCalls, config_from
from clasp_gateway.testing.fakes.record import Recorded

from .claude import ClaudeRun, claude_binary, claude_env, run_claude
from .stack import ClientLog

pytestmark = pytest.mark.e2e

UPSTREAM_KEY = "sk-upstream-test-1234567890"
USABLE = 128000 - 16384
"""gpt-4o's usable input window: its 128k less its 16,384-token answer room."""


def o200k(body: dict[str, Any]) -> int:
    """What gpt-4o counts for a request (OpenAI's accounting, o200k tokens)."""
    return count_canonical(body)


@dataclass
class Team:
    """A gateway serving Claude Code's tiers from a fake OpenAI upstream."""

    upstream: FakeUpstream
    gateway: GatewayServer
    client: ClientLog


@pytest.fixture(scope="module")
def team() -> Iterator[Team]:
    with FakeUpstream("openai") as up:
        deployment = {"api_base": up.base_url, "api_key": UPSTREAM_KEY}
        config = config_from({"models": {
            "claude-*haiku*": [{"model": "openai/gpt-4o-mini", **deployment}],
            "claude-*": [{"model": "openai/gpt-4o", **deployment}],
        }})
        client = ClientLog(create_app(config))
        with GatewayServer(config, app=client) as gw:
            yield Team(up, gw, client)


def via_clasp_code(url: str) -> Any:
    """``clasp code --url URL --claude <the CLI> <its arguments>``."""
    def launch(argv: list[str]) -> list[str]:
        return [sys.executable, "-m", "clasp_gateway.cli", "code", "--url", url, "--claude", argv[0], *argv[1:]]
    return launch


def clasp_env() -> dict[str, str]:
    """The key as a user gives it to ``clasp code``: ``CLASP_API_KEY``. A personal
    Anthropic key in the environment is not the gateway's and must not be used."""
    return {"CLASP_API_KEY": GATEWAY_KEY, "ANTHROPIC_API_KEY": "sk-ant-personal-not-for-the-gateway",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content if isinstance(content, str) else ""
    return ""


def tool_names(body: dict[str, Any]) -> list[str]:
    return [t.get("function", {}).get("name") for t in body.get("tools") or []]


# --- -p ---------------------------------------------------------------------------------------


def test_print_mode_completes_a_tool_task(team: Team, tmp_path: Path) -> None:
    def script(body: dict[str, Any], recorded: Recorded) -> Reply:
        if "Bash" not in tool_names(body):
            return Text("OK")
        if not any(m.get("role") == "tool" for m in body["messages"]):
            return ToolCalls([("Bash", {"command": "echo hi > out.txt", "description": "write out.txt"})])
        return Text("Done: out.txt holds hi.")

    team.upstream.reset()
    team.client.clear()
    team.upstream.script = script
    run = run_claude(team.gateway.base_url, "create the file out.txt containing hi", tmp_path, model="opus",
                     launch=via_clasp_code(team.gateway.base_url), env=clasp_env(), timeout=120)
    assert run.ok, run.describe()
    assert run.read("out.txt") == b"hi\n"
    assert run.text == "Done: out.txt holds hi."
    main = [r for r in team.upstream.requests if r.body and "Bash" in tool_names(r.body)]
    assert len(main) == 2 and {r.body["model"] for r in main} == {"gpt-4o"}  # the opus tier's route
    assert not team.upstream.errors
    # The key went in a header, never on a command line.
    assert not any(GATEWAY_KEY in arg for arg in run.argv)
    assert all(e.status == 200 for e in team.client.messages())


# --- the interactive TUI ----------------------------------------------------------------------


def tmux_binary() -> str:
    """tmux, installed with apt-get when missing and we are root (never skipped)."""
    found = shutil.which("tmux")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "tmux"], capture_output=True, timeout=300,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = shutil.which("tmux")
    if found is None:
        pytest.fail("tmux is not installed (apt-get install tmux): the interactive tests need it", pytrace=False)
    return found


@dataclass
class Terminal:
    """Claude Code's TUI in a private tmux server (its own socket, killed whole)."""

    tmux: str
    socket: str = field(default_factory=lambda: f"clasp-test-{uuid.uuid4().hex[:12]}")

    def run(self, *args: str) -> str:
        done = subprocess.run([self.tmux, "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        return done.stdout

    def start(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        script = cwd.parent / "start.sh"
        exports = "".join(f"export {k}={_quote(v)}\n" for k, v in env.items())
        script.write_text(f"#!/bin/sh\n{exports}cd {_quote(str(cwd))}\nexec {' '.join(_quote(a) for a in argv)}\n")
        script.chmod(0o755)
        self.run("-f", "/dev/null", "new-session", "-d", "-s", "cc", "-x", "160", "-y", "50", str(script))

    def screen(self) -> str:
        return self.run("capture-pane", "-t", "cc", "-p")

    def wait_for(self, text: str, timeout: float = 45.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"{text!r} did not appear within {timeout:.0f}s; the screen:\n{screen}")
            time.sleep(0.3)

    def type(self, text: str) -> None:
        self.run("send-keys", "-t", "cc", "-l", text)
        time.sleep(0.5)
        self.run("send-keys", "-t", "cc", "Enter")

    def kill(self) -> None:
        self.run("kill-server")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def seeded_home(root: Path, work: Path) -> Path:
    """A home whose Claude Code config has onboarding done and the project trusted."""
    home = root / "home"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    (home / ".claude").mkdir(exist_ok=True)
    config = {
        "hasCompletedOnboarding": True,
        "projects": {str(work): {"hasTrustDialogAccepted": True, "hasCompletedProjectOnboarding": True}},
        "customApiKeyResponses": {"approved": [GATEWAY_KEY[-20:]], "rejected": []},
    }
    (home / ".claude" / ".claude.json").write_text(json.dumps(config))
    return home


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal(tmux_binary())
    yield term
    term.kill()


def test_tui_shows_the_route_window_and_the_team_models(team: Team, tmp_path: Path, terminal: Terminal) -> None:
    team.upstream.reset()
    team.upstream.script = lambda body, recorded: Text("OK")
    work = tmp_path / "work"
    work.mkdir()
    home = seeded_home(tmp_path, work)
    env = {**claude_env(team.gateway.base_url, home), **clasp_env()}
    env.pop("ANTHROPIC_API_KEY")
    env.pop("ANTHROPIC_BASE_URL")
    terminal.start(via_clasp_code(team.gateway.base_url)([str(claude_binary())]), env, work)
    terminal.wait_for("❯")
    terminal.type("/context")
    screen = terminal.wait_for("Auto-compact window")
    # The route's usable window (111.6k), not the 1M Claude Code assumes for its Opus.
    assert f"{USABLE / 1000:.1f}k tokens" in screen.split("Auto-compact window", 1)[1], screen
    assert f"/{USABLE / 1000:.1f}k tokens" in screen, screen
    terminal.run("send-keys", "-t", "cc", "Escape")
    terminal.type("/model")
    screen = terminal.wait_for("Select model")
    screen = terminal.wait_for("gpt-4o-mini (openai)")
    assert "gpt-4o (openai)" in screen
    assert "opus tier: openai/gpt-4o" in screen and "haiku tier: openai/gpt-4o-mini" in screen
    # No glob from /v1/models made it into the picker.
    assert "claude-*" not in screen


# --- compaction ---------------------------------------------------------------------------------

SUMMARY = "SUMMARY-7f3a: the user asked for a series of chunk files; chunks were printed."
CHUNK_LINES = 550
"""Lines of output per Bash call: ~27 KB, under the size Claude Code moves to a file
(~7k tokens of gpt-4o)."""


@dataclass
class Compaction:
    """The fake model's side of a long session: it asks for chunk after chunk until
    Claude Code has compacted and the chunks together outgrew the usable window."""

    compactions: list[dict[str, Any]] = field(default_factory=list)
    main: list[dict[str, Any]] = field(default_factory=list)
    tool_output_tokens: int = 0
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, body: dict[str, Any], recorded: Recorded) -> Reply:
        tokens = o200k(body)
        usage = (tokens, 40)
        text = last_user_text(body)
        if "summary" in text.lower() and "conversation" in text.lower() and SUMMARY not in text:
            with self.lock:
                self.compactions.append(body)
            return Text(f"<analysis>chunks</analysis>\n<summary>{SUMMARY}</summary>", usage=usage)
        if "Bash" not in tool_names(body):
            return Text("OK", usage=usage)
        with self.lock:
            self.main.append(body)
            for message in body["messages"][-1:]:
                if message.get("role") == "tool":
                    self.tool_output_tokens += len(get_encoding().encode(json.dumps(message.get("content"))))
        if SUMMARY in json.dumps(body["messages"]) and self.tool_output_tokens > USABLE:
            return Text("All chunks printed.", usage=usage)
        if len(self.main) > 40:
            self.problems.append("no compaction after 40 turns")
            return Text("giving up", usage=usage)
        n = len(self.main)
        command = f"python3 -c \"import sys; [print('chunk {n} line', i, 'of the long report about ticket', i * {n} % 977) for i in range({CHUNK_LINES})]\""
        return ToolCalls([("Bash", {"command": command, "description": f"print chunk {n}"})], usage=usage)


def test_a_long_conversation_compacts_in_claude_code_not_the_gateway(team: Team, tmp_path: Path) -> None:
    model = Compaction()
    team.upstream.reset()
    team.client.clear()
    team.upstream.script = model
    run: ClaudeRun = run_claude(
        team.gateway.base_url, "print the long report chunk by chunk until I say stop", tmp_path, model="opus",
        max_turns=60, timeout=300, launch=via_clasp_code(team.gateway.base_url),
        env=clasp_env(),
    )
    assert not model.problems, model.problems
    assert run.ok, run.describe()
    assert run.text == "All chunks printed."
    # Claude Code compacted: it asked the model for a summary, and went on from it.
    assert model.compactions, "Claude Code never sent a summary request"
    after = [b for b in model.main if SUMMARY in json.dumps(b["messages"])]
    assert after, "no request continued from the summary"
    # The session held more than the window: without compaction it could not be sent.
    assert model.tool_output_tokens > USABLE, model.tool_output_tokens
    # Every request fit as sent: the gateway never trimmed or summarised anything.
    exchanges = team.client.messages()
    assert exchanges and all(e.status == 200 for e in exchanges)
    verdicts = {e.headers.get("x-clasp-context") for e in exchanges}
    assert verdicts == {"fit"}, verdicts
    largest = max(o200k(b) for b in model.main + model.compactions)
    deployment = team.gateway.config.models[1].deployments[0]
    assert largest < input_budget(deployment, 64_000)[0]  # type: ignore[index]

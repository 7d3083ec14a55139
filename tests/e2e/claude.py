"""Driving the real Claude Code CLI against a gateway, and scripting the fake model.

Two helpers:

* :func:`run_claude` runs ``claude -p PROMPT --output-format json`` in a fresh work
  directory with an isolated home and exactly the environment that keeps Claude Code
  offline (see ``shared/CLAUDE_CODE.md``): one connection, to the gateway, nothing
  else. The CLI runs in its own process group, killed whole on timeout.
* :class:`ScriptedModel` is a ``FakeUpstream.script`` that plays a scenario: step *k*
  answers the main-loop request whose conversation already holds *k* assistant
  messages (so a request Claude Code retries gets the same step again), and side
  requests (title generation, quota probes: no ``Bash`` tool) get a plain text.

The CLI is found through ``CLASP_CLAUDE_CODE_DIR`` or
``~/.cache/clasp/claude-code-<version>`` (``scripts/install-claude-code.sh``); when
it is missing the tests FAIL, they never skip.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from clasp_gateway.testing import GATEWAY_KEY, Reply, Text
from clasp_gateway.testing.fakes.record import Recorded

__all__ = [
    "CLAUDE_CODE_VERSION",
    "MAIN_TOOL",
    "ClaudeRun",
    "Conversation",
    "ScriptedModel",
    "claude_binary",
    "claude_env",
    "check_upstream_body",
    "once",
    "run_claude",
]

CLAUDE_CODE_VERSION = "2.1.331"
MAIN_TOOL = "Bash"
"""A request offering this tool is a main-loop request (side requests have no tools)."""

DEFAULT_MODEL = "claude-sonnet-4-5"
DEFAULT_TIMEOUT = 90.0

# Keys an OpenAI chat-completions body from the gateway may have at the top level.
ALLOWED_TOP_LEVEL = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "reasoning_effort",
        "prompt_cache_key",  # OpenAI's prefix-cache routing hint (the gateway's, from tenant and prefix)
    }
)
# Anthropic-only keys that must never reach an OpenAI-compatible upstream, at any depth.
ANTHROPIC_ONLY = frozenset(
    {
        "cache_control",
        "defer_loading",
        "context_management",
        "output_config",
        "thinking",
        "metadata",
        "input_schema",
        "eager_input_streaming",
        "input_examples",
    }
)


# --------------------------------------------------------------------------------------
# Running the CLI
# --------------------------------------------------------------------------------------


def claude_code_dir() -> Path:
    """Where ``scripts/install-claude-code.sh`` installs the CLI."""
    env = os.environ.get("CLASP_CLAUDE_CODE_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "clasp" / f"claude-code-{CLAUDE_CODE_VERSION}"


def claude_binary() -> Path:
    """The ``claude`` executable; fails the test (never skips) when it is missing."""
    path = claude_code_dir() / "node_modules" / ".bin" / "claude"
    if not (path.exists() and os.access(path, os.X_OK)):
        pytest.fail(
            f"Claude Code CLI {CLAUDE_CODE_VERSION} not found at {path}. Install it with "
            "`bash scripts/install-claude-code.sh` (or point CLASP_CLAUDE_CODE_DIR at the "
            "directory holding node_modules/.bin/claude).",
            pytrace=False,
        )
    return path


def claude_env(gateway_url: str, home: Path) -> dict[str, str]:
    """Exactly the variables that keep Claude Code isolated and offline."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "TMPDIR": str(home / "tmp"),
        "ANTHROPIC_BASE_URL": gateway_url,
        "ANTHROPIC_API_KEY": GATEWAY_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL": "1",
        "IS_SANDBOX": "1",
    }


@dataclass
class ClaudeRun:
    """One finished CLI run."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    result: dict[str, Any] | None
    """The ``--output-format json`` object, or None if stdout was not one."""
    workdir: Path
    home: Path
    seconds: float

    @property
    def text(self) -> str | None:
        """The final answer (``result``)."""
        return None if self.result is None else self.result.get("result")

    @property
    def is_error(self) -> bool:
        """The CLI reported a failure (nonzero exit, ``is_error``, or no result)."""
        return self.returncode != 0 or self.result is None or self.result.get("is_error") is not False

    @property
    def ok(self) -> bool:
        """Exit 0 and a JSON result with ``is_error: false`` and subtype ``success``."""
        return (
            self.returncode == 0
            and self.result is not None
            and self.result.get("is_error") is False
            and self.result.get("subtype") == "success"
        )

    def read(self, name: str) -> bytes:
        """The bytes of a file in the work directory."""
        return (self.workdir / name).read_bytes()

    def describe(self) -> str:
        """Everything useful for an assertion message."""
        return (
            f"claude exited {self.returncode} after {self.seconds:.1f}s\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}\n"
            f"--- work dir --- {sorted(p.name for p in self.workdir.iterdir())}"
        )


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_claude(
    gateway_url: str,
    prompt: str,
    root: Path,
    *,
    model: str = DEFAULT_MODEL,
    max_turns: int = 5,
    timeout: float = DEFAULT_TIMEOUT,
    files: dict[str, str | bytes] | None = None,
    extra_args: Iterable[str] = (),
    env: dict[str, str] | None = None,
    launch: Callable[[list[str]], list[str]] | None = None,
) -> ClaudeRun:
    """Run ``claude -p prompt`` in ``root/work`` with its home in ``root/home``.

    ``files`` are written into the work directory first. ``env`` adds Claude Code
    settings (e.g. ``CLAUDE_CODE_MAX_RETRIES``) to the isolated environment. ``launch``
    turns the CLI's argv into the command that starts it (e.g. ``clasp code``). The CLI gets its own process
    group; after ``timeout`` seconds the whole group is killed and the test fails with
    what the CLI printed. Whatever it left running is killed when it exits.
    """
    binary = claude_binary()
    home = root / "home"
    work = root / "work"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    for name, content in (files or {}).items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    argv = [
        str(binary),
        "-p",
        prompt,
        "--output-format",
        "json",
        "--max-turns",
        str(max_turns),
        "--model",
        model,
        "--dangerously-skip-permissions",
        *extra_args,
    ]
    if launch is not None:
        argv = launch(argv)
    out_path, err_path = root / "claude.stdout", root / "claude.stderr"
    started = time.monotonic()
    # Files, not pipes: a grandchild holding a pipe open cannot stall the harness.
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            argv,
            cwd=work,
            env={**claude_env(gateway_url, home), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            returncode = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            returncode = proc.wait(timeout=10)
            timed_out = True
        finally:
            _kill_group(proc.pid)  # leftovers (shells, watchers) die with the run
    seconds = time.monotonic() - started
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    result: dict[str, Any] | None = None
    try:
        parsed = json.loads(stdout)
        if isinstance(parsed, dict):
            result = parsed
    except ValueError:
        result = None
    run = ClaudeRun(argv, returncode, stdout, stderr, result, work, home, seconds)
    if timed_out:
        pytest.fail(f"claude did not finish within {timeout:.0f}s (process group killed)\n{run.describe()}")
    return run


# --------------------------------------------------------------------------------------
# What went upstream
# --------------------------------------------------------------------------------------


def _find_keys(node: Any, keys: frozenset[str], path: str, found: list[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys:
                found.append(f"{path}.{key}" if path else key)
            _find_keys(value, keys, f"{path}.{key}" if path else key, found)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _find_keys(value, keys, f"{path}.{i}", found)


def check_upstream_body(body: dict[str, Any], *, max_tokens: int | None = 16384) -> None:
    """Assert ``body`` is a clean OpenAI chat body: no Anthropic-only fields anywhere,
    no ``$schema`` in tool parameters, ``max_tokens`` clamped to the model's limit."""
    assert isinstance(body, dict) and body, f"upstream body is not a JSON object: {body!r}"
    extra = set(body) - ALLOWED_TOP_LEVEL
    assert not extra, f"unexpected top-level keys upstream: {sorted(extra)}"
    found: list[str] = []
    _find_keys({k: v for k, v in body.items() if k != "tools"}, ANTHROPIC_ONLY, "", found)
    for i, tool in enumerate(body.get("tools") or []):
        assert tool.get("type") == "function" and set(tool) <= {"type", "function"}, f"tools.{i}: {tool!r}"
        fn = tool["function"]
        assert set(fn) <= {"name", "description", "parameters", "strict"}, f"tools.{i}.function keys: {sorted(fn)}"
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", fn["name"]), f"tools.{i}: bad name {fn['name']!r}"
        params = fn.get("parameters", {})
        # Schema keywords only; a property may legitimately be *named* like a key below.
        _find_keys(params, frozenset({"$schema"}), f"tools.{i}.function.parameters", found)
        _find_keys(
            {k: v for k, v in tool.items() if k != "function"} | {k: v for k, v in fn.items() if k != "parameters"},
            ANTHROPIC_ONLY,
            f"tools.{i}",
            found,
        )
    assert not found, f"Anthropic-only fields leaked upstream: {found}"
    for i, msg in enumerate(body.get("messages") or []):
        assert msg.get("role") in ("system", "user", "assistant", "tool"), f"messages.{i}: role {msg.get('role')!r}"
        content = msg.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                assert part.get("type") in ("text", "image_url", "file"), f"messages.{i}.content.{j}: {part!r}"
    if max_tokens is not None:
        got = body.get("max_tokens", body.get("max_completion_tokens"))
        assert isinstance(got, int) and 0 < got <= max_tokens, f"max_tokens {got!r} not clamped to {max_tokens}"


# --------------------------------------------------------------------------------------
# Scripting the model
# --------------------------------------------------------------------------------------


@dataclass
class Conversation:
    """One main-loop request as the upstream received it (an OpenAI chat body)."""

    body: dict[str, Any]
    recorded: Recorded | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or [])

    @property
    def tool_names(self) -> list[str]:
        return [t.get("function", {}).get("name") for t in self.body.get("tools") or []]

    @property
    def turn(self) -> int:
        """How many assistant messages the history holds: the step to play."""
        return sum(1 for m in self.messages if m.get("role") == "assistant")

    @property
    def assistant_messages(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("role") == "assistant"]

    @property
    def tool_messages(self) -> list[dict[str, Any]]:
        """Every ``role: tool`` message, in order."""
        return [m for m in self.messages if m.get("role") == "tool"]

    @property
    def new_tool_messages(self) -> list[dict[str, Any]]:
        """The tool messages that answer the last assistant message."""
        msgs = self.messages
        last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=-1)
        out = []
        for m in msgs[last + 1 :]:
            if m.get("role") != "tool":
                break
            out.append(m)
        return out

    @property
    def last_tool(self) -> dict[str, Any] | None:
        """The last ``role: tool`` message, if any."""
        tools = self.tool_messages
        return tools[-1] if tools else None

    @property
    def last_tool_content(self) -> str:
        msg = self.last_tool
        if msg is None:
            return ""
        content = msg.get("content")
        if isinstance(content, list):
            return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content if isinstance(content, str) else ""

    def tool_calls(self) -> list[dict[str, Any]]:
        """Every tool call of every assistant message, in order."""
        return [c for m in self.assistant_messages for c in m.get("tool_calls") or []]


Step = Reply | Callable[[Conversation], Reply]


def once(first: Reply, then: Step) -> Callable[[Conversation], Reply]:
    """A step answering ``first`` the first time it is played, ``then`` afterwards
    (e.g. a 429 then the real answer, when the client retries the same request)."""
    played = threading.Event()

    def step(conv: Conversation) -> Reply:
        if not played.is_set():
            played.set()
            return first
        return then(conv) if callable(then) else then

    return step


@dataclass
class ScriptedModel:
    """A ``FakeUpstream.script`` playing ``steps`` for the main loop.

    Each step is a reply or ``fn(conversation) -> reply``. Step ``k`` answers the
    main-loop request holding ``k`` assistant messages. Requests without the Bash tool
    (titles, topic checks, quota probes) get ``side`` and do not move the scenario. A
    request past the last step, or a step that raises, is recorded in ``problems`` and
    answered with text, so the CLI ends promptly and :meth:`check` reports it.
    """

    steps: list[Step]
    side: Reply = field(default_factory=lambda: Text("OK"))
    main: list[Conversation] = field(default_factory=list)
    side_requests: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, body: dict[str, Any], recorded: Recorded) -> Reply:
        conv = Conversation(body, recorded)
        if MAIN_TOOL not in conv.tool_names:
            with self._lock:
                self.side_requests.append(body)
            return self.side
        with self._lock:
            self.main.append(conv)
        k = conv.turn
        if k >= len(self.steps):
            self.problems.append(f"main-loop request with {k} assistant message(s) but only {len(self.steps)} step(s)")
            return Text("(the scripted model has no more steps)")
        step = self.steps[k]
        try:
            return step(conv) if callable(step) else step
        except Exception as exc:  # surfaced by check(); the CLI gets a quick answer
            self.problems.append(f"step {k} raised {type(exc).__name__}: {exc}")
            return Text(f"(step {k} failed)")

    def check(self) -> None:
        """Fail on scenario problems (unexpected requests, broken steps)."""
        assert not self.problems, "scripted model: " + "; ".join(self.problems)

"""The harness itself: a missing CLI fails loudly, a stuck CLI is killed whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clasp_gateway.testing import Hang

from . import claude
from .stack import Stack

pytestmark = pytest.mark.e2e


def test_missing_cli_fails_with_instructions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLASP_CLAUDE_CODE_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(pytest.fail.Exception, match="install-claude-code.sh"):
        claude.claude_binary()


def _processes_in(directory: Path) -> list[int]:
    """Live processes whose working directory is ``directory``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(os.readlink(f"/proc/{entry}/cwd")) == directory:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def test_timeout_kills_the_whole_process_group(stack: Stack, tmp_path: Path) -> None:
    # The upstream never answers; the gateway waits for its first byte, so does the CLI.
    steps = [Hang(20)]
    with pytest.raises(pytest.fail.Exception, match="process group killed"):
        stack.play(tmp_path, "say hi", steps, timeout=4)
    assert _processes_in(tmp_path / "work") == []
    assert len(stack.upstream.requests) >= 1

"""The code stays ruff- and mypy-clean (the house style in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = ["clasp_gateway", *(str(p.parent) for p in sorted(ROOT.glob("plugins/*/clasp_*/__init__.py")))]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff() -> None:
    done = run("ruff", "check", "clasp_gateway", "plugins", "tests", "conftest.py")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy() -> None:
    done = run("mypy", "--no-incremental", *PACKAGES)
    assert done.returncode == 0, done.stdout + done.stderr

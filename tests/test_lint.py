"""The code stays ruff- and mypy-clean (the house style in pyproject.toml).

mypy over every package takes over a minute of one core. When a run collects
:func:`test_mypy`, ``tests/conftest.py`` starts it as soon as collection ends
(:func:`start_mypy`), so it checks the code on the machine's other core while the rest
of the suite runs, and the test only collects its answer.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.background import Background

ROOT = Path(__file__).parent.parent
PACKAGES = ["clasp_gateway", *(str(p.parent) for p in sorted(ROOT.glob("plugins/*/clasp_*/__init__.py")))]
MYPY_TIMEOUT = 900.0
"""Seconds mypy may take on a loaded 2-core machine (~80 s alone)."""
MYPY_NODE = "tests/test_lint.py::test_mypy"


_mypy: Background | None = None


def start_mypy() -> None:
    """Start mypy in the background (``tests/conftest.py``, when the run has collected
    :func:`test_mypy`)."""
    global _mypy
    if _mypy is None:
        _mypy = Background([sys.executable, "-m", "mypy", "--no-incremental", *PACKAGES], cwd=ROOT)


def stop_mypy() -> None:
    """The session ends: a mypy that no test waited for (the run stopped early, ``-x``) is stopped."""
    global _mypy
    if _mypy is not None:
        _mypy.stop()
        _mypy = None


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff() -> None:
    done = run("ruff", "check", "clasp_gateway", "plugins", "tests", "conftest.py")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy() -> None:
    global _mypy
    start_mypy()  # (already running when the session started it)
    assert _mypy is not None
    running, _mypy = _mypy, None
    code, output = running.result(MYPY_TIMEOUT)
    assert code == 0, output

"""Every hook is documented (docstring and docs/plugin_hooks.md) and tested."""

from __future__ import annotations

import inspect
from pathlib import Path

from clasp_gateway import hookspecs

ROOT = Path(__file__).parent.parent
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "clasp_spec")]


def test_there_are_hooks() -> None:
    assert len(HOOKS) >= 10


def test_every_hook_has_a_docstring() -> None:
    assert [h for h in HOOKS if not (getattr(hookspecs, h).__doc__ or "").strip()] == []


def test_every_hook_is_documented() -> None:
    docs = (ROOT / "docs" / "plugin_hooks.md").read_text()
    assert [h for h in HOOKS if f"### {h}\n" not in docs] == []


def test_every_hook_is_tested() -> None:
    tests = "\n".join(p.read_text() for p in ROOT.glob("tests/test_*.py"))
    assert [h for h in HOOKS if f"def {h}(" not in tests] == []

"""The ``prepare_workers`` hook: ``clasp serve`` with several workers enters every
plugin's context manager around the workers' life, in the supervising process, and
exits them in reverse order afterwards (clasp-analytics' workers test runs it for real)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

from clasp_gateway import Config, hookimpl
from clasp_gateway.cli import _prepared_workers
from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import config_from, plugin_manager


class PerRun:
    """Sets a variable the workers would inherit, for the run only."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    @hookimpl
    def prepare_workers(self, config: Config, workers: int) -> Any:
        @contextlib.contextmanager
        def around() -> Iterator[None]:
            os.environ[self.name] = str(workers)
            self.log.append(f"enter {self.name}")
            try:
                yield
            finally:
                del os.environ[self.name]
                self.log.append(f"exit {self.name}")

        return around()


class Nothing:
    @hookimpl
    def prepare_workers(self, config: Config, workers: int) -> Any:
        return None


def test_prepare_workers_wraps_the_workers_life(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "")
    log: list[str] = []
    config = config_from({"models": {}})
    app = create_app(config, plugin_manager(config, [PerRun("CLASP_T_A", log), Nothing(), PerRun("CLASP_T_B", log)]))
    with _prepared_workers(app, config, 3):
        assert os.environ["CLASP_T_A"] == os.environ["CLASP_T_B"] == "3"
    assert "CLASP_T_A" not in os.environ and "CLASP_T_B" not in os.environ
    assert log == ["enter CLASP_T_B", "enter CLASP_T_A", "exit CLASP_T_A", "exit CLASP_T_B"]


def test_an_error_while_serving_still_exits_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "")
    log: list[str] = []
    config = config_from({"models": {}})
    app = create_app(config, plugin_manager(config, [PerRun("CLASP_T_C", log)]))
    with pytest.raises(RuntimeError), _prepared_workers(app, config, 2):
        raise RuntimeError("uvicorn failed")
    assert log == ["enter CLASP_T_C", "exit CLASP_T_C"] and "CLASP_T_C" not in os.environ

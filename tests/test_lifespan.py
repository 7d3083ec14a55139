"""Start-up and shutdown of the app: what a failure part-way leaves behind (nothing)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from clasp_gateway import hookimpl
from clasp_gateway.plugins import PluginManager
from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import config_from, openai_models


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def startup(self, app: Any, config: Any) -> None:
        self.calls.append("startup")

    @hookimpl
    def shutdown(self, app: Any) -> None:
        self.calls.append("shutdown")


class Broken:
    """Starts (or not) as told; its shutdown always fails."""

    def __init__(self, *, start: bool) -> None:
        self.start = start

    @hookimpl
    def startup(self, app: Any, config: Any) -> None:
        if not self.start:
            raise RuntimeError("the database is not there")

    @hookimpl
    def shutdown(self, app: Any) -> None:
        raise RuntimeError("cannot close")


def app_with(*plugins: object) -> Any:
    pm = PluginManager()
    pm.load(entry_points=False)
    for i, plugin in enumerate(plugins):  # pluggy calls the last registered first
        pm.register(plugin, name=f"p{i}")
    config = config_from({"models": openai_models("http://127.0.0.1:9/v1")})
    app = create_app(config, pm)
    return getattr(app, "starlette_app", app)


async def test_a_start_up_failing_part_way_shuts_down_what_had_started(caplog: pytest.LogCaptureFixture) -> None:
    started = Recorder()
    app = app_with(Broken(start=False), started)  # `started` starts first, then Broken fails
    with caplog.at_level(logging.ERROR, logger="clasp.app"), pytest.raises(RuntimeError, match="not there"):
        async with app.router.lifespan_context(app):
            pytest.fail("served after a failed start-up")
    assert started.calls == ["startup", "shutdown"]
    assert app.state.gateway.ready is False
    assert "shutdown of plugin p0 failed: RuntimeError: cannot close" in caplog.text


async def test_one_plugin_failing_at_shutdown_does_not_keep_the_others_from_theirs(
        caplog: pytest.LogCaptureFixture) -> None:
    before, after = Recorder(), Recorder()
    app = app_with(before, Broken(start=True), after)
    with caplog.at_level(logging.ERROR, logger="clasp.app"):
        async with app.router.lifespan_context(app):
            assert app.state.gateway.ready
    assert before.calls == after.calls == ["startup", "shutdown"]
    assert "shutdown of plugin p1 failed" in caplog.text

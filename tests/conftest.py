"""Shared fixtures: environment, fake upstreams, a running gateway.

(Redis-backed tests live with the plugin that uses Redis: plugins/clasp-fallback.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from clasp_gateway.testing import (  # noqa: E402
    FakeUpstream,  # noqa: E402
    GatewayServer,
    config_from,
    openai_models,
)


@pytest.fixture(autouse=True)
def _without_the_fallback_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Core tests assert the core's own error mapping and fallback; the clasp-fallback
    plugin, when installed, retries and rewrites exhausted errors by design (its own
    tests cover that). Every other installed plugin loads as usual."""
    if "CLASP_LOAD_PLUGINS" in os.environ:
        return
    import importlib.metadata

    names = sorted({ep.name for ep in importlib.metadata.entry_points(group="clasp")} - {"fallback"})
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", ",".join(names))


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    """A fake OpenAI upstream."""
    with FakeUpstream("openai") as up:
        yield up


@pytest.fixture
def gateway(upstream: FakeUpstream) -> Iterator[GatewayServer]:
    """A real gateway in front of ``upstream`` serving every model name."""
    with GatewayServer(config_from({"models": openai_models(upstream.base_url)})) as server:
        yield server


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "e2e: drives the real Claude Code CLI")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the two slow background jobs as soon as the run is known to need them, so
    they run on the machine's other core beside the other tests: mypy (~80 s of one core,
    ``tests/test_lint.py``) and the container image's build (~45 s,
    ``tests/test_deploy_image.py``)."""
    from tests import test_deploy_image, test_lint

    if any(item.nodeid == test_lint.MYPY_NODE for item in session.items):
        test_lint.start_mypy()
    if any(item.nodeid.startswith("tests/test_deploy_image.py::") and "image" in getattr(item, "fixturenames", ())
           for item in session.items):
        test_deploy_image.start_build()


def pytest_sessionfinish(session: pytest.Session) -> None:
    from tests import test_deploy_image, test_lint

    test_lint.stop_mypy()
    test_deploy_image.discard_build()

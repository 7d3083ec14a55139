"""Shared fixtures: environment, fake upstreams, a running gateway, real Redis."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from tests.fakes import FakeUpstream  # noqa: E402
from tests.support import GatewayServer, config_from, free_port, openai_models  # noqa: E402


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: the machine's on 6379, restarted if down, else our own server."""
    if not _port_open("127.0.0.1", 6379) and shutil.which("redis-server"):
        subprocess.run(
            ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
             "--save", "", "--appendonly", "no"],
            check=False, capture_output=True,
        )
        for _ in range(50):
            if _port_open("127.0.0.1", 6379):
                break
            time.sleep(0.1)
    if _port_open("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/15"
        return
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        if _port_open("127.0.0.1", port):
            break
        time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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

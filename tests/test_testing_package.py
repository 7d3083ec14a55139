"""clasp_gateway.testing: what a plugin package tests itself with, inside or outside
this repository, at no cost to the gateway at run time."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import clasp_example_tagger
import httpx
import pytest

from clasp_gateway import hookimpl
from clasp_gateway.testing import (
    FakeUpstream,
    GatewayServer,
    RedisServer,
    Text,
    config_from,
    openai_models,
)

ROOT = Path(__file__).parent.parent
TESTING = ROOT / "clasp_gateway" / "testing"
EXAMPLE = ROOT / "plugins" / "clasp-example-tagger"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` for every import statement in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.append((node.lineno, node.module))
    return found


def subprocess_env() -> dict[str, str]:
    """The environment of an installed gateway: every installed plugin loads."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CLASP_LOAD_PLUGINS")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return env


def test_the_helpers_import_nothing_from_the_repository() -> None:
    """The fakes and the gateway fixture are the package's: installed, they work without
    this repository's ``tests`` package."""
    problems = [f"{p.relative_to(ROOT)}:{line}: {name}" for p in sorted(TESTING.rglob("*.py"))
                for line, name in imported_modules(p) if name == "tests" or name.startswith("tests.")]
    assert not problems, problems


def test_no_plugin_test_imports_the_gateway_repository_tests() -> None:
    """Each plugin's tests take the fakes and the gateway fixture from
    ``clasp_gateway.testing``, so the plugin can be tested on its own."""
    files = sorted(ROOT.glob("plugins/*/tests/**/*.py"))
    assert len(files) >= 15, "the plugins' tests were not found"
    problems = [f"{p.relative_to(ROOT)}:{line}: {name}" for p in files
                for line, name in imported_modules(p) if name == "tests" or name.startswith("tests.")]
    assert not problems, problems


@pytest.mark.parametrize("module", ["clasp_gateway.shell.app", "clasp_gateway.cli"])
def test_the_gateway_never_imports_the_testing_package(module: str, tmp_path: Path) -> None:
    """Start-up pays nothing for the test helpers (``python -X importtime``)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert module in imported
    assert not [name for name in imported if name.startswith("clasp_gateway.testing")]


def test_a_served_app_with_every_installed_plugin_never_imports_it(tmp_path: Path) -> None:
    """Neither the core nor an installed plugin imports the helpers when an app is built
    and started."""
    script = (
        "import asyncio, json, sys\n"
        "from clasp_gateway import parse_config\n"
        "from clasp_gateway.shell.app import create_app\n"
        "app = create_app(parse_config({'models': {}}, 'clasp.yaml'))\n"
        "async def main():\n"
        "    async with app.starlette_app.router.lifespan_context(app.starlette_app):\n"
        "        pass\n"
        "asyncio.run(main())\n"
        "print(json.dumps({'plugins': [n for n, _ in app.starlette_app.state.pm.list_name_plugin()],\n"
        "                  'testing': sorted(m for m in sys.modules if m.startswith('clasp_gateway.testing'))}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"claude", "fallback", "example_tagger"} <= set(seen["plugins"])
    assert seen["testing"] == []


def test_a_plugin_tests_itself_outside_the_repository(tmp_path: Path) -> None:
    """The README's example plugin, copied out of this repository, passes its own tests
    with only the installed ``clasp_gateway`` (and its pytest fixtures) importable."""
    copy = tmp_path / "clasp-example-tagger"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {**subprocess_env(), "PYTHONPATH": str(copy)}  # the copy's module, not the installed one

    probe = (
        "import importlib.util, json, sys, clasp_example_tagger, clasp_gateway\n"
        "print(json.dumps({'plugin': clasp_example_tagger.__file__, 'path': sys.path,\n"
        "                  'repository_tests': importlib.util.find_spec('tests.conftest') is not None}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=copy, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout)
    assert Path(seen["plugin"]).is_relative_to(copy)
    assert str(ROOT) not in seen["path"] and not seen["repository_tests"]

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(copy), "tests"],
        cwd=copy, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout, done.stdout[-2000:]


class Events:
    """A plugin object handed to the gateway fixture, not installed."""

    def __init__(self) -> None:
        self.kinds: list[str] = []

    @hookimpl
    def record(self, ctx: Any, event: dict[str, Any]) -> None:
        self.kinds.append(event["kind"])


def test_the_gateway_fixture_registers_plugin_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """``plugins=[...]``: objects join the installed plugins (one already loaded through
    its entry point is not registered twice); with ``app=`` they are refused."""
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "example_tagger")
    events = Events()
    with FakeUpstream("openai") as up:
        up.queue(Text("hello"))
        config = config_from({"models": openai_models(up.base_url)})
        with GatewayServer(config, plugins=[events, clasp_example_tagger]) as server:
            answer = httpx.post(server.base_url + "/v1/chat/completions", headers=server.headers, timeout=10,
                                json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
            assert answer.status_code == 200, answer.text
            pm = server.gateway.pm
            assert pm.get_plugin("example_tagger") is clasp_example_tagger
            assert [p for p in pm.get_plugins() if p is clasp_example_tagger] == [clasp_example_tagger]
        assert "request" in events.kinds
        with pytest.raises(ValueError, match="not both"):
            GatewayServer(config, app=server.app, plugins=[events])


def test_the_redis_fixture(redis_server: RedisServer) -> None:
    """The ``redis_server`` fixture of the pytest plugin: a Redis that answers, and a key
    prefix of the test's own."""
    import redis

    with redis_server.namespace() as ns:
        client = redis.Redis.from_url(ns.url)
        try:
            client.set(ns.prefix + "k", "v")
            assert ns.keys() == [ns.prefix + "k"]
        finally:
            client.close()

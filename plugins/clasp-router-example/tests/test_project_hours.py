"""The example strategy: installed with pip into a temporary folder, then routed through."""

from __future__ import annotations

import calendar
import importlib
import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clasp_gateway.testing import FakeClock, FakeUpstream, GatewayServer, Text, config_from

HERE = Path(__file__).resolve().parents[1]
BATCH_KEY = "sk-clasp-batch-project-0123456789abcdef"
WEB_KEY = "sk-clasp-web-project-0123456789abcdefgh"
TEN_AM = calendar.timegm((2026, 12, 7, 10, 0, 0))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``pip install --no-deps --target`` this package, and put the target on sys.path."""
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--disable-pip-version-check", "--target", str(target), str(HERE)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    old = os.environ.get("CLASP_LOAD_PLUGINS")
    os.environ["CLASP_LOAD_PLUGINS"] = "router,fallback,router_example"
    yield target
    sys.path.remove(str(target))
    if old is None:
        os.environ.pop("CLASP_LOAD_PLUGINS", None)
    else:
        os.environ["CLASP_LOAD_PLUGINS"] = old


def test_pip_installed_strategy_routes_by_project_and_hour(installed: Path) -> None:
    found = [d for d in importlib.metadata.distributions(path=[str(installed)])
             if d.metadata["Name"] == "clasp-router-example"]
    assert found and any(ep.name == "router_example" for ep in found[0].entry_points)
    with FakeUpstream("openai") as best, FakeUpstream("openai") as cheap:
        best.script = lambda body, rec: Text("from best")
        cheap.script = lambda body, rec: Text("from cheap")
        common: dict[str, Any] = {"model": "openai/gpt-4o-mini", "api_key": "sk-upstream-example-1234567890"}
        config = config_from({
            "keys": [{"key": BATCH_KEY, "name": "batch", "project": "batch"},
                     {"key": WEB_KEY, "name": "web", "project": "web"}],
            "router": {"strategy": "project-hours"},
            "models": {"m": [
                {**common, "id": "best", "api_base": best.base_url, "input_cost_per_token": 1e-5},
                {**common, "id": "cheap", "api_base": cheap.base_url, "input_cost_per_token": 1e-8,
                 "output_cost_per_token": 1e-8},
            ]},
        })
        server = GatewayServer(config).start()
        try:
            clock = FakeClock(TEN_AM)
            server.gateway.clock = clock

            def ask(key: str) -> httpx.Response:
                body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
                return httpx.post(server.base_url + "/v1/chat/completions", json=body,
                                  headers={"x-api-key": key}, timeout=10)

            r = ask(WEB_KEY)
            assert r.json()["choices"][0]["message"]["content"] == "from best"
            assert r.headers["x-clasp-route"].startswith("best; strategy=project-hours")
            assert ask(BATCH_KEY).json()["choices"][0]["message"]["content"] == "from cheap"
            clock.advance(10 * 3600)  # 20:00 UTC: everybody cheap
            r = ask(WEB_KEY)
            assert r.json()["choices"][0]["message"]["content"] == "from cheap"
            assert r.headers["x-clasp-project-hours"] == "cheap"
        finally:
            server.stop()

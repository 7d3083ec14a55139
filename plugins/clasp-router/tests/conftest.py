"""Fixtures for the router's tests: real gateways (in this process) over fake upstreams,
with only the router, clasp-fallback and clasp-claude (the Anthropic API) loaded (``CLASP_LOAD_PLUGINS``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from clasp_gateway.testing import GATEWAY_KEY, FakeUpstream, GatewayServer, Text, config_from  # noqa: E402

UPSTREAM_KEY = "sk-upstream-router-test-1234567890"
EU_KEY = "sk-clasp-eu-only-key-0123456789abcdef"
AP_KEY = "sk-clasp-ap-only-key-0123456789abcdef"
KEYS = [
    {"key": GATEWAY_KEY, "name": "tests", "team": "qa"},
    {"key": EU_KEY, "name": "eu", "team": "qa", "regions": ["eu-west-1"]},
    {"key": AP_KEY, "name": "ap", "team": "qa", "regions": ["ap-south-1"]},
]


@pytest.fixture(scope="module", autouse=True)
def only_router() -> Iterator[None]:
    """Load only the router and clasp-fallback (module scope: shared gateways)."""
    old = os.environ.get("CLASP_LOAD_PLUGINS")
    os.environ["CLASP_LOAD_PLUGINS"] = "router,fallback,claude"
    yield
    if old is None:
        os.environ.pop("CLASP_LOAD_PLUGINS", None)
    else:
        os.environ["CLASP_LOAD_PLUGINS"] = old


class Gateway:
    """A running gateway and an httpx client per key."""

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.base_url = server.base_url

    def post(self, path: str, body: dict[str, Any], key: str = GATEWAY_KEY, **headers: str) -> httpx.Response:
        return httpx.post(self.base_url + path, json=body, headers={"x-api-key": key, **headers}, timeout=10)

    def chat(self, model: str, content: Any = "hi", key: str = GATEWAY_KEY, **body: Any) -> httpx.Response:
        payload = {"model": model, "messages": [{"role": "user", "content": content}], **body}
        return self.post("/v1/chat/completions", payload, key)

    @staticmethod
    def text(response: httpx.Response) -> str:
        assert response.status_code == 200, response.text
        return str(response.json()["choices"][0]["message"]["content"])


def deployment(up: FakeUpstream, ident: str, **extra: Any) -> dict[str, Any]:
    """A clasp.yaml deployment at a fake upstream."""
    return {"id": ident, "model": "openai/gpt-4o-mini", "api_base": up.base_url, "api_key": UPSTREAM_KEY,
            "timeouts": {"connect": 1, "first_byte": 2, "idle": 2, "total": 5}, **extra}


@pytest.fixture(scope="module")
def ups() -> Iterator[dict[str, FakeUpstream]]:
    """Four fake upstreams, each answering with its own name."""
    names = ("small", "vision", "big", "asia")
    with FakeUpstream("openai") as a, FakeUpstream("openai") as b, FakeUpstream("openai") as c, \
            FakeUpstream("openai") as d:
        found = dict(zip(names, (a, b, c, d), strict=True))
        for name, up in found.items():
            up.script = (lambda n: lambda body, rec: Text(f"from {n}"))(name)
        yield found


@pytest.fixture(scope="module")
def start() -> Iterator[Callable[..., Gateway]]:
    """``start(models, router={...}, fallback={...})``: a gateway (stopped after the module)."""
    started: list[GatewayServer] = []

    def run(models: dict[str, Any], **sections: Any) -> Gateway:
        config = config_from({"keys": KEYS, "models": models, **sections})
        server = GatewayServer(config).start()
        started.append(server)
        return Gateway(server)

    yield run
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """Constants and helpers for the tests (test folders are not importable packages)."""
    return SimpleNamespace(EU_KEY=EU_KEY, AP_KEY=AP_KEY, UPSTREAM_KEY=UPSTREAM_KEY, deployment=deployment)

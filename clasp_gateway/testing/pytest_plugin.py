"""pytest fixtures for a plugin's tests: a fake upstream and a gateway in a thread.

Registered through the ``pytest11`` entry point of the ``clasp-gateway`` distribution,
so any test in an environment where clasp-gateway is installed can ask for them by
name (``-p no:clasp_gateway`` turns them off)::

    def test_it(fake_upstream, start_gateway):
        gateway = start_gateway({"models": openai_models(fake_upstream.base_url)}, plugins=[my_plugin])
        httpx.post(gateway.base_url + "/v1/chat/completions", headers=gateway.headers, json=...)

The names are this plugin's own (``fake_upstream``, ``start_gateway``, ``redis_server``),
so a project's own fixtures (the gateway repository's ``upstream`` and ``gateway``) are
untouched. It also sets ``LITELLM_LOCAL_MODEL_COST_MAP`` (unless set): LiteLLM then
reads its bundled model catalogue, never the network, so tests run offline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from ..config import Config
from .fakes import FakeUpstream
from .gateway import GatewayServer, StartGateway, config_from
from .processes import RedisServer
from .processes import redis_server as open_redis

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    """A fake OpenAI-compatible provider on 127.0.0.1 (``base_url`` ends in ``/v1``),
    stopped after the test. It answers ``Text("ok")`` unless told otherwise
    (``fake_upstream.queue(Text("hi"), Error(429))``) and records every request
    (``fake_upstream.last.body``). Other providers: ``FakeUpstream("gemini")``..."""
    with FakeUpstream("openai") as upstream:
        yield upstream


@pytest.fixture
def start_gateway() -> Iterator[StartGateway]:
    """Start gateways in threads of this process, all stopped after the test:
    ``start_gateway(config, plugins=[my_plugin])`` with ``config`` a dict, YAML text or
    :class:`~clasp_gateway.Config` (:func:`~clasp_gateway.testing.config_from` adds the
    test key, :data:`~clasp_gateway.testing.GATEWAY_KEY`), ``plugins`` plugin objects
    registered beside the installed ones. Returns the started
    :class:`~clasp_gateway.testing.GatewayServer` (``base_url``, ``headers``,
    ``gateway``)."""
    started: list[GatewayServer] = []

    def start(config: dict[str, Any] | str | Config, *, plugins: list[object] | tuple[object, ...] = ()) -> GatewayServer:
        validated = config_from(config) if isinstance(config, (dict, str)) else config
        server = GatewayServer(validated, plugins=plugins).start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real Redis for the session: the machine's on 127.0.0.1:6379 when it answers,
    else a ``redis-server`` of its own (stopped after). Take a fresh key prefix per test
    with ``with redis_server.namespace() as ns:`` (``ns.url``, ``ns.prefix``)."""
    with open_redis() as server:
        yield server

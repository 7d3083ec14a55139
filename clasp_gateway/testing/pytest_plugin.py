"""pytest fixtures for a plugin's tests: a fake upstream and a gateway in a thread.

Registered through the ``pytest11`` entry point of the ``clasp-gateway`` distribution,
so any test in an environment where clasp-gateway is installed can ask for them by
name (``-p no:clasp_gateway`` turns them off)::

    def test_it(fake_upstream, start_gateway):
        gateway = start_gateway({"models": openai_models(fake_upstream.base_url)}, plugins=[my_plugin])
        httpx.post(gateway.base_url + "/v1/chat/completions", headers=gateway.headers, json=...)

Databases: ``postgres_server`` (session; started when down), ``postgres_url`` and
``sqlite_url`` (a fresh database per test module, dropped after) and ``database_url``
(the same, the module's tests run once per dialect)::

    def test_ledger_writes(database_url, start_gateway):
        gateway = start_gateway({"storage": {"url": database_url}, ...}, plugins=[my_plugin])

The names are this plugin's own (``fake_upstream``, ``start_gateway``, ``redis_server``...),
so a project's own fixtures (the gateway repository's ``upstream`` and ``gateway``) are
untouched. It also sets ``LITELLM_LOCAL_MODEL_COST_MAP`` (unless set): LiteLLM then
reads its bundled model catalogue, never the network, so tests run offline, and points
``CLASP_DATA_DIR`` (unless set) at a directory of the run's own, removed after it, so a
gateway's default SQLite file never lands in the user's home.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from ..config import Config
from .databases import PostgresServer, sqlite_file
from .databases import postgres_server as open_postgres
from .fakes import FakeUpstream
from .gateway import GatewayServer, StartGateway, config_from
from .processes import RedisServer
from .processes import redis_server as open_redis

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

_DATA_DIR = "CLASP_DATA_DIR"
_made_data_dir: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """A data dir for the run (the default SQLite database of a gateway lives there)."""
    if not os.environ.get(_DATA_DIR):
        _made_data_dir.append(tempfile.mkdtemp(prefix="clasp-test-data-"))
        os.environ[_DATA_DIR] = _made_data_dir[-1]


def pytest_unconfigure(config: pytest.Config) -> None:
    while _made_data_dir:
        shutil.rmtree(_made_data_dir.pop(), ignore_errors=True)


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The machine's PostgreSQL for the session (started when it does not answer;
    ``$CLASP_TEST_POSTGRES_URL`` for another). ``with postgres_server.database() as
    url:`` gives a fresh database for one test, dropped after."""
    with open_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh PostgreSQL database for this test module (``postgresql://...``), dropped after it."""
    with postgres_server.database() as url:
        yield url


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh SQLite file for this test module (``sqlite:////...``), removed after it."""
    with sqlite_file(tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh database for this test module, once per dialect: the module's tests run
    on SQLite, then on PostgreSQL (test ids ``[sqlite]``, ``[postgresql]``)."""
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    return url

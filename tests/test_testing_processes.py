"""clasp_gateway.testing.processes: what it starts, it stops; what it is given, it keeps apart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import redis as redis_client

from clasp_gateway.state import StateUnavailable
from clasp_gateway.state.memory import MemoryState
from clasp_gateway.state.sqlite import SqliteState
from clasp_gateway.testing import GATEWAY_KEY, GatewayProcesses, GatewayServer, config_from, redis_answers, redis_server


def test_an_own_redis_server_is_stopped_and_can_be_restarted() -> None:
    with redis_server(own=True) as server:
        assert server.owned and redis_answers(server.host, server.port)
        server.stop()
        assert not redis_answers(server.host, server.port)
        server.restart()
        assert redis_answers(server.host, server.port)
    assert not redis_answers(server.host, server.port)


def test_a_namespace_keeps_tests_apart_and_cleans_up() -> None:
    with redis_server() as server:
        with server.namespace() as first, server.namespace() as second:
            assert first.prefix != second.prefix
            client = redis_client.Redis.from_url(first.url)
            try:
                client.set(first.prefix + "a", "1")
                client.set(second.prefix + "b", "2")
                assert first.keys() == [first.prefix + "a"]
            finally:
                client.close()
        assert first.keys() == [] and second.keys() == []


def test_gateway_processes_start_ready_and_stop() -> None:
    config = {"keys": [{"key": GATEWAY_KEY, "name": "t"}], "models": {}, "server": {"log_level": "info"}}
    with GatewayProcesses(config, count=2, env={"CLASP_LOAD_PLUGINS": ""}) as gateways:
        assert len(gateways) == 2 and gateways[0].port != gateways[1].port
        for gateway in gateways:
            assert httpx.get(gateway.base_url + "/ready", timeout=5).json() == {"status": "ready"}
    assert all(not g.alive() for g in gateways)


def test_a_gateway_that_cannot_start_fails_with_its_log() -> None:
    """A bad ``state:`` section stops ``clasp serve`` with a person-readable message."""
    config = {"models": {}, "state": {"backend": "mongodb"}}
    with pytest.raises(RuntimeError) as info:
        GatewayProcesses(config, env={"CLASP_LOAD_PLUGINS": ""}).start()
    assert "exited with code 2" in str(info.value)
    assert "state.backend: expected one of memory, redis, sqlite, got 'mongodb'" in str(info.value)
    assert "Traceback" not in str(info.value)


def test_the_gateway_opens_and_closes_its_state(tmp_path: Path) -> None:
    with GatewayServer(config_from({"models": {}})) as server:
        state = server.gateway.state
        assert isinstance(state, MemoryState)
    with pytest.raises(StateUnavailable):
        asyncio.run(state.get("k"))
    path = tmp_path / "state.sqlite3"
    with GatewayServer(config_from({"models": {}, "state": {"backend": "sqlite", "url": str(path)}})) as server:
        assert isinstance(server.gateway.state, SqliteState)
        assert path.exists()  # opened at start-up
    with pytest.raises(StateUnavailable):
        asyncio.run(server.gateway.state.get("k"))

"""The retry check and the quality row: the fingerprint swap on every state backend,
the in-process window of the memory state, and a served request's row read back
column by column."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from clasp_analytics.quality import SWAP_TURN, RecentTurns
from clasp_analytics.tables import QUALITY
from sqlalchemy import create_engine, select

from clasp_gateway import StateBackend
from clasp_gateway.state.memory import MemoryState
from clasp_gateway.state.redis import RedisState
from clasp_gateway.state.sqlite import SqliteState
from clasp_gateway.testing import FakeUpstream, StartGateway, Text, load_module, openai_models

support = load_module(Path(__file__).with_name("analytics_support.py"), "clasp_analytics_test_support")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _opened(backend: StateBackend) -> AsyncIterator[StateBackend]:
    await backend.open()
    yield backend
    await backend.close()


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def state(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateBackend]:
    if request.param == "redis":
        with request.getfixturevalue("redis_server").namespace() as ns:
            async for backend in _opened(RedisState(ns.url, prefix=ns.prefix, timeout=2.0)):
                yield backend
        return
    made = MemoryState() if request.param == "memory" else SqliteState(str(tmp_path / "state.sqlite3"))
    async for backend in _opened(made):
        yield backend


async def test_the_swap_answers_the_previous_request_of_the_window(state: StateBackend) -> None:
    key = "analytics:fp:abc"
    assert await state.run(SWAP_TURN, [key], ["req_1", 60_000]) is None
    assert await state.run(SWAP_TURN, [key], ["req_2", 60_000]) == b"req_1"
    assert await state.run(SWAP_TURN, [key], ["req_3", 60_000]) == b"req_2"
    assert await state.run(SWAP_TURN, ["analytics:fp:other"], ["req_4", 60_000]) is None
    assert await state.run(SWAP_TURN, ["analytics:fp:short"], ["req_5", 50]) is None
    await asyncio.sleep(0.2)
    assert await state.run(SWAP_TURN, ["analytics:fp:short"], ["req_6", 50]) is None  # the window passed


def test_recent_turns_remember_a_window_then_forget() -> None:
    clock = Clock(100.0)
    turns = RecentTurns(10.0, clock)
    assert turns.swap("a", "req_1") is None
    clock.now = 105.0
    assert turns.swap("a", "req_2") == "req_1"  # renewed: the window starts again
    assert turns.swap("b", "req_3") is None
    clock.now = 112.0  # a's first note (until 110) has passed, its renewal (until 115) has not
    assert turns.swap("c", "req_4") is None
    assert len(turns) == 3
    assert turns.swap("a", "req_5") == "req_2"
    clock.now = 130.0
    assert turns.swap("d", "req_6") is None
    assert len(turns) == 1  # everything older than the window is gone


@pytest.fixture
def gateway(fake_upstream: FakeUpstream, start_gateway: StartGateway, sqlite_url: str,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "analytics,fallback,claude")
    yield start_gateway({"models": openai_models(fake_upstream.base_url), "storage": {"url": sqlite_url}},
                        plugins=[support.RoleKeys()])


def test_a_served_request_and_its_retry_are_rows_column_by_column(gateway: Any, fake_upstream: FakeUpstream,
                                                                  sqlite_url: str) -> None:
    fake_upstream.queue(Text("one", usage=(5, 1)), Text("two", usage=(5, 1)))
    body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": f"row {time.time()}"}]}
    ids = []
    started = time.time()
    for _ in range(2):
        answer = httpx.post(gateway.base_url + "/v1/chat/completions", json=body, timeout=30,
                            headers={"x-api-key": support.MEMBER_KEY})
        assert answer.status_code == 200
        ids.append(answer.headers["request-id"])
    engine = create_engine(sqlite_url)
    deadline = time.monotonic() + 10  # written in batches, off the hot path (1 s)
    rows: list[Any] = []
    while len(rows) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        with engine.connect() as conn:
            rows = list(conn.execute(select(QUALITY).where(QUALITY.c.request_id.in_(ids))).mappings())
    engine.dispose()
    first, second = sorted(rows, key=lambda r: ids.index(r["request_id"]))
    for row in (first, second):
        assert started - 1 < row["ts"] < time.time()
        assert (row["api"], row["public_model"], row["provider"], row["model"], row["deployment"]) == (
            "openai", "gpt-4o", "openai", "gpt-4o", "openai/gpt-4o")
        assert (row["key_id"], row["key_name"], row["team"], row["project"], row["status"]) == (
            "id_member", "member-key", "red", None, 200)
        assert (row["error"], row["truncated"], row["invalid_tool_json"]) == (False, False, False)
        assert row["request_class"] and len(row["fingerprint"]) == 32
    assert first["fingerprint"] == second["fingerprint"]
    assert (first["retry_of"], second["retry_of"]) == (None, ids[0])

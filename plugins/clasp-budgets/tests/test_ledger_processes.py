"""The ledger across process deaths, with real ``clasp serve`` processes on PostgreSQL:
SIGTERM with rows still queued (the shutdown flush writes them), SIGKILL after
acknowledged batches (they stay), and SIGKILL while the database is down (the spool,
fsync'd, is replayed by the next gateway once the database is back)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from clasp_budgets.ledger import ATTEMPTS, REQUESTS
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from clasp_gateway.testing import GATEWAY_KEY, FakeUpstream, GatewayProcesses, PostgresServer, Text


def count(url: str, table: Any = REQUESTS) -> int:
    async def go() -> int:
        engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
        finally:
            await engine.dispose()

    return asyncio.run(go())


def ids_in(url: str) -> set[str]:
    async def go() -> set[str]:
        engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
        try:
            async with engine.connect() as conn:
                return set((await conn.execute(select(REQUESTS.c.request_id))).scalars())
        finally:
            await engine.dispose()

    return asyncio.run(go())


def config(upstream: FakeUpstream, url: str, spool: Path, **ledger: Any) -> dict[str, Any]:
    return {
        "models": {"m": [{"model": "openai/gpt-4o-mini", "api_base": upstream.base_url, "api_key": "sk-x",
                          "prices": {"input": 1, "output": 2}}]},
        "keys": [{"key": GATEWAY_KEY, "name": "tests", "team": "qa"}],
        "storage": {"url": url},
        "ledger": {"spool_path": str(spool), **ledger},
    }


def ask(base_url: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        response = httpx.post(base_url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                              json={"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}, timeout=30)
        assert response.status_code == 200, response.text
        ids.append(response.headers["request-id"])
    return ids


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


ENV = {"CLASP_LOAD_PLUGINS": None}


def test_sigterm_flushes_the_queued_rows(postgres_server: PostgresServer, tmp_path: Path) -> None:
    with FakeUpstream("openai") as upstream, postgres_server.database() as url:
        upstream.script = lambda body, rec: Text("ok", usage=(30, 3))
        cfg = config(upstream, url, tmp_path / "spool.jsonl", flush_interval="1h", batch_size=100000)
        with GatewayProcesses(cfg, env=ENV) as gateways:
            ids = ask(gateways[0].base_url, 25)
            assert count(url) == 0  # all still queued in memory
            gateways[0].proc.send_signal(signal.SIGTERM)
            # (uvicorn re-raises the signal once its graceful shutdown is done)
            assert gateways[0].proc.wait(timeout=30) in (0, -signal.SIGTERM), gateways[0].log_text()[-3000:]
            assert "ledger closed: 50 row(s) written" in gateways[0].log_text()
        assert ids_in(url) == set(ids) and count(url, ATTEMPTS) == 25
        assert not list(tmp_path.glob("spool.*.jsonl"))  # nothing had to be spooled


def test_sigkill_keeps_acknowledged_batches_and_the_spool(postgres_server: PostgresServer, tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    with FakeUpstream("openai") as upstream:
        upstream.script = lambda body, rec: Text("ok", usage=(30, 3))
        url = postgres_server.create()
        try:
            cfg = config(upstream, url, spool, flush_interval="50ms", retry_interval="200ms", write_timeout="3s")
            # 1. batches the database acknowledged survive a SIGKILL
            with GatewayProcesses(cfg, env=ENV) as gateways:
                written = ask(gateways[0].base_url, 10)
                wait_for(lambda: count(url) == 10, "10 rows written")
                os.killpg(gateways[0].proc.pid, signal.SIGKILL)
                gateways[0].proc.wait(timeout=10)
            assert ids_in(url) == set(written)
            # 2. the database goes away: rows go to the spool (fsync'd); then SIGKILL
            with GatewayProcesses(cfg, env=ENV) as gateways:
                postgres_server.drop(url)
                spooled = ask(gateways[0].base_url, 8)

                def spooled_lines() -> int:
                    return sum(len(p.read_bytes().splitlines()) for p in tmp_path.glob("spool.*.jsonl"))

                wait_for(lambda: spooled_lines() == 16, "16 rows spooled")  # 8 requests + 8 attempts
                os.killpg(gateways[0].proc.pid, signal.SIGKILL)
                gateways[0].proc.wait(timeout=10)
                assert "database is unavailable" in gateways[0].log_text()
            # 3. the database is back (empty): the next gateway replays the dead one's spool
            postgres_server.create(url.rsplit("/", 1)[1])
            with GatewayProcesses(cfg, env=ENV) as gateways:
                wait_for(lambda: count(url) == 8, "the spool replayed")
                assert ids_in(url) == set(spooled) and count(url, ATTEMPTS) == 8
                wait_for(lambda: not list(tmp_path.glob("spool.*.jsonl")), "the spool deleted")
                assert "spool(s) left by stopped processes" in gateways[0].log_text()
        finally:
            postgres_server.drop(url)

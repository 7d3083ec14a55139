"""Retention and deletion of ledger rows in a running gateway, on SQLite and
PostgreSQL: a team's rows deleted on demand (admin route, audited in ``audit_log``),
old rows by the retention job in batches, and on PostgreSQL one replica at a time
(the advisory lock)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from clasp_budgets.keys.tables import AUDIT
from clasp_budgets.ledger import ATTEMPTS, REQUESTS
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from clasp_gateway.retention import LOCK_KEY
from clasp_gateway.testing import FakeUpstream, GatewayServer, config_from

ADMIN = "clasp-admin-key-0123456789"
QA = "clasp-qa-key-0123456789abc"
ML = "clasp-ml-key-0123456789abc"


def async_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1).replace("sqlite:///", "sqlite+aiosqlite:///", 1)


def started_round(server: GatewayServer) -> None:
    """Wait for the retention round the gateway runs at start-up (so it cannot run later,
    in the middle of the test)."""
    job = server.gateway.pm.get_plugin("clasp_gateway.retention")
    deadline = time.monotonic() + 10
    while job.rounds < 1:
        assert time.monotonic() < deadline, "no retention round at start-up"
        time.sleep(0.01)


def run(url: str, *statements: Any) -> list[list[dict[str, Any]]]:
    async def go() -> list[list[dict[str, Any]]]:
        engine = create_async_engine(async_url(url))
        out = []
        try:
            async with engine.begin() as conn:
                for statement in statements:
                    result = await conn.execute(statement)
                    out.append([dict(r) for r in result.mappings().all()] if result.returns_rows else [])
        finally:
            await engine.dispose()
        return out

    return asyncio.run(go())


def old_rows(n: int, ts: float) -> list[dict[str, Any]]:
    return [{"request_id": f"old-{i}", "ts": ts, "team": "qa", "key_id": "k-old", "status": 200} for i in range(n)]


def test_deletion_on_demand_and_by_age(database_url: str, tmp_path: Any) -> None:
    with FakeUpstream("openai") as upstream:
        config = config_from({
            "models": {"m": [{"model": "openai/gpt-4o-mini", "api_base": upstream.base_url, "api_key": "sk-x"}]},
            "keys": [{"key": QA, "name": "qa-key", "team": "qa"}, {"key": ML, "name": "ml-key", "team": "ml"},
                     {"key": ADMIN, "name": "root", "role": "admin"}],
            "storage": {"url": database_url},
            "ledger": {"flush_interval": "1h", "spool_path": str(tmp_path / "spool.jsonl")},
            "retention": {"max_age": {"ledger": "30d"}, "batch": 7},
        })
        server = GatewayServer(config).start()
        try:
            started_round(server)
            for key in (QA, QA, ML):
                answer = httpx.post(server.base_url + "/v1/chat/completions", headers={"x-api-key": key},
                                    json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
                assert answer.status_code == 200
            # Queued, not yet written (flush_interval 1h): the deletion flushes first.
            deleted = httpx.post(server.base_url + "/admin/data/delete", headers={"x-api-key": ADMIN},
                                 json={"team": "qa"})
            assert deleted.status_code == 200 and deleted.json()["deleted"]["ledger"] == 2
            rows, attempts, audit = run(database_url, select(REQUESTS), select(ATTEMPTS),
                                        select(AUDIT).where(AUDIT.c.action == "data.delete"))
            assert [r["team"] for r in rows] == ["ml"]
            assert {a["request_id"] for a in attempts} == {rows[0]["request_id"]}
            assert audit[0]["actor_name"] == "admin:root" and audit[0]["target"] == "team:qa"
            assert audit[0]["details"]["ledger_requests"] == 2

            # By age: 20 rows 40 days old (in batches of 7) go, recent ones stay.
            month_ago = time.time() - 40 * 86400
            run(database_url, insert(REQUESTS).values(old_rows(20, month_ago)),
                insert(ATTEMPTS).values([{"request_id": f"old-{i}", "attempt": 1, "ts": month_ago, "ok": True}
                                         for i in range(20)] + [{"request_id": "orphan", "attempt": 1,
                                                                  "ts": month_ago, "ok": False}]))
            counts = httpx.post(server.base_url + "/admin/data/retention", headers={"x-api-key": ADMIN}).json()
            assert counts == {"deleted": {"ledger": 20}}
            rows, attempts = run(database_url, select(REQUESTS), select(ATTEMPTS))
            assert [r["team"] for r in rows] == ["ml"] and len(attempts) == 1
        finally:
            server.stop()


def test_only_one_replica_deletes_at_a_time_on_postgresql(postgres_url: str, tmp_path: Any) -> None:
    config = config_from({"models": {}, "storage": {"url": postgres_url},
                          "keys": [{"key": ADMIN, "name": "root", "role": "admin"}],
                          "ledger": {"spool_path": str(tmp_path / "spool.jsonl")},
                          "retention": {"max_age": {"ledger": "30d"}}})
    server = GatewayServer(config).start()
    url = server.base_url + "/admin/data/retention"
    try:
        started_round(server)
        run(postgres_url, insert(REQUESTS).values(old_rows(3, time.time() - 40 * 86400)))

        async def while_another_replica_holds_the_lock() -> Any:
            engine = create_async_engine(async_url(postgres_url))
            try:
                async with engine.connect() as conn, httpx.AsyncClient() as client:
                    assert (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY})).scalar()
                    try:
                        return (await client.post(url, headers={"x-api-key": ADMIN})).json()
                    finally:
                        await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
            finally:
                await engine.dispose()

        assert asyncio.run(while_another_replica_holds_the_lock()) == {"deleted": {}}
        assert len(run(postgres_url, select(REQUESTS).where(REQUESTS.c.request_id.like("old-%")))[0]) == 3
        assert httpx.post(url, headers={"x-api-key": ADMIN}).json() == {"deleted": {"ledger": 3}}
    finally:
        server.stop()


def test_a_key_selection_leaves_other_keys(sqlite_url: str, tmp_path: Any) -> None:
    config = config_from({"models": {}, "storage": {"url": sqlite_url},
                          "keys": [{"key": ADMIN, "name": "root", "role": "admin"}],
                          "ledger": {"spool_path": str(tmp_path / "spool.jsonl")}})
    server = GatewayServer(config).start()
    try:
        now = time.time()
        run(sqlite_url, text("DELETE FROM ledger_requests"),
            insert(REQUESTS).values([{"request_id": f"r{i}", "ts": now - i * 86400, "key_id": f"k{i % 2}",
                                      "team": "t", "status": 200} for i in range(10)]))
        cut = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 4.5 * 86400))
        answer = httpx.post(server.base_url + "/admin/data/delete", headers={"x-api-key": ADMIN},
                            json={"key": "k1", "before": cut})
        assert answer.json()["deleted"]["ledger"] == 3  # r5, r7, r9
        left = {r["request_id"] for r in run(sqlite_url, select(REQUESTS))[0]}
        assert left == {f"r{i}" for i in range(10)} - {"r5", "r7", "r9"}
    finally:
        server.stop()

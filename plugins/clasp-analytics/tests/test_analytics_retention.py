"""Analytics rows (quality rows and feedback) deleted by team, key and age, on SQLite
and PostgreSQL (``register_data_stores``: ``analytics``), through the admin API."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from clasp_analytics.tables import FEEDBACK, QUALITY
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import create_async_engine

from clasp_gateway.testing import GatewayServer, config_from

ADMIN = {"x-api-key": "clasp-admin-key-0123456789"}


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
        engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1)
                                     .replace("sqlite:///", "sqlite+aiosqlite:///", 1))
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


def quality(request_id: str, ts: float, team: str, key: str) -> dict[str, Any]:
    return {"request_id": request_id, "ts": ts, "team": team, "key_id": key, "status": 200, "error": False,
            "truncated": False, "invalid_tool_json": False}


def feedback(request_id: str, ts: float, key: str) -> dict[str, Any]:
    return {"request_id": request_id, "ts": ts, "key_id": key, "by_admin": False, "score": 1.0, "metrics": {}}


def test_feedback_and_quality_rows_by_team_key_and_age(database_url: str) -> None:
    config = config_from({"models": {}, "storage": {"url": database_url},
                          "keys": [{"key": ADMIN["x-api-key"], "name": "root", "role": "admin"}],
                          "retention": {"max_age": {"analytics": "30d"}, "batch": 2}})
    with GatewayServer(config) as server:
        started_round(server)
        now, old = time.time(), time.time() - 40 * 86400
        run(database_url, delete(FEEDBACK), delete(QUALITY),
            insert(QUALITY).values([quality("qa-1", now, "qa", "k1"), quality("ml-1", now, "ml", "k2"),
                                    quality("ml-old", old, "ml", "k2"), quality("ml-2", now, "ml", "k3")]),
            insert(FEEDBACK).values([feedback("qa-1", now, "k9"), feedback("ml-1", now, "k2"),
                                     feedback("ml-old", old, "k2"), feedback("ml-2", now, "k3"),
                                     feedback("ml-2", old, "k3")]))
        url = server.base_url + "/admin/data/delete"
        # A team's feedback is found through its requests' quality rows (feedback has no team).
        assert httpx.post(url, headers=ADMIN, json={"team": "qa"}).json()["deleted"]["analytics"] == 2
        assert httpx.post(url, headers=ADMIN, json={"key": "k3"}).json()["deleted"]["analytics"] == 3
        rounds = httpx.post(server.base_url + "/admin/data/retention", headers=ADMIN).json()
        assert rounds == {"deleted": {"analytics": 2}}  # ml-old's quality row and feedback
        left_quality, left_feedback = run(database_url, select(QUALITY.c.request_id), select(FEEDBACK.c.request_id))
        assert [r["request_id"] for r in left_quality] == ["ml-1"]
        assert [r["request_id"] for r in left_feedback] == ["ml-1"]

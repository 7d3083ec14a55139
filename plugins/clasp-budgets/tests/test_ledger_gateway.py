"""The ledger in a running gateway, on SQLite and PostgreSQL: every request and
attempt lands as a row with what the request event says (key, team, tags, usage,
cost, prompt fingerprint), a cut stream with its partial usage, and rows queued at
shutdown are flushed by the ``shutdown`` hook (the path SIGTERM takes)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from clasp_budgets.ledger import ATTEMPTS, REQUESTS
from clasp_budgets.ledger.settings import parse_settings
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from clasp_gateway import ConfigError, RequestContext, hookimpl
from clasp_gateway.testing import Cut, FakeUpstream, GatewayServer, Text, config_from

PRICES = {"input": 1, "output": 2}  # USD per million tokens


class Tags:
    """What the keys plugin does: the user and the tags of the request."""

    @hookimpl(tryfirst=True)
    def before_call(self, ctx: RequestContext, request: Any) -> None:
        ctx.user, ctx.tags = "alice", {"feature": "ledger"}


def async_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1).replace("sqlite:///", "sqlite+aiosqlite:///", 1)


def read(url: str, table: Any = REQUESTS) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(select(table))).mappings().all()
                return [dict(r) for r in rows]
        finally:
            await engine.dispose()

    return asyncio.run(go())


def post(server: GatewayServer, api: str, text: str, *, stream: bool) -> httpx.Response:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": text}], "stream": stream}
    if api == "anthropic":
        body["max_tokens"] = 100
        return httpx.post(server.base_url + "/v1/messages", json=body, headers=server.headers, timeout=30)
    return httpx.post(server.base_url + "/v1/chat/completions", json=body, headers=server.headers, timeout=30)


def test_rows_of_served_cut_and_repeated_requests(database_url: str, tmp_path: Any) -> None:
    with FakeUpstream("openai") as upstream:
        config = config_from({
            "models": {"m": [{"id": "dep-a", "model": "openai/gpt-4o-mini", "api_base": upstream.base_url,
                              "api_key": "sk-x", "region": "eu-west-1", "prices": PRICES}]},
            "storage": {"url": database_url},
            # nothing is written before shutdown: the flush at shutdown writes it all
            "ledger": {"flush_interval": "1h", "batch_size": 10000, "spool_path": str(tmp_path / "spool.jsonl")},
        })
        server = GatewayServer(config, plugins=[Tags()]).start()
        try:
            upstream.queue(Text("hello there", usage=(100, 10)), Text("hello there", usage=(100, 10)),
                           Text("streamed answer", usage=(50, 20)),
                           Cut(Text("a long answer that will be cut " * 20, chunk_size=8), after_chunks=6))
            first = post(server, "anthropic", "same prompt", stream=False)
            again = post(server, "anthropic", "same prompt", stream=False)
            streamed = post(server, "openai", "another prompt", stream=True)
            cut = post(server, "anthropic", "a prompt whose answer is cut", stream=True)
            for response in (first, again, streamed, cut):
                assert response.status_code == 200, response.text
            runtime = server.app.starlette_app.state.ledger
            assert runtime.writer.backlog == 8  # 4 requests + 4 attempts, all still in memory
        finally:
            server.stop()
    url = async_url(database_url)
    rows = {r["request_id"]: r for r in read(url)}
    ids = [r.headers["request-id"] for r in (first, again, streamed, cut)]
    assert set(ids) <= set(rows)
    one = rows[ids[0]]
    assert (one["api"], one["public_model"], one["deployment"], one["provider"], one["model"]) == (
        "anthropic", "m", "dep-a", "openai", "gpt-4o-mini")
    assert one["key_name"] == "tests" and one["team"] == "qa" and one["user_id"] == "alice"
    assert one["tags"] == {"feature": "ledger"} and one["region"] == "eu-west-1"
    assert (one["input_tokens"], one["output_tokens"], one["status"]) == (100, 10, 200)
    assert one["cost_usd"] == pytest.approx((100 * 1 + 10 * 2) / 1e6)
    assert one["cut"] is False and one["stream"] is False and one["attempts"] == 1 and one["retries"] == 0
    assert one["duration_ms"] > 0 and one["cache_hit"] is None and one["saved_usd"] == 0.0
    # the same prompt twice: one fingerprint (a hash, 64 hex digits, never the text)
    assert one["prompt_hash"] == rows[ids[1]]["prompt_hash"] != rows[ids[2]]["prompt_hash"]
    assert len(one["prompt_hash"]) == 64 and "same prompt" not in str(one)
    assert rows[ids[2]]["stream"] is True and rows[ids[2]]["output_tokens"] == 20
    cut_row = rows[ids[3]]
    assert cut_row["cut"] is True and cut_row["output_tokens"] > 0  # the partial usage, estimated from what came
    assert cut_row["cost_usd"] is not None and cut_row["cost_usd"] > 0
    attempts = {(a["request_id"], a["attempt"]): a for a in read(url, ATTEMPTS)}
    assert all((i, 1) in attempts for i in ids)
    attempt = attempts[(ids[0], 1)]
    assert attempt["ok"] is True and attempt["deployment"] == "dep-a" and attempt["region"] == "eu-west-1"
    assert attempt["cost_usd"] == pytest.approx(one["cost_usd"]) and attempt["input_tokens"] == 100
    assert attempts[(ids[3], 1)]["ok"] is False  # the cut ended the attempt with an error


def test_the_ledger_can_be_turned_off(sqlite_url: str) -> None:
    config = config_from({"models": {}, "storage": {"url": sqlite_url}, "ledger": {"enabled": False}})
    with GatewayServer(config) as server:
        assert getattr(server.app.starlette_app.state, "ledger", None) is None


def test_ledger_settings_are_checked() -> None:
    config = config_from({"models": {}})
    config.raw["ledger"] = {"batch_sise": 5, "spool_max_bytes": "lots"}
    with pytest.raises(ConfigError) as caught:
        parse_settings(config)
    text = str(caught.value)
    assert "ledger.batch_sise" in text and "did you mean" in text and "ledger.spool_max_bytes" in text

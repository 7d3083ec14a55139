"""Graceful drain on SIGTERM, with real ``clasp serve`` processes: the listening socket
closes at once, streams in flight finish (up to ``server.drain_seconds``, then they are
cut), the ledger flushes after them (its rows include theirs), and the exit status is 0.
The app's side (``/ready`` 503, a retryable 503 for a request that still arrives on an
open connection) is checked in-process, where it can be timed exactly."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from clasp_gateway.shell.app import create_app
from clasp_gateway.shell.reload import ServingApp
from clasp_gateway.testing import GATEWAY_KEY, FakeUpstream, GatewayProcesses, Hang, Text, config_from

HEADERS = {"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"}
ENV = {"CLASP_LOAD_PLUGINS": "claude,budgets_ledger"}


def gateway_config(upstream: FakeUpstream, db: Path, **server: Any) -> dict[str, Any]:
    return {
        "server": {"log_level": "info", **server},
        "models": {"m": [{"model": "openai/gpt-4o-mini", "api_base": upstream.base_url, "api_key": "sk-x",
                          "prices": {"input": 1, "output": 2}}]},
        "keys": [{"key": GATEWAY_KEY, "name": "drain", "team": "qa"}],
        "storage": {"url": f"sqlite:///{db}"},
        # Rows stay queued until the shutdown flush: the drain must finish the streams first.
        "ledger": {"flush_interval": "1h", "batch_size": 100000, "spool_path": str(db.parent / "spool.jsonl")},
    }


def stream_in_thread(base_url: str, results: list[dict[str, Any]], started: threading.Event) -> threading.Thread:
    def run() -> None:
        outcome: dict[str, Any] = {"text": "", "events": [], "error": None}
        try:
            with httpx.Client(timeout=30) as client, client.stream(
                "POST", base_url + "/v1/messages", headers=HEADERS,
                json={"model": "m", "max_tokens": 200, "stream": True,
                      "messages": [{"role": "user", "content": "tell me"}]},
            ) as response:
                outcome["status"] = response.status_code
                outcome["request_id"] = response.headers.get("request-id")
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        outcome["events"].append(line[7:])
                        started.set()
                    elif '"text_delta"' in line:
                        outcome["text"] += line.split('"text":"', 1)[1].split('"', 1)[0]
        except httpx.HTTPError as exc:
            outcome["error"] = repr(exc)
        results.append(outcome)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def ledger_ids(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT request_id FROM ledger_requests")}


def test_sigterm_finishes_streams_then_flushes_and_exits_0(tmp_path: Path) -> None:
    db = tmp_path / "clasp.db"
    with FakeUpstream("openai") as upstream:
        text = "abcdefghij" * 6
        upstream.script = lambda body, rec: Text(text, chunk_size=2, chunk_delay=0.05, usage=(20, 30))  # ~1.5 s
        with GatewayProcesses(gateway_config(upstream, db, drain_seconds=20), env=ENV) as gateways:
            gateway = gateways[0]
            results: list[dict[str, Any]] = []
            events = [threading.Event() for _ in range(3)]
            threads = [stream_in_thread(gateway.base_url, results, e) for e in events]
            for event in events:
                assert event.wait(20), gateway.log_text()[-3000:]
            gateway.proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            time.sleep(0.4)  # uvicorn's main loop ticks every 0.1 s
            with pytest.raises(httpx.ConnectError):  # no new connection is accepted while draining
                httpx.get(gateway.base_url + "/ready", timeout=2)
            for thread in threads:
                thread.join(30)
            assert gateway.proc.wait(timeout=30) == 0, gateway.log_text()[-3000:]
            took = time.monotonic() - sent
            log = gateway.log_text()
    assert len(results) == 3
    for outcome in results:  # every stream in flight ran to its end
        assert outcome["error"] is None and outcome["status"] == 200, outcome
        assert outcome["text"] == text and outcome["events"][-1] == "message_stop", outcome
    assert took < 15
    # The order: draining, then the ledger flush, which wrote the streams' rows.
    assert log.index("SIGTERM: draining") < log.index("ledger closed: 6 row(s) written"), log[-3000:]
    assert ledger_ids(db) == {outcome["request_id"] for outcome in results}


def test_the_drain_deadline_cuts_a_stream_that_does_not_end(tmp_path: Path) -> None:
    db = tmp_path / "clasp.db"
    with FakeUpstream("openai") as upstream:
        upstream.script = lambda body, rec: Hang(60, reply=Text("never ends", chunk_size=2), after_chunks=2)
        with GatewayProcesses(gateway_config(upstream, db, drain_seconds=1), env=ENV) as gateways:
            gateway = gateways[0]
            results: list[dict[str, Any]] = []
            started = threading.Event()
            thread = stream_in_thread(gateway.base_url, results, started)
            assert started.wait(20), gateway.log_text()[-3000:]
            gateway.proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            assert gateway.proc.wait(timeout=20) == 0, gateway.log_text()[-3000:]
            took = time.monotonic() - sent
            thread.join(10)
            log = gateway.log_text()
    assert 0.9 < took < 10, took
    assert "timeout graceful shutdown exceeded" in log and "ledger closed" in log, log[-3000:]
    assert results and results[0]["events"][-1] != "message_stop"  # cut, not finished


def test_while_draining_ready_is_503_and_requests_are_refused_retryably() -> None:
    config = config_from({"models": {"m": [{"model": "openai/gpt-4o-mini", "api_base": "http://127.0.0.1:9",
                                            "api_key": "sk-x"}]}})
    serving = ServingApp(create_app(config, load_plugins=False))

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=serving)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            assert (await client.get("/health")).status_code == 200
            serving.begin_drain("SIGTERM")
            ready = await client.get("/ready")
            assert ready.status_code == 503 and ready.json() == {"status": "draining"}
            assert (await client.get("/health")).status_code == 200  # alive, just not taking work
            answer = await client.post("/v1/messages", headers=HEADERS, json={"model": "m", "max_tokens": 5,
                                                                               "messages": []})
            assert answer.status_code == 503 and answer.headers["connection"] == "close"
            assert answer.headers["x-should-retry"] == "true"
            assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "overloaded_error"
            openai = await client.post("/v1/chat/completions", headers=HEADERS, json={"model": "m", "messages": []})
            assert openai.status_code == 503 and openai.headers["connection"] == "close"
            assert openai.json()["error"]["type"] == "service_unavailable" and "type" not in openai.json()  # OpenAI's

    asyncio.run(scenario())

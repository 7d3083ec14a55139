"""Alerts: anomalies against each subject's own usual (a clock the test moves), webhook
delivery (retries bounded, secret headers by reference, never in the log), and budget
thresholds delivered exactly once from two gateway processes sharing Redis."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from clasp_budgets.alerts.anomaly import AnomalyDetector
from clasp_budgets.alerts.settings import AnomalySettings, WebhookSettings
from clasp_budgets.alerts.webhook import AlertSender

from clasp_gateway.testing import AppThread, FakeClock, FakeUpstream, GatewayProcesses, Text
from clasp_gateway.testing.processes import RedisServer

SECRET = "hook-secret-4c1d9f0a7e"


class Receiver:
    """A webhook receiver on loopback: records deliveries, fails the first ``fail``."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.lock = threading.Lock()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self.lock:
            if self.fail:
                self.fail -= 1
                return web.Response(status=503)
            self.received.append((dict(request.headers), body))
        return web.Response(text="ok")

    def wait_for(self, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= n:
                    return [b for _, b in self.received]
            time.sleep(0.02)
        with self.lock:
            return [b for _, b in self.received]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    hook = Receiver(fail=1)
    thread = AppThread(hook.app, name="webhook")
    port = thread.start()
    yield hook, f"http://127.0.0.1:{port}/hook"
    thread.stop()


def test_a_spend_spike_far_above_its_usual_is_an_anomaly() -> None:
    clock = FakeClock(60.0 * 1000)
    detector = AnomalyDetector(AnomalySettings(warmup_minutes=5, min_spend_usd=1.0, factor=5), clock=clock)
    found: list[dict[str, Any]] = []
    for _ in range(10):  # ten minutes of $0.50 a minute for team platform; $0.01 for team quiet
        for _ in range(5):
            found += detector.observe({"team": "platform", "model": "gpt-4o"}, 0.1, False)
        found += detector.observe({"team": "quiet"}, 0.01, False)
        clock.advance(60)
    assert found == []
    for _ in range(40):  # a runaway minute: $4 for platform, $0.90 for quiet (90x its usual, under the floor)
        found += detector.observe({"team": "platform"}, 0.1, False)
    for _ in range(9):
        found += detector.observe({"team": "quiet"}, 0.1, False)
    clock.advance(60)
    found += detector.tick()
    spend = [a for a in found if a["metric"] == "spend_per_minute"]
    assert [(a["dimension"], a["subject"]) for a in spend] == [("team", "platform")]
    assert spend[0]["value"] == pytest.approx(4.0) and spend[0]["usual"] < 0.6


def test_an_error_rate_far_above_its_usual_is_an_anomaly_and_warmup_holds_back() -> None:
    clock = FakeClock(0.0)
    detector = AnomalyDetector(AnomalySettings(warmup_minutes=3, min_errors=5), clock=clock)
    for minute in range(6):
        errors = 20 if minute == 1 else 1  # a bad minute during warm-up: not reported
        found = [detector.observe({"model": "gpt-4o"}, 0.0, i < errors) for i in range(40)]
        clock.advance(60)
        assert detector.tick() == [] and not any(found)
    for i in range(40):
        detector.observe({"model": "gpt-4o"}, 0.0, i < 30)
    clock.advance(60)
    [alert] = detector.tick()
    assert alert["metric"] == "error_rate" and alert["value"] == pytest.approx(0.75) and alert["errors"] == 30


async def test_webhook_retries_and_sends_secret_headers_it_never_logs(
    receiver: tuple[Receiver, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    hook, url = receiver
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    sender = AlertSender(WebhookSettings(url=url, headers={"authorization": "${HOOK_SECRET}"}, timeout=5, retries=2),
                         base_delay=0.01)
    await sender.start()
    sender.send({"kind": "budget_threshold", "budget": "b", "threshold_pct": 50.0})
    await sender.close(drain=10)
    assert sender.delivered == 1 and sender.failed == 0
    [(headers, body)] = hook.received  # the first try got a 503, the retry went through
    assert headers["Authorization"] == SECRET and body["budget"] == "b"
    assert SECRET not in caplog.text


def test_thresholds_reach_the_webhook_once_from_two_processes(
    receiver: tuple[Receiver, str], redis_server: RedisServer, sqlite_url: str,
) -> None:
    hook, url = receiver
    hook.fail = 0
    with FakeUpstream("openai") as upstream, redis_server.namespace() as ns:
        upstream.script = lambda body, rec: Text("hi", usage=(100, 50))  # $0.0006 each
        config = {
            "keys": [{"key": "alerts-key-0123456789abcdef", "name": "a", "team": "qa"}],
            "models": {"gpt-4o": [{"model": "openai/gpt-4o", "api_base": upstream.base_url, "api_key": "sk-x",
                                   "input_cost_per_token": 1e-6, "output_cost_per_token": 1e-5}]},
            "permissions": {"enabled": False},
            "storage": {"url": sqlite_url},
            "state": {"backend": "redis", "url": ns.url, "prefix": ns.prefix, "timeout": "2s"},
            "budgets": {"limits": [{"name": "watched", "usd": 0.006, "mode": "soft"}]},
            "alerts": {"webhook": {"url": url, "retries": 1}, "anomaly": {"enabled": False}},
        }
        with GatewayProcesses(config, count=2, env={"CLASP_LOAD_PLUGINS": "budgets_budgets,budgets_alerts"}) as gws:
            with httpx.Client(timeout=30) as client:
                for i in range(12):  # $0.0072 of $0.006 over both processes: 50, 80 and 100% crossed
                    answer = client.post(gws[i % 2].base_url + "/v1/chat/completions",
                                         headers={"authorization": "Bearer alerts-key-0123456789abcdef"},
                                         json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
                    assert answer.status_code == 200
            delivered = hook.wait_for(3)
            time.sleep(0.3)  # (only to let a duplicate show itself; the assertion does not depend on timing)
    thresholds = sorted(b["threshold_pct"] for b in delivered if b["kind"] == "budget_threshold")
    assert thresholds == [50.0, 80.0, 100.0], json.dumps(delivered)
    assert len(hook.received) == 3

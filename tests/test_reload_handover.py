"""What plugins keep across a reload (:class:`clasp_gateway.Handover`): its rules, and
the Prometheus counters of clasp-analytics, which must never go backwards at a reload
(``rate()`` would read a counter reset)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from clasp_gateway import Handover
from clasp_gateway.shell.app import create_app
from clasp_gateway.shell.reload import ServingApp, _Lifespan, load_checked
from clasp_gateway.testing import GATEWAY_KEY, FakeUpstream, Text

HEADERS = {"x-api-key": GATEWAY_KEY}


def test_an_object_is_kept_while_its_fingerprint_is_equal_and_closed_by_its_last_user() -> None:
    handover = Handover()
    built: list[dict[str, int]] = []

    def build() -> dict[str, int]:
        built.append({"n": len(built)})
        return built[-1]

    first = handover.adopt("p.thing", ("a", 1), build)
    second = handover.adopt("p.thing", ("a", 1), build)  # the reloaded configuration
    assert second is first and len(built) == 1
    assert handover.release("p.thing", first) is False  # the replaced configuration retires
    third = handover.adopt("p.thing", ("a", 1), build)
    assert third is first
    dropped: list[Any] = []
    changed = handover.adopt("p.thing", ("a", 2), build, replaced=dropped.append)
    assert changed is not first and dropped == [first] and len(built) == 2
    assert handover.release("p.thing", first) is True  # replaced: its last holder closes it
    assert handover.release("p.thing", changed) is True and "p.thing" not in handover
    assert handover.release("p.unknown", object()) is True


def test_a_configuration_that_fails_to_start_is_undone_whole() -> None:
    handover = Handover()
    running = handover.adopt("p.thing", 1, dict)
    dropped: list[Any] = []
    handover.begin()
    newer = handover.adopt("p.thing", 2, dict, replaced=dropped.append)
    assert newer is not running and dropped == []  # not before the new configuration serves
    handover.rollback()
    assert handover.adopt("p.thing", 1, dict) is running and dropped == []
    assert handover.release("p.thing", running) is False
    handover.begin()
    newer = handover.adopt("p.thing", 2, dict, replaced=dropped.append)
    handover.commit()
    assert dropped == [running] and handover.release("p.thing", running) is True


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as up:
        yield up


def write(path: Path, upstream: FakeUpstream, *, keys: int = 0, key_label: bool = False) -> None:
    data = {
        "models": {"m": [{"model": "openai/gpt-4o-mini", "api_base": upstream.base_url, "api_key": "sk-x"}]},
        "keys": [{"key": GATEWAY_KEY, "name": "client", "team": "qa"}]
        + [{"key": f"sk-handover-extra-{i:02d}-0123456789abcdef", "name": f"extra{i}"} for i in range(keys)],
        "analytics": {"metrics": {"auth": "none", "key_label": key_label}, "quality": {"enabled": False}},
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def requests_total(text: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(r'^clasp_requests_total\{[^}]*model="m"[^}]*\} (\S+)$', text, re.M))


def test_prometheus_counters_do_not_go_back_to_zero_at_a_reload(tmp_path: Path, upstream: FakeUpstream,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "analytics")
    monkeypatch.setenv("CLASP_DATA_DIR", str(tmp_path))
    path = tmp_path / "clasp.yaml"
    write(path, upstream)
    serving = ServingApp(create_app(load_checked(str(path))))

    async def scenario() -> None:
        lifespan = _Lifespan(serving)
        await lifespan.startup()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=serving), base_url="http://gw") as client:
                async def ask() -> None:
                    answer = await client.post("/v1/chat/completions", headers=HEADERS, json={
                        "model": "m", "messages": [{"role": "user", "content": "hi"}]})
                    assert answer.status_code == 200, answer.text

                async def scraped() -> float:
                    return requests_total((await client.get("/metrics")).text)

                upstream.queue(*[Text("ok")] * 5)
                await ask()
                await ask()
                assert await scraped() == 2
                write(path, upstream, keys=1)
                assert (await serving.reload()).ok
                await asyncio.sleep(0.05)  # the previous configuration retires (its shutdown ran)
                assert not serving.retiring
                assert await scraped() == 2  # not 0
                await ask()
                assert await scraped() == 3
                # Another label set (key_label): other series, built anew.
                write(path, upstream, keys=1, key_label=True)
                assert (await serving.reload()).ok
                await ask()
                text = (await client.get("/metrics")).text
                assert requests_total(text) == 1 and 'key="client"' in text
        finally:
            await lifespan.shutdown()

    asyncio.run(scenario())


def test_with_two_workers_a_reload_keeps_counters_and_the_in_flight_gauge(tmp_path: Path) -> None:
    """``clasp serve`` with ``server.workers: 2`` (samples shared through
    PROMETHEUS_MULTIPROC_DIR): after a reload of both workers the counters carry on, and
    a request in flight is still counted (the replaced configuration does not mark its
    still-serving worker dead, which dropped that worker's live gauges)."""
    import threading
    import time

    from clasp_gateway.testing import GatewayProcesses, Hang

    path = tmp_path / "clasp.yaml"
    with FakeUpstream("openai") as up:
        up.script = lambda body, rec: Hang(4, reply=Text("late")) if "slow" in str(body) else Text("ok")

        def config(keys: int) -> None:
            write(path, up, keys=keys)
            data = yaml.safe_load(path.read_text())
            data["server"] = {"workers": 2, "log_level": "info"}
            data["keys"].append({"key": "sk-handover-admin-0123456789abcdef", "name": "ops", "role": "admin"})
            data["storage"] = {"url": f"sqlite:///{tmp_path / 'clasp.db'}"}
            path.write_text(yaml.safe_dump(data, sort_keys=False))

        config(0)
        with GatewayProcesses(path, env={"CLASP_LOAD_PLUGINS": "analytics"}, ready_timeout=120) as gateways:
            base = gateways[0].base_url

            def ask(text: str) -> None:
                answer = httpx.post(base + "/v1/chat/completions", headers={**HEADERS, "connection": "close"},
                                    json={"model": "m", "messages": [{"role": "user", "content": text}]}, timeout=30)
                assert answer.status_code == 200, answer.text

            def scrape() -> str:
                return httpx.get(base + "/metrics", headers={"connection": "close"}, timeout=30).text

            for i in range(12):  # new connections: both workers answer some
                ask(f"q{i}")
            assert requests_total(scrape()) == 12
            config(1)
            reloaded = httpx.post(base + "/admin/reload", headers={"x-api-key": "sk-handover-admin-0123456789abcdef"},
                                  timeout=60)
            assert reloaded.status_code == 200, reloaded.text
            deadline = time.monotonic() + 30
            while gateways[0].log_text().count("applied as configuration 2") < 2:
                assert time.monotonic() < deadline, "both workers reloaded"
                time.sleep(0.05)
            time.sleep(0.3)  # the replaced configurations shut down (nothing in flight)
            assert requests_total(scrape()) == 12
            slow = threading.Thread(target=ask, args=("slow",))
            slow.start()
            try:
                deadline = time.monotonic() + 3
                seen = []
                while time.monotonic() < deadline and not any(v >= 1 for v in seen):
                    found = re.search(r"^clasp_requests_in_flight (\S+)$", scrape(), re.M)
                    seen.append(float(found.group(1)) if found else 0.0)
                    time.sleep(0.05)
                assert any(v >= 1 for v in seen), seen  # whichever worker answers the scrape
            finally:
                slow.join()
            assert requests_total(scrape()) == 13

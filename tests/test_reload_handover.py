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

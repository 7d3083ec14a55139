"""The core's hedged first byte (hedging.py) with a test plugin for ``hedge_delay`` and
``start_hedge`` and a scripted provider: the first attempt to commit answers, the other
is cancelled and its stream closed, and every attempt goes through ``after_attempt``
exactly once, whichever wins or fails."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from clasp_gateway import UpstreamError, hookimpl
from clasp_gateway.testing import GATEWAY_KEY, GatewayServer, config_from


class Scripted:
    """A provider whose model name says what it does: ``fast``, ``late`` (0.3 s),
    ``hang``, ``fail`` (a 503 at once), ``fail-late`` (a 503 after 0.3 s). Remembers
    which streams were closed before they ended."""

    def __init__(self) -> None:
        self.closed: list[str] = []
        self.opened: list[str] = []

    async def open(self, deployment: Any, body: dict[str, Any], *, stream: bool) -> AsyncIterator[dict[str, Any]]:
        self.opened.append(deployment.id)
        behaviour = deployment.model
        done = False
        try:
            if behaviour in ("late", "fail-late"):
                await asyncio.sleep(0.3)
            if behaviour == "hang":
                await asyncio.sleep(3600)
            if behaviour.startswith("fail"):
                raise UpstreamError(f"{deployment.id}: 503", upstream_status=503, deployment=deployment.id)
            yield {"choices": [{"index": 0, "delta": {"role": "assistant", "content": f"from {deployment.id}"},
                                "finish_reason": "stop"}], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}
            done = True
        finally:
            if not done:
                self.closed.append(deployment.id)


class Hedges:
    """Hedge every first attempt after 50 ms (unless ``allow`` is false); counts
    ``after_attempt`` calls per attempt object."""

    def __init__(self, provider: Scripted) -> None:
        self.provider = provider
        self.allow = True
        self.asked: list[tuple[str, str]] = []
        self.ended: Counter[int] = Counter()
        self.events: list[dict[str, Any]] = []

    @hookimpl
    def register_providers(self, register: Callable[..., None]) -> None:
        register("scripted", self.provider)

    @hookimpl
    def hedge_delay(self, ctx: Any, deployment: Any, attempt_number: int) -> float:
        return 0.05

    @hookimpl
    def start_hedge(self, ctx: Any, deployment: Any, candidate: Any) -> bool:
        self.asked.append((deployment.id, candidate.id))
        return self.allow

    @hookimpl
    def after_attempt(self, ctx: Any, attempt: Any) -> None:
        self.ended[id(attempt)] += 1

    @hookimpl
    def record(self, ctx: Any, event: dict[str, Any]) -> None:
        self.events.append(event)

    def attempts(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == "attempt"]


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[httpx.Response, Hedges]]]:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "")
    servers: list[GatewayServer] = []

    def start(first: str, second: str, *, allow: bool = True, stream: bool = False) -> tuple[httpx.Response, Hedges]:
        hedges = Hedges(Scripted())
        hedges.allow = allow
        config = config_from({"models": {"m": [{"id": "primary", "model": f"scripted/{first}"},
                                               {"id": "secondary", "model": f"scripted/{second}"}]}})
        server = GatewayServer(config, plugins=[hedges]).start()
        servers.append(server)
        response = httpx.post(server.base_url + "/v1/chat/completions", headers={"x-api-key": GATEWAY_KEY}, timeout=10,
                              json={"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        return response, hedges

    yield start
    for server in servers:
        server.stop()


def _request_event(hedges: Hedges) -> dict[str, Any]:
    """The request event (recorded as the answer's last bytes go out: wait for it)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = next((e for e in hedges.events if e["kind"] == "request"), None)
        if found is not None:
            return found
        time.sleep(0.01)
    raise AssertionError("no request event")


def _once_each(hedges: Hedges) -> None:
    request = _request_event(hedges)
    assert set(hedges.ended.values()) == {1}  # every attempt ended exactly once
    assert len(hedges.ended) == len(hedges.attempts()) == len(request["attempts"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_hedge_answers_and_the_hanging_primary_is_closed(
    run: Callable[..., tuple[httpx.Response, Hedges]], stream: bool,
) -> None:
    response, hedges = run("hang", "fast", stream=stream)
    _request_event(hedges)
    assert response.status_code == 200 and "from secondary" in response.text
    assert response.headers["x-clasp-deployment"] == "secondary" and response.headers["x-clasp-hedged"] == "secondary"
    assert hedges.provider.closed == ["primary"]  # its upstream stream (connection) was closed
    assert hedges.asked == [("primary", "secondary")]
    lost, won = hedges.attempts()
    assert lost["deployment"] == "primary" and not lost["ok"] and lost["usage"]["input_tokens"] > 0
    assert won["deployment"] == "secondary" and won["ok"]
    _once_each(hedges)


def test_the_primary_answering_first_cancels_the_hedge(run: Callable[..., tuple[httpx.Response, Hedges]]) -> None:
    response, hedges = run("late", "hang")
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "from primary"
    assert hedges.provider.closed == ["secondary"]
    cancelled = next(a for a in hedges.attempts() if a["deployment"] == "secondary")
    assert "hedge cancelled" in cancelled["error"]
    _once_each(hedges)


def test_start_hedge_may_refuse(run: Callable[..., tuple[httpx.Response, Hedges]]) -> None:
    response, hedges = run("late", "fast", allow=False)
    assert response.json()["choices"][0]["message"]["content"] == "from primary"
    assert hedges.provider.opened == ["primary"] and hedges.asked == [("primary", "secondary")]
    _once_each(hedges)


def test_a_primary_failing_while_the_hedge_runs_leaves_the_hedge_to_answer(
    run: Callable[..., tuple[httpx.Response, Hedges]],
) -> None:
    hedges_response, hedges = run("fail-late", "late")
    assert hedges_response.json()["choices"][0]["message"]["content"] == "from secondary"
    assert [a["ok"] for a in hedges.attempts()] == [False, True]
    assert hedges.provider.opened == ["primary", "secondary"]  # the hedge is not tried again as a fallback
    _once_each(hedges)


def test_both_failing_is_the_primarys_error_and_the_hedge_is_not_retried(
    run: Callable[..., tuple[httpx.Response, Hedges]],
) -> None:
    response, hedges = run("fail-late", "fail")
    assert response.status_code >= 500 and "error" in response.json()
    assert sorted(hedges.provider.opened) == ["primary", "secondary"]
    assert sorted(a["deployment"] for a in hedges.attempts()) == ["primary", "secondary"]
    _once_each(hedges)

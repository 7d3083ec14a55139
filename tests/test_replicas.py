"""Three ``clasp serve`` replicas on one Redis (state) and one PostgreSQL (ledger, spend)
behind a real load balancer (Debian's haproxy, started here): rate limits, budgets,
breakers and the cache hold across replicas; a replica killed with SIGKILL mid-load
loses no request that had not started streaming (haproxy retries a failed connection
or an empty answer elsewhere) and no ledger row the database acknowledged; a reload
under load drops nothing.

haproxy runs with :data:`clasp_gateway.testing.balancer.HAPROXY_CONFIG`: health checks
on ``/ready`` (503 while a replica drains), ``retry-on conn-failure empty-response 503``
with ``option redispatch`` (the 503 is what a draining replica answers a request that
still reaches it); every answer names its replica (``x-clasp-replica``)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from clasp_gateway.testing import (
    GATEWAY_KEY,
    Error,
    FakeUpstream,
    GatewayProcesses,
    Haproxy,
    RedisServer,
    Text,
)

ADMIN_KEY = "sk-replicas-admin-0123456789abcdef012"
LIMITED_KEY = "sk-replicas-limited-0123456789abcdef0"
TIGHT_KEY = "sk-replicas-tight-0123456789abcdef012"
PRICES = {"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-5, "max_output_tokens": 1000}
ANSWER_COST = 100 * 1e-6 + 50 * 1e-5  # usage (100, 50)
ENV = {"CLASP_LOAD_PLUGINS": "claude,fallback,cache,budgets_limits,budgets_budgets,budgets_ledger"}

def gateway_config(main: FakeUpstream, primary: FakeUpstream, secondary: FakeUpstream, redis: Any, database: str,
                   text: str = "v1") -> dict[str, Any]:
    def deployment(ident: str, upstream: FakeUpstream) -> dict[str, Any]:
        return {"id": ident, "model": "openai/gpt-4o", "api_base": upstream.base_url, "api_key": "sk-up-0123456789",
                **PRICES}

    return {
        "server": {"log_level": "info", "drain_seconds": 5},
        "state": {"backend": "redis", "url": redis.url, "prefix": redis.prefix, "timeout": "2s"},
        "storage": {"url": database},
        "permissions": {"enabled": False},
        "keys": [{"key": GATEWAY_KEY, "name": "client", "team": "qa"},
                 {"key": ADMIN_KEY, "name": "ops", "role": "admin"},
                 {"key": LIMITED_KEY, "name": "limited", "team": "qa", "rpm": 4},
                 {"key": TIGHT_KEY, "name": "tight", "team": "tight"}],
        "models": {"m": [deployment(f"main-{text}", main)],
                   "chain": [deployment("primary", primary), deployment("secondary", secondary)]},
        "fallback": {"retry": {"attempts": 0}, "breaker": {"failures": 2, "cooldown": 60}},
        "cache": {"backend": "redis", "backend_options": {"url": redis.url, "prefix": redis.prefix + "cache:"}},
        "budgets": {"limits": [{"name": "tight", "scope": "team", "match": "tight", "usd": 0.0015, "period": "daily"}]},
        "ledger": {"flush_interval": "50ms"},
        "limits": {"expected_replicas": 3},
    }


def chat(base_url: str, key: str = GATEWAY_KEY, model: str = "m", content: str = "hi", **extra: Any) -> httpx.Response:
    return httpx.post(base_url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": model, "messages": [{"role": "user", "content": content}], **extra}, timeout=30)


def providers(base_url: str) -> dict[str, Any]:
    """``/health/providers`` by deployment id."""
    answer = httpx.get(base_url + "/health/providers", headers={"x-api-key": GATEWAY_KEY}, timeout=10)
    assert answer.status_code == 200, answer.text
    return {d["id"]: d for d in answer.json()["deployments"]}


def ledger_ids(database: str) -> set[str]:
    from clasp_budgets.ledger import REQUESTS

    async def go() -> set[str]:
        engine = create_async_engine(database.replace("postgresql://", "postgresql+asyncpg://", 1))
        try:
            async with engine.connect() as conn:
                return set((await conn.execute(select(REQUESTS.c.request_id))).scalars())
        finally:
            await engine.dispose()

    return asyncio.run(go())


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Outcome:
    """One streamed request through the load balancer, as its client saw it."""

    __slots__ = ("status", "replica", "request_id", "complete", "started", "error", "text", "retried")

    def __init__(self) -> None:
        self.retried = False
        self.status = 0
        self.replica = ""
        self.request_id = ""
        self.complete = False
        self.started = False
        self.error = ""
        self.text = ""


UNANSWERED = "Server disconnected without sending a response"
"""httpx's words for a connection closed before any answer: the request was not
processed, and a client may send it again (the SDKs do: see ``testing/balancer.py``)."""


async def stream_one(client: httpx.AsyncClient, url: str, i: int) -> Outcome:
    """One stream; sent again once, as the SDKs do, if its connection closed unanswered."""
    outcome = await _stream_once(client, url, i)
    if not outcome.started and UNANSWERED in outcome.error:
        outcome = await _stream_once(client, url, i)
        outcome.retried = True
    return outcome


async def _stream_once(client: httpx.AsyncClient, url: str, i: int) -> Outcome:
    outcome = Outcome()
    body = {"model": "m", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": f"load {i}"}]}
    try:
        async with client.stream("POST", url + "/v1/messages", json=body,
                                 headers={"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"}) as response:
            outcome.status = response.status_code
            outcome.replica = response.headers.get("x-clasp-replica", "")
            outcome.request_id = response.headers.get("request-id", "")
            outcome.started = True
            if response.status_code != 200:
                outcome.error = (await response.aread()).decode(errors="replace")[:300]
                return outcome
            async for line in response.aiter_lines():
                if '"text_delta"' in line:
                    outcome.text += line.split('"text":"', 1)[1].split('"', 1)[0]
                elif line == "event: message_stop":
                    outcome.complete = True
    except httpx.HTTPError as exc:
        outcome.error = repr(exc)
    return outcome


async def load(url: str, total: int, concurrency: int, during: Callable[[int], None] | None = None) -> list[Outcome]:
    """``total`` streams, ``concurrency`` at a time; ``during(done)`` after each one ends."""
    queue = iter(range(total))
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=limits) as client:

        async def worker() -> None:
            for i in queue:
                outcomes.append(await stream_one(client, url, i))
                if during is not None:
                    await asyncio.to_thread(during, len(outcomes))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


@pytest.fixture
def upstreams() -> Iterator[tuple[FakeUpstream, FakeUpstream, FakeUpstream]]:
    with FakeUpstream("openai") as main, FakeUpstream("openai") as primary, FakeUpstream("openai") as secondary:
        main.script = lambda body, rec: Text("streamed answer", chunk_size=3, chunk_delay=0.01, usage=(100, 50))
        primary.script = lambda body, rec: Error(500)
        secondary.script = lambda body, rec: Text("from secondary", usage=(100, 50))
        yield main, primary, secondary


def test_three_replicas_behind_haproxy(
    upstreams: tuple[FakeUpstream, FakeUpstream, FakeUpstream], redis_server: RedisServer, postgres_url: str,
    tmp_path: Path,
) -> None:
    main, primary, secondary = upstreams
    with redis_server.namespace() as ns:
        config = gateway_config(main, primary, secondary, ns, postgres_url)
        path = tmp_path / "clasp.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        with GatewayProcesses(path, count=3, env=ENV, ready_timeout=120) as gateways:
            urls = [g.base_url for g in gateways]
            with Haproxy([g.port for g in gateways], directory=tmp_path, log=True) as lb:
                lb.wait_all_up(3)
                shared_state_holds(urls, primary)
                kill_one_mid_load(lb, gateways, postgres_url)
                reload_under_load(lb, [g for g in gateways if g.alive()], path, config)
            for gateway in gateways:
                assert "Traceback" not in gateway.log_text(), gateway.log_text()[-3000:]


def shared_state_holds(urls: list[str], primary: FakeUpstream) -> None:
    """Each check spends or trips through one replica and is seen by the others."""
    # Rate limit: 4 requests a minute for the key, whichever replica answers.
    statuses = [chat(urls[i % 3], LIMITED_KEY, content=f"rl {i}").status_code for i in range(7)]
    assert statuses == [200] * 4 + [429] * 3, statuses
    # Cache: an answer stored through one replica is a hit on the others.
    first = chat(urls[0], content="what is the deploy command?")
    assert first.status_code == 200 and first.headers["x-clasp-cache"] == "miss"
    wait_for(lambda: chat(urls[1], content="what is the deploy command?").headers["x-clasp-cache"] == "exact",
             "the cache entry seen by replica 1", timeout=5)
    assert chat(urls[2], content="what is the deploy command?").headers["x-clasp-cache"] == "exact"
    # Budget: 0.0015 for team tight; one answer costs 0.0006 and reserves up to 0.001.
    assert chat(urls[0], TIGHT_KEY, content="b1", max_tokens=100).status_code == 200
    wait_for(lambda: chat(urls[1], TIGHT_KEY, content="b2", max_tokens=100).status_code == 429,
             "the spend seen by replica 1", timeout=5)
    assert chat(urls[2], TIGHT_KEY, content="b3", max_tokens=50).status_code == 200  # 0.0009 left: fits
    assert chat(urls[0], TIGHT_KEY, content="b4", max_tokens=50).status_code == 429  # 0.0003 left
    # Breaker: two failures through replica 0 open it for all three.
    for i in range(2):
        answer = chat(urls[0], model="chain", content=f"br {i}")
        assert answer.json()["choices"][0]["message"]["content"] == "from secondary"
    calls = len([r for r in primary.requests if r.path.endswith("/chat/completions")])
    assert calls == 2
    for url in urls[1:]:
        for i in range(3):
            assert chat(url, model="chain", content=f"after {i}").json()["choices"][0]["message"]["content"] \
                == "from secondary"
        by_id = providers(url)
        assert by_id["primary"]["state"] == "open", by_id
    assert len([r for r in primary.requests if r.path.endswith("/chat/completions")]) == calls  # none reached it


def kill_one_mid_load(lb: Haproxy, gateways: GatewayProcesses, database: str) -> None:
    """SIGKILL replica 1 half-way through 400 streams at concurrency 48."""
    victim = gateways[1]
    acknowledged: set[str] = set()

    def during(done: int) -> None:
        if done == 200 and victim.alive():
            os.killpg(victim.pid, signal.SIGKILL)
            victim.proc.wait(10)
            acknowledged.update(ledger_ids(database))  # what the database had taken when it died

    outcomes = asyncio.run(load(lb.base_url, 400, 48, during))
    assert not victim.alive() and acknowledged
    not_started = [o for o in outcomes if not o.started or o.status != 200]
    assert not_started == [], ([(o.status, o.replica, o.error) for o in not_started[:5]],
                               [(o.replica, o.error, o.text) for o in outcomes if o.started and not o.complete])
    cut = [o for o in outcomes if not o.complete]
    assert all(o.replica == "r1" for o in cut), [(o.replica, o.error) for o in cut]  # only streams it had begun
    assert len(cut) <= 48
    # Left to the client: connections closed unanswered, only by the kill (a handful at most).
    assert sum(o.retried for o in outcomes) <= len(cut) + 4, sum(o.retried for o in outcomes)
    complete = [o for o in outcomes if o.complete]
    assert all(o.text == "streamed answer" for o in complete)
    survivors = {o.request_id for o in complete if o.replica != "r1"}
    wait_for(lambda: survivors <= ledger_ids(database), "the survivors' rows in the ledger")
    assert acknowledged <= ledger_ids(database)  # acknowledged rows outlive the replica that wrote them


def reload_under_load(lb: Haproxy, alive: list[Any], path: Path, config: dict[str, Any]) -> None:
    """A new configuration on every live replica, by the admin call, while 150 streams run."""
    changed = {**config, "models": {**config["models"]}}
    changed["models"]["m"] = [{**config["models"]["m"][0], "id": "main-v2"}]
    path.write_text(yaml.safe_dump(changed, sort_keys=False))
    reloaded: list[int] = []

    def during(done: int) -> None:
        if done in (40, 90) and not reloaded.count(done):
            reloaded.append(done)
            for gateway in alive:
                answer = httpx.post(gateway.base_url + "/admin/reload", headers={"x-api-key": ADMIN_KEY}, timeout=30)
                assert answer.status_code == 200, answer.text

    outcomes = asyncio.run(load(lb.base_url, 150, 32, during))
    failed = [(o.status, o.replica, o.error) for o in outcomes if not o.complete]
    assert failed == [], failed[:5]
    assert reloaded == [40, 90]
    for gateway in alive:
        assert "applied as configuration 2" in gateway.log_text()
        assert "main-v2" in providers(gateway.base_url), sorted(providers(gateway.base_url))

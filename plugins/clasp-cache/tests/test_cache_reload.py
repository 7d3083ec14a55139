"""The memory cache across reloads (``POST /admin/reload``, SIGHUP): a new configuration
whose keys are shaped the same keeps the cached answers; one that changes what shapes
them (the ``cache:`` section, the models...) starts empty and frees the old entries
at once. Served in process by :class:`~clasp_gateway.shell.reload.ServingApp`, the
app ``clasp serve`` runs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from clasp_gateway import Config, hookimpl
from clasp_gateway.plugins import PluginManager
from clasp_gateway.shell.app import create_app
from clasp_gateway.shell.reload import ServingApp, _Lifespan, load_checked
from clasp_gateway.testing import GATEWAY_KEY, FakeUpstream, Text

ADMIN = "sk-cache-reload-admin-0123456789abcdef"
HEADERS = {"x-api-key": GATEWAY_KEY}


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as up:
        yield up


@pytest.fixture(autouse=True)
def only_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "cache")


def config(upstream: FakeUpstream, *, ttl: str = "10m", extra_keys: int = 0) -> dict[str, Any]:
    keys = [{"key": GATEWAY_KEY, "name": "client", "team": "qa"}, {"key": ADMIN, "name": "ops", "role": "admin"}]
    keys += [{"key": f"sk-cache-reload-extra-{i:02d}-0123456789abc", "name": f"extra{i}"} for i in range(extra_keys)]
    return {
        "models": {"m": [{"model": "openai/gpt-4o-mini", "api_base": upstream.base_url, "api_key": "sk-x"}]},
        "keys": keys,
        "cache": {"ttl": ttl},
    }


def write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def ask(text: str) -> dict[str, Any]:
    return {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": text}]}


def runtime(serving: ServingApp) -> Any:
    return serving.current.gateway.pm.get_plugin("cache.runtime")


async def stored(serving: ServingApp, count: int) -> None:
    """Stores run off the response path: wait (bounded) until ``count`` entries are in."""
    for _ in range(500):
        if len(runtime(serving).backend._entries) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} cached answer(s) expected, found {len(runtime(serving).backend._entries)}")


def test_cached_answers_survive_a_reload_unless_what_shapes_the_keys_changed(tmp_path: Path,
                                                                              upstream: FakeUpstream) -> None:
    path = tmp_path / "clasp.yaml"
    write(path, config(upstream))
    serving = ServingApp(create_app(load_checked(str(path))))

    async def scenario() -> None:
        lifespan = _Lifespan(serving)
        await lifespan.startup()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=serving), base_url="http://gw") as client:
                upstream.queue(Text("Paris."), Text("Rome."), Text("Paris, still."))
                first = await client.post("/v1/chat/completions", headers=HEADERS, json=ask("capital of France?"))
                assert first.status_code == 200 and first.headers["x-clasp-cache"] == "miss"
                await stored(serving, 1)
                backend = runtime(serving).backend

                # Keys changed, nothing that shapes a cache key: the same backend, the answer kept.
                write(path, config(upstream, extra_keys=1))
                result = await serving.reload()
                assert result.ok and result.changed == ["keys"] and result.generation == 2
                assert runtime(serving).backend is backend
                again = await client.post("/v1/chat/completions", headers=HEADERS, json=ask("capital of France?"))
                assert again.status_code == 200 and again.headers["x-clasp-cache"] == "exact"
                assert again.json()["choices"][0]["message"]["content"] == "Paris."
                assert len(upstream.requests) == 1
                other = await client.post("/v1/chat/completions", headers=HEADERS, json=ask("capital of Italy?"))
                assert other.headers["x-clasp-cache"] == "miss"
                await stored(serving, 2)
                stats = await client.get("/admin/cache", headers={"x-api-key": ADMIN})
                assert stats.status_code == 200, stats.text
                # The counts span the reload: one miss before it, one hit and one miss after.
                counts = {k: stats.json()["stats"][k] for k in ("hits", "misses", "stored")}
                assert counts == {"hits": 1, "misses": 2, "stored": 2}

                # Reloading twice more (the previous configurations retire) keeps it open and full.
                write(path, config(upstream, extra_keys=2))
                assert (await serving.reload()).ok
                await asyncio.sleep(0.05)  # the replaced configurations shut down (no request in flight)
                assert not serving.retiring and runtime(serving).backend is backend
                assert len(backend._entries) == 2

                # cache.ttl changed: the keys' namespace changed, so the old answers can never
                # be served again; they are dropped at once and the new configuration starts empty.
                write(path, config(upstream, ttl="20m", extra_keys=2))
                assert (await serving.reload()).ok
                fresh = runtime(serving).backend
                assert fresh is not backend and len(backend._entries) == 0 and backend._bytes == 0
                third = await client.post("/v1/chat/completions", headers=HEADERS, json=ask("capital of France?"))
                assert third.headers["x-clasp-cache"] == "miss"
                assert third.json()["choices"][0]["message"]["content"] == "Paris, still."
                await stored(serving, 1)
                assert len(fresh._entries) == 1 and len(upstream.requests) == 3
                # A new backend, the same counts: they never fall back to zero at a reload.
                stats = (await client.get("/admin/cache", headers={"x-api-key": ADMIN})).json()["stats"]
                assert (stats["hits"], stats["misses"], stats["stored"]) == (1, 3, 3)
        finally:
            await lifespan.shutdown()

    asyncio.run(scenario())


def test_a_reload_that_fails_to_start_leaves_the_cache_with_the_running_configuration(
        tmp_path: Path, upstream: FakeUpstream) -> None:
    path = tmp_path / "clasp.yaml"
    write(path, config(upstream))
    serving = ServingApp(create_app(load_checked(str(path))))

    async def scenario() -> None:
        lifespan = _Lifespan(serving)
        await lifespan.startup()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=serving), base_url="http://gw") as client:
                upstream.queue(Text("Paris."))
                await client.post("/v1/chat/completions", headers=HEADERS, json=ask("capital of France?"))
                await stored(serving, 1)
                backend = runtime(serving).backend
                bad = config(upstream)
                bad["cache"]["backend"] = "nowhere"
                write(path, bad)
                result = await serving.reload()
                assert not result.ok and any("cache.backend" in p for p in result.problems)
                assert runtime(serving).backend is backend and len(backend._entries) == 1
                hit = await client.post("/v1/chat/completions", headers=HEADERS, json=ask("capital of France?"))
                assert hit.headers["x-clasp-cache"] == "exact"
        finally:
            await lifespan.shutdown()

    asyncio.run(scenario())


class FailsToStart:
    """A plugin whose start-up fails when told to, after the cache's (``trylast``)."""

    def __init__(self) -> None:
        self.fail = False

    @hookimpl(trylast=True)
    def startup(self, app: Any, config: Config) -> None:
        if self.fail:
            raise RuntimeError("this configuration cannot start")


def test_a_reload_that_fails_while_starting_leaves_the_running_cache_untouched(
        tmp_path: Path, upstream: FakeUpstream) -> None:
    """The new configuration changed what shapes the keys (its cache would start empty),
    and then failed to start: the running configuration keeps its answers."""
    path = tmp_path / "clasp.yaml"
    write(path, config(upstream))
    failing = FailsToStart()

    def build(config: Config) -> Any:
        pm = PluginManager()
        pm.load(config.plugin_paths)
        pm.register(failing)
        return create_app(config, pm)

    serving = ServingApp(build(load_checked(str(path))), build=build)

    async def scenario() -> None:
        lifespan = _Lifespan(serving)
        await lifespan.startup()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=serving), base_url="http://gw") as client:
                upstream.queue(Text("Paris."))
                await client.post("/v1/chat/completions", headers=HEADERS, json=ask("capital of France?"))
                await stored(serving, 1)
                backend = runtime(serving).backend
                write(path, config(upstream, ttl="20m"))
                failing.fail = True
                result = await serving.reload()
                assert not result.ok and "cannot start" in " ".join(result.problems)
                assert runtime(serving).backend is backend and len(backend._entries) == 1
                hit = await client.post("/v1/chat/completions", headers=HEADERS, json=ask("capital of France?"))
                assert hit.headers["x-clasp-cache"] == "exact"
                failing.fail = False
                write(path, config(upstream, extra_keys=1))  # the running cache settings: kept
                assert (await serving.reload()).ok
                assert runtime(serving).backend is backend and len(backend._entries) == 1
        finally:
            await lifespan.shutdown()

    asyncio.run(scenario())

"""Issue 7, defects 1 and 5: "first answer wins" hooks await each implementation in
turn (an ``async def`` that defers never wins), and bookkeeping after an answer
(pricing, ``after_attempt``, ``record``, ``on_stream_chunk``) never breaks it."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from clasp_gateway import hookimpl
from clasp_gateway.errors import AuthenticationError, GatewayError
from clasp_gateway.pipeline import Gateway
from clasp_gateway.plugins import PluginManager, call_each, call_first
from clasp_gateway.testing import GATEWAY_KEY, Error, FakeUpstream, Text, config_from
from clasp_gateway.types import Principal, RequestContext
from tests.hardening import (
    APIS,
    Witness,
    answer_text,
    call,
    chain,
    chat_requests,
    ended_cleanly,
    serving,
)

# --- defect 1: an async plugin that defers must not open the door --------------------------


class SyncDefers:
    @hookimpl
    def authenticate(self, api_key: str | None, headers: dict[str, str], config: Any) -> Principal | None:
        return None


class AsyncDefers:
    """Defers the way the hookspec invites, from an ``async def``: returns ``None``."""

    @hookimpl
    async def authenticate(self, api_key: str | None, headers: dict[str, str], config: Any) -> Principal | None:
        await asyncio.sleep(0)
        return None


class AsyncAccepts:
    """Accepts one key of its own (an SSO bridge, say); defers on anything else."""

    @hookimpl
    async def authenticate(self, api_key: str | None, headers: dict[str, str], config: Any) -> Principal | None:
        if api_key == "plugin-key-0123456789":
            return Principal(key_id="sso", name="from-sso", team="sso")
        return None


class AnswersNonsense:
    """Answers something that is not a Principal (a bug): must be a 401, not a pass."""

    @hookimpl
    def authenticate(self, api_key: str | None, headers: dict[str, str], config: Any) -> Any:
        return True if api_key == "truthy-key-0123456789" else None


ORDERS = {
    "sync-then-async": [SyncDefers, AsyncDefers, AsyncAccepts],
    "async-then-sync": [AsyncAccepts, AsyncDefers, SyncDefers],
}


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as up:
        up.script = lambda body, rec: Text("served")
        yield up


@pytest.mark.parametrize("order", list(ORDERS))
@pytest.mark.parametrize("api", APIS)
def test_deferring_auth_plugins_never_let_a_bad_key_through(upstream: FakeUpstream, api: str, order: str) -> None:
    plugins = [cls() for cls in ORDERS[order]]
    with serving(chain(upstream.base_url), *plugins, AnswersNonsense()) as server:
        for key in ("wrong-key-0123456789", None, "truthy-key-0123456789"):
            response = call(server, api, key=key)
            assert response.status_code == 401, (key, response.text)
            error = response.json()["error"]
            assert error["type"] == "authentication_error"
            if api == "anthropic":
                assert response.json()["type"] == "error"
            assert chat_requests(upstream) == 0  # a refused request never reaches the provider
        assert answer_text(api, False, call(server, api)) == "served"  # the configured key (core default)
        assert answer_text(api, False, call(server, api, key="plugin-key-0123456789")) == "served"
        assert chat_requests(upstream) == 2


class Answers:
    """Answers every "first answer wins" hook from ``values`` (``None``: defers), from
    plain functions; remembers in ``ran`` which of its hooks ran."""

    ran: list[str] = []

    def __init__(self, label: str, **values: Any) -> None:
        self.label = label
        self.values = values

    def _answer(self, hook: str) -> Any:
        Answers.ran.append(f"{self.label}.{hook}")
        return self.values.get(hook)

    @hookimpl
    def resolve_route(self, ctx: Any, request: Any, candidates: list[Any]) -> Any:
        return self._answer("resolve_route")

    @hookimpl
    def before_call(self, ctx: Any, request: Any) -> Any:
        return self._answer("before_call")

    @hookimpl
    def on_error(self, ctx: Any, deployment: Any, error: Exception, attempt_number: int) -> Any:
        return self._answer("on_error")

    @hookimpl
    def on_exhausted(self, ctx: Any, request: Any, error: Exception) -> Any:
        return self._answer("on_exhausted")


class AnswersAsync(Answers):
    """The same, from ``async def`` implementations (each suspends once)."""

    @hookimpl
    async def resolve_route(self, ctx: Any, request: Any, candidates: list[Any]) -> Any:
        await asyncio.sleep(0)
        return self._answer("resolve_route")

    @hookimpl
    async def before_call(self, ctx: Any, request: Any) -> Any:
        await asyncio.sleep(0)
        return self._answer("before_call")

    @hookimpl
    async def on_error(self, ctx: Any, deployment: Any, error: Exception, attempt_number: int) -> Any:
        await asyncio.sleep(0)
        return self._answer("on_error")

    @hookimpl
    async def on_exhausted(self, ctx: Any, request: Any, error: Exception) -> Any:
        await asyncio.sleep(0)
        return self._answer("on_exhausted")


class TryFirstAsync(AnswersAsync):
    @hookimpl(tryfirst=True)
    async def on_error(self, ctx: Any, deployment: Any, error: Exception, attempt_number: int) -> Any:
        await asyncio.sleep(0)
        return self._answer("on_error")


class TryLast(Answers):
    @hookimpl(trylast=True)
    def on_error(self, ctx: Any, deployment: Any, error: Exception, attempt_number: int) -> Any:
        return self._answer("on_error")


def kinds(first_async: bool) -> tuple[type[Answers], type[Answers]]:
    """(the kind called first, the kind called after it)."""
    return (AnswersAsync, Answers) if first_async else (Answers, AnswersAsync)


def _ctx() -> RequestContext:
    return RequestContext(request_id="req_test", api="openai", public_model="chain", client_stream=False)


@pytest.mark.parametrize("first_async", [True, False], ids=["async-first", "sync-first"])
async def test_call_first_stops_at_the_first_answer_in_pluggy_order(first_async: bool) -> None:
    Answers.ran = []
    first, then = kinds(first_async)
    pm = PluginManager()
    # pluggy calls the last registered first; tryfirst and trylast override that.
    pm.register(TryLast("trylast", on_error=9.0))
    pm.register(then("not-asked", on_error="next"))
    pm.register(first("registered-last", on_error="fail"))
    pm.register(TryFirstAsync("tryfirst-defers", on_error=None))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decision = await call_first(pm.hook.on_error, ctx=_ctx(), deployment=None, error=None, attempt_number=1)
        gc.collect()
    assert decision == "fail"
    assert Answers.ran == ["tryfirst-defers.on_error", "registered-last.on_error"]
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("first_async", [True, False], ids=["async-first", "sync-first"])
async def test_call_first_skips_deferring_implementations(first_async: bool) -> None:
    Answers.ran = []
    first, then = kinds(first_async)
    pm = PluginManager()
    pm.register(TryLast("trylast", on_error=9.0))
    pm.register(then("answers", on_error="next"))
    pm.register(first("defers", on_error=None))
    pm.register(TryFirstAsync("tryfirst-defers", on_error=None))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decision = await call_first(pm.hook.on_error, ctx=_ctx(), deployment=None, error=None, attempt_number=1)
        gc.collect()
    assert decision == "next"
    assert Answers.ran == ["tryfirst-defers.on_error", "defers.on_error", "answers.on_error"]  # trylast not asked
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


async def test_call_first_passes_the_awaited_answer_through_wrappers() -> None:
    seen: list[Any] = []

    class Wraps:
        @hookimpl(wrapper=True)
        def resolve_route(self, ctx: Any, request: Any, candidates: list[Any]) -> Any:
            answer = yield
            seen.append(answer)
            return list(reversed(answer))

    pm = PluginManager()
    pm.register(Answers("answers", resolve_route=["a", "b"]))
    pm.register(AnswersAsync("defers"))
    pm.register(Wraps())
    assert await call_first(pm.hook.resolve_route, ctx=_ctx(), request={}, candidates=[]) == ["b", "a"]
    assert seen == [["a", "b"]]


async def test_every_plugin_deferring_without_the_default_is_a_401() -> None:
    pm = PluginManager()  # no defaults registered: nobody accepts
    pm.register(AsyncDefers())
    pm.register(SyncDefers())
    gateway = Gateway(config_from({"models": {}}), pm)
    with pytest.raises(AuthenticationError):
        await gateway.authenticate({"x-api-key": GATEWAY_KEY})
    with pytest.raises(AuthenticationError):
        await gateway.authenticate({})


@pytest.mark.parametrize("first_async", [True, False], ids=["async-first", "sync-first"])
def test_first_answer_hooks_in_the_pipeline(first_async: bool) -> None:
    """resolve_route, before_call, on_error and on_exhausted: a plugin that defers
    (called first) never hides the answer of the plugin called after it."""
    first, then = kinds(first_async)
    answers = then("answers")
    canned = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": "canned"}, "finish_reason": "stop"}]}]
    cached = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": "cached"}, "finish_reason": "stop"}]}]
    with FakeUpstream("openai") as primary, FakeUpstream("openai") as secondary:
        primary.script = lambda body, rec: Text("from primary")
        secondary.script = lambda body, rec: Text("from secondary")
        # Registered first, so called last: ``answers``; ``first("defers")`` is asked before it.
        with serving(chain(primary.base_url, secondary.base_url), answers, first("defers")) as server:
            second = server.gateway.config.models[0].deployments[1]
            answers.values = {"resolve_route": [second]}
            assert answer_text("openai", False, call(server, "openai")) == "from secondary"
            assert chat_requests(primary) == 0

            answers.values = {"before_call": cached}
            assert answer_text("openai", False, call(server, "openai")) == "cached"
            assert chat_requests(primary) + chat_requests(secondary) == 1

            answers.values = {"on_error": "fail"}
            primary.queue(Error(500))
            assert call(server, "openai").status_code == 500
            assert chat_requests(primary) == 1 and chat_requests(secondary) == 1  # no fallback after "fail"

            answers.values = {"on_exhausted": canned}
            primary.queue(Error(500))
            secondary.queue(Error(500))
            assert answer_text("anthropic", False, call(server, "anthropic")) == "canned"


async def test_before_call_stops_at_the_first_answer_and_awaits_nothing_more() -> None:
    ran: list[str] = []
    cached = [{"choices": [{"index": 0, "delta": {"content": "hit"}, "finish_reason": "stop"}]}]

    class Later:
        @hookimpl
        async def before_call(self, ctx: Any, request: Any) -> Any:
            ran.append("later")  # would be a coroutine never awaited on the old code
            return None

    class First:
        @hookimpl
        async def before_call(self, ctx: Any, request: Any) -> Any:
            ran.append("first")
            return cached

    pm = PluginManager()
    pm.load(entry_points=False)
    pm.register(Later())
    pm.register(First())
    gateway = Gateway(config_from({"models": chain("http://127.0.0.1:9/v1")}), pm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stream = await gateway.open(_ctx(), {"model": "chain", "messages": [{"role": "user", "content": "hi"}]},
                                    stream=False)
        chunks = [c async for c in stream]
        gc.collect()
    assert chunks == cached and ran == ["first"]
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


async def test_call_each_isolates_failures_and_propagates_without_a_handler() -> None:
    class Raises:
        @hookimpl
        async def record(self, ctx: Any, event: Any) -> None:
            raise ValueError("broken recorder")

    witness = Witness()
    pm = PluginManager()
    pm.register(witness)
    pm.register(Raises())
    failures: list[tuple[str, str]] = []
    await call_each(pm.hook.record, on_failure=lambda plugin, exc: failures.append((plugin, str(exc))),
                    ctx=_ctx(), event={"kind": "x"})
    assert witness.events == [{"kind": "x"}] and failures[0][1] == "broken recorder"
    with pytest.raises(ValueError):
        await call_each(pm.hook.record, ctx=_ctx(), event={"kind": "y"})


async def test_the_call_order_is_pluggys_own() -> None:
    order: list[str] = []

    def plugin(label: str, **marks: Any) -> Any:
        class P:
            @hookimpl(**marks)
            def record(self, ctx: Any, event: Any) -> None:
                order.append(label)

        return P()

    pm = PluginManager()
    for label, marks in [("a", {}), ("first", {"tryfirst": True}), ("b", {}), ("last", {"trylast": True}), ("c", {})]:
        pm.register(plugin(label, **marks))
    pm.hook.record(ctx=_ctx(), event={})
    by_pluggy, order[:] = list(order), []
    await call_each(pm.hook.record, ctx=_ctx(), event={})
    assert order == by_pluggy == ["first", "c", "b", "a", "last"]


async def test_call_each_runs_wrappers_of_both_styles_and_reports_a_broken_one() -> None:
    seen: list[Any] = []

    class OldStyle:
        @hookimpl(hookwrapper=True)
        def record(self, ctx: Any, event: Any) -> Any:
            outcome = yield
            seen.append(("old", outcome.get_result()))

    class NewStyle:
        @hookimpl(wrapper=True)
        def record(self, ctx: Any, event: Any) -> Any:
            results = yield
            seen.append(("new", results))
            if event.get("kind") == "break-the-wrapper":
                raise RuntimeError("wrapper is broken")
            return results

    class Answers_:
        @hookimpl
        async def record(self, ctx: Any, event: Any) -> str:
            return "seen"

    pm = PluginManager()
    for plugin in (Answers_(), OldStyle(), NewStyle()):
        pm.register(plugin)
    assert await call_each(pm.hook.record, ctx=_ctx(), event={"kind": "x"}) == ["seen"]
    assert seen == [("old", ["seen"]), ("new", ["seen"])]  # the inner (older) wrapper leaves first
    failures: list[str] = []
    await call_each(pm.hook.record, on_failure=lambda plugin, exc: failures.append(str(exc)),
                    ctx=_ctx(), event={"kind": "break-the-wrapper"})
    assert failures == ["wrapper is broken"]


# --- defect 5: bookkeeping never breaks a served answer ----------------------------------------


class BrokenBookkeeping:
    """Raises in every bookkeeping hook, sync and async."""

    @hookimpl
    def after_attempt(self, ctx: Any, attempt: Any) -> None:
        raise RuntimeError("after_attempt is broken")

    @hookimpl
    async def record(self, ctx: Any, event: Any) -> None:
        raise RuntimeError("record is broken")

    @hookimpl
    def on_stream_chunk(self, ctx: Any, chunk: Any) -> None:
        raise RuntimeError("on_stream_chunk is broken")


class BrokenSyncRecord:
    @hookimpl(tryfirst=True)
    def record(self, ctx: Any, event: Any) -> None:
        raise KeyError("sync record is broken")


class BrokenAfterAttempt:
    @hookimpl
    async def after_attempt(self, ctx: Any, attempt: Any) -> None:
        raise RuntimeError("async after_attempt is broken")


class BrokenChunkHook:
    @hookimpl
    def on_stream_chunk(self, ctx: Any, chunk: Any) -> None:
        if chunk.get("choices") and chunk["choices"][0].get("finish_reason"):
            raise ValueError("the last chunk breaks this plugin")


BROKEN = {
    "all-at-once": (BrokenBookkeeping, ["after_attempt", "record"], ["on_stream_chunk"]),
    "sync-record": (BrokenSyncRecord, ["record"], []),
    "async-after_attempt": (BrokenAfterAttempt, ["after_attempt"], []),
    "on_stream_chunk-at-the-end": (BrokenChunkHook, [], ["on_stream_chunk"]),
}


def _failure_logs(caplog: pytest.LogCaptureFixture, request_id: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "clasp.pipeline" and r.levelno >= logging.ERROR and r.getMessage().startswith(request_id)]


@pytest.mark.parametrize("broken", list(BROKEN))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("api", APIS)
def test_a_plugin_failing_in_bookkeeping_never_breaks_the_answer(
    upstream: FakeUpstream, api: str, stream: bool, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    plugin, hooks, stream_hooks = BROKEN[broken]
    witness = Witness()
    with serving(chain(upstream.base_url), witness, plugin()) as server:
        upstream.script = lambda body, rec: Text("a whole answer, despite the plugin", usage=(20, 8))
        response = call(server, api, stream=stream)
        assert answer_text(api, stream, response) == "a whole answer, despite the plugin"
        if stream:
            assert ended_cleanly(api, response)
        failed = hooks + stream_hooks  # on_stream_chunk sees a whole answer's chunks too
        assert sorted(server.gateway.hook_failures) == sorted(failed)
        # Logged once per request, hook and plugin (not once per chunk), with the request id.
        logs = _failure_logs(caplog, response.headers["request-id"])
        assert sorted(line.split(" failed in ")[0].split(": ")[1] for line in logs) == sorted(failed)
        # The other plugins still got their events.
        assert [e["status"] for e in witness.kind("request")] == [200]
        assert witness.kind("attempt")[-1]["ok"] is True


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("api", APIS)
def test_a_price_that_cannot_be_applied_never_breaks_the_answer(upstream: FakeUpstream, api: str, stream: bool) -> None:
    witness = Witness()
    with serving(chain(upstream.base_url), witness) as server:
        deployment = server.gateway.config.models[0].deployments[0]
        # (Config validation refuses such a price; pricing must survive one anyway.)
        deployment.info = dataclasses.replace(deployment.info, input_cost_per_token="1e-05")
        upstream.script = lambda body, rec: Text("priced or not, served", usage=(20, 8))
        response = call(server, api, stream=stream)
        assert answer_text(api, stream, response) == "priced or not, served"
        if stream:
            assert ended_cleanly(api, response)
        assert server.gateway.hook_failures["pricing"] == 1
        event = witness.kind("request")[-1]
        assert event["status"] == 200 and event["cost_usd"] is None and event["usage"]["input_tokens"] == 20


def test_bookkeeping_failures_are_public_for_a_metrics_plugin(upstream: FakeUpstream) -> None:
    with serving(chain(upstream.base_url), BrokenBookkeeping()) as server:
        assert dict(server.gateway.hook_failures) == {}
        assert call(server, "openai").status_code == 200
        assert set(server.gateway.hook_failures) == {"after_attempt", "record", "on_stream_chunk"}
        assert httpx.get(server.base_url + "/health").status_code == 200


def test_gateway_error_type_is_still_what_routes_render() -> None:
    # call_first propagates a plugin's GatewayError unchanged (routes shape it).
    class Refuses:
        @hookimpl
        async def authenticate(self, api_key: Any, headers: Any, config: Any) -> Any:
            raise AuthenticationError("refused by a plugin")

    pm = PluginManager()
    pm.register(Refuses())
    with pytest.raises(GatewayError, match="refused by a plugin"):
        asyncio.run(call_first(pm.hook.authenticate, api_key="x", headers={}, config=None))

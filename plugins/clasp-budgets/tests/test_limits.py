"""Rate and concurrency limits through a real gateway (in a thread, memory state with a
fake clock): each kind, both APIs' 429 shapes and headers, per team and per user, and
concurrency slots released on every exit path."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from clasp_gateway.testing import (  # noqa: E402
    GATEWAY_KEY,
    Cut,
    Error,
    FakeClock,
    FakeUpstream,
    GatewayServer,
    Hang,
    Text,
    config_from,
    openai_models,
)

OTHER_KEY = "clasp-test-key-other-0123456789"


@pytest.fixture(scope="module")
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as upstream:
        yield upstream


@pytest.fixture(autouse=True)
def only_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "budgets_limits,claude")


class Gw:
    def __init__(self, server: GatewayServer, clock: FakeClock) -> None:
        self.server = server
        self.clock = clock
        self.url = server.base_url

    @property
    def state(self) -> Any:
        return self.server.gateway.state

    def chat(self, key: str = GATEWAY_KEY, *, user: str | None = None, stream: bool = False,
             max_tokens: int = 50, timeout: float = 10) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"}
        if user:
            headers["x-clasp-user"] = user
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": stream,
                "max_tokens": max_tokens}
        return httpx.post(self.url + "/v1/chat/completions", json=body, headers=headers, timeout=timeout)

    def message(self, key: str = GATEWAY_KEY, *, stream: bool = False, max_tokens: int = 50) -> httpx.Response:
        body = {"model": "claude-x", "max_tokens": max_tokens, "stream": stream,
                "messages": [{"role": "user", "content": "hi"}]}
        return httpx.post(self.url + "/v1/messages", json=body, headers={"x-api-key": key}, timeout=10)

    def slots(self) -> list[str]:
        store = self.state._data if hasattr(self.state, "_data") else {}
        return [k for k in store if k.endswith(":concurrency")]


@pytest.fixture
def gateway(up: FakeUpstream) -> Iterator[Callable[..., Gw]]:
    started: list[GatewayServer] = []

    def start(key: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
              other: dict[str, Any] | None = None) -> Gw:
        up.reset()
        keys = [{"key": GATEWAY_KEY, "name": "tests", "team": "qa", **(key or {})},
                {"key": OTHER_KEY, "name": "other", "team": "qa", **(other or {})}]
        config = config_from({"models": openai_models(up.base_url), "keys": keys, "limits": limits or {}})
        server = GatewayServer(config).start()
        started.append(server)
        clock = FakeClock()
        server.gateway.state.clock = clock
        return Gw(server, clock)

    yield start
    for server in started:
        server.stop()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"condition not met in time {predicate.__code__.co_firstlineno}"
        time.sleep(0.01)


def test_rpm_openai_shape_headers_and_no_upstream_call(gateway: Callable[..., Gw], up: FakeUpstream) -> None:
    gw = gateway(key={"rpm": 2})
    first = gw.chat()
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    assert gw.chat().status_code == 200
    refused = gw.chat()
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert "key 'tests'" in error["message"] and "2 requests per minute" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 120  # sliding window: at most two windows
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(up.requests) == 2  # the refused request never reached upstream
    assert gw.chat(OTHER_KEY).status_code == 200  # another key has its own window
    gw.clock.advance(120)
    assert gw.chat().status_code == 200


def test_anthropic_route_shape_and_headers(gateway: Callable[..., Gw], up: FakeUpstream) -> None:
    gw = gateway(key={"rpm": 1, "tpm": 100_000})
    ok = gw.message()
    assert ok.status_code == 200, ok.text
    assert ok.headers["anthropic-ratelimit-requests-limit"] == "1"
    assert ok.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert ok.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert ok.headers["anthropic-ratelimit-tokens-limit"] == "100000"
    refused = gw.message()
    assert refused.status_code == 429
    body = refused.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert "x-ratelimit-limit-requests" not in refused.headers
    assert len(up.requests) == 1


def test_streamed_answer_carries_headroom_headers(gateway: Callable[..., Gw], up: FakeUpstream) -> None:
    gw = gateway(key={"rpm": 5})
    response = gw.message(stream=True)
    assert response.status_code == 200
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "4"


def test_tokens_estimated_at_admission_and_corrected_by_usage(gateway: Callable[..., Gw], up: FakeUpstream) -> None:
    gw = gateway(key={"tpm": 3000, "tpd": 200})
    up.script = lambda body, rec: Text("ok", usage=(40, 30))
    # tpd 200: the estimate (input + max_tokens 100) fits, the real 70 is what stays counted.
    assert gw.chat(max_tokens=100).status_code == 200
    assert gw.chat(max_tokens=100).status_code == 200  # 70 + ~105 <= 200 only because of the correction
    refused = gw.chat(max_tokens=100)  # 140 + ~105 > 200
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "tokens"
    assert "200 tokens per day" in refused.json()["error"]["message"]
    assert refused.headers["x-ratelimit-limit-tokens"] in {"200", "3000"}
    assert int(refused.headers["retry-after"]) > 3600  # a day window frees slowly
    assert len(up.requests) == 2
    up.script = None


def test_tpm_refuses_a_burst_of_large_estimates(gateway: Callable[..., Gw], up: FakeUpstream) -> None:
    gw = gateway(key={"tpm": 1000}, limits={"output_estimate_cap": 600})
    up.queue(Hang(5))
    # max_tokens 4000 is clamped to the cap: ~610 counted while the first request is in flight.
    hold = threading.Thread(target=lambda: gw.chat(max_tokens=4000, timeout=10))
    hold.start()
    wait_for(lambda: len(up.requests) == 1)
    refused = gw.chat(max_tokens=4000)
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "tokens"
    assert len(up.requests) == 1
    hold.join()


def test_rpd(gateway: Callable[..., Gw]) -> None:
    gw = gateway(key={"rpd": 1})
    assert gw.chat().status_code == 200
    refused = gw.chat()
    assert refused.status_code == 429 and "requests per day" in refused.json()["error"]["message"]
    gw.clock.advance(2 * 86400)
    assert gw.chat().status_code == 200


def test_team_limit_is_shared_by_the_teams_keys(gateway: Callable[..., Gw], up: FakeUpstream) -> None:
    gw = gateway(limits={"teams": {"qa": {"rpm": 2}}})
    assert gw.chat().status_code == 200
    assert gw.chat(OTHER_KEY).status_code == 200
    refused = gw.chat(OTHER_KEY)
    assert refused.status_code == 429 and "team 'qa'" in refused.json()["error"]["message"]
    assert len(up.requests) == 2


def test_per_user_limits_behind_a_shared_key(gateway: Callable[..., Gw], up: FakeUpstream) -> None:
    gw = gateway(limits={"users": {"default": {"rpm": 1}, "lead": {"rpm": 3}}})
    assert gw.chat(user="alice").status_code == 200
    refused = gw.chat(user="alice")
    assert refused.status_code == 429 and "user 'alice'" in refused.json()["error"]["message"]
    assert gw.chat(user="bob").status_code == 200  # same key, another person
    assert [gw.chat(user="lead").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert gw.chat().status_code == 200  # no user: the key has no limit of its own


def test_refusal_undoes_what_was_counted(gateway: Callable[..., Gw]) -> None:
    # The user's limit refuses; the key's rpm must not have been spent on that refusal.
    gw = gateway(key={"rpm": 3}, limits={"users": {"default": {"rpm": 1}}})
    assert gw.chat(user="a").status_code == 200
    assert gw.chat(user="a").status_code == 429
    assert gw.chat(user="a").status_code == 429
    assert gw.chat(user="b").status_code == 200
    ok = gw.chat(user="c")
    assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining-requests"] == "0"


def _concurrency_refused(gw: Gw) -> None:
    refused = gw.chat()
    assert refused.status_code == 429, refused.text
    assert "1 requests in flight" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"] == "1"


def test_concurrency_slot_released_on_every_exit_path(gateway: Callable[..., Gw], up: FakeUpstream) -> None:
    gw = gateway(key={"max_concurrency": 1})

    def held(call: Callable[[], Any]) -> threading.Thread:
        thread = threading.Thread(target=call)
        thread.start()
        wait_for(lambda: bool(gw.slots()))
        return thread

    # success (non-streamed and streamed)
    assert gw.chat().status_code == 200 and not gw.slots()
    assert gw.chat(stream=True).status_code == 200
    wait_for(lambda: not gw.slots())
    # upstream error
    up.queue(Error(400, {"error": {"message": "bad", "type": "invalid_request_error"}}))
    assert gw.chat().status_code == 400
    assert not gw.slots()
    # cut stream (the upstream connection drops mid-answer)
    up.queue(Cut(Text("this answer is cut " * 20), after_chunks=3))
    assert gw.chat(stream=True).status_code == 200
    wait_for(lambda: not gw.slots())
    # in flight: the slot is held, a second request is refused
    up.queue(Hang(1.0, reply=Text("slow")))
    thread = held(lambda: gw.chat(timeout=10))
    _concurrency_refused(gw)
    thread.join()
    wait_for(lambda: not gw.slots())
    # client disconnect mid-stream
    up.queue(Text("a slow answer the client leaves " * 40, chunk_size=8, chunk_delay=0.2))

    def walk_away() -> None:
        with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=10,
                          headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                          json={"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
            next(r.iter_bytes())  # the first bytes, then leave

    walk_away()
    wait_for(lambda: not gw.slots())
    # client disconnect before the first byte (the upstream has not answered yet): the
    # core finishes that upstream call (it does not cancel a request whose client left
    # before its answer started), then the slot is released.
    for stream in (False, True):
        up.queue(Hang(1.0, reply=Text("late")))
        with pytest.raises(httpx.ReadTimeout):
            gw.chat(timeout=0.3, stream=stream)
        wait_for(lambda: not gw.slots())
    assert gw.chat().status_code == 200


async def test_lease_ttl_frees_slots_a_dead_replica_held() -> None:
    """A replica killed mid-request never releases its slot: the lease TTL frees it."""
    from clasp_budgets.limits.limiter import Limiter
    from clasp_budgets.limits.settings import LimitsSettings
    from clasp_budgets.limits.store import Store

    from clasp_gateway import KeyPolicy, Principal, RequestContext, StateSettings, create_state

    clock = FakeClock()
    state = create_state(StateSettings(backend="memory"), clock=clock)
    limiter = Limiter(Store(state, replicas=1), LimitsSettings(lease_ttl=60))
    ctx = RequestContext(request_id="r1", api="anthropic", public_model="m", client_stream=False,
                         principal=Principal("k1", name="k1", policy=KeyPolicy(max_concurrency=1)))
    plan = limiter.plan(ctx)
    held = await limiter.admit(ctx, {"messages": []}, plan)  # held by a process that then dies
    assert held.refused is None and held.slots == ["limits:key:k1:concurrency"]
    refused = await limiter.admit(ctx, {"messages": []}, plan)
    assert refused.refused is not None and refused.refused.kind == "concurrency" and refused.slots == []
    clock.advance(61)
    admission = await limiter.admit(ctx, {"messages": []}, plan)
    assert admission.refused is None
    await limiter.settle(admission, None)
    await limiter.settle(admission, None)  # idempotent: a second release frees nothing more
    assert await state.get("limits:key:k1:concurrency") is None


def test_plan_follows_the_keys_edits() -> None:
    """A (key, user) pair's plan is reused until the key's limits, name or team change."""
    from clasp_budgets.limits.limiter import Limiter
    from clasp_budgets.limits.settings import LimitSet, LimitsSettings
    from clasp_budgets.limits.store import Store

    from clasp_gateway import KeyPolicy, Principal, RequestContext, StateSettings, create_state

    limiter = Limiter(Store(create_state(StateSettings(backend="memory")), replicas=1),
                      LimitsSettings(teams={"qa": LimitSet(rpm=5)}))

    def ctx(policy: KeyPolicy, team: str | None = None, user: str | None = None) -> RequestContext:
        context = RequestContext(request_id="r", api="openai", public_model="m", client_stream=False,
                                 principal=Principal("k1", name="k1", team=team, policy=policy))
        context.user = user
        return context

    first = limiter.plan(ctx(KeyPolicy(rpm=2)))
    assert limiter.plan(ctx(KeyPolicy(rpm=2))) is first  # an equal policy: the same plan
    assert [w.key for w in first.windows] == ["limits:key:k1:rpm"]
    edited = limiter.plan(ctx(KeyPolicy(rpm=3)))
    assert edited is not first and edited.windows[0].scope.limits.rpm == 3
    moved = limiter.plan(ctx(KeyPolicy(rpm=3), team="qa"))
    assert [w.key for w in moved.windows] == ["limits:key:k1:rpm", "limits:team:qa:rpm"]
    assert limiter.plan(ctx(KeyPolicy(rpm=3), team="qa", user="alice")) is not moved  # per user


def test_bad_limits_config_is_a_clear_error() -> None:
    from clasp_budgets.limits.settings import parse_settings

    from clasp_gateway import ConfigError

    config = config_from({"models": {}, "limits": {"teams": {"qa": {"rpn": 3}}, "runaway": {"multiplier": 0.5}}})
    with pytest.raises(ConfigError) as caught:
        parse_settings(config)
    text = str(caught.value)
    assert "limits.teams.qa.rpn" in text and "rpm" in text and "limits.runaway.multiplier" in text

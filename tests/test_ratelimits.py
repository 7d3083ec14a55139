"""Rate-limit headers of every provider parsed into one state, and what the key pool
does with them through a real gateway: retry on the next key at once after a 429,
skip keys near their limit, bring a benched key back after its reset."""

from __future__ import annotations

import email.utils
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest

from clasp_gateway.testing import (
    GATEWAY_KEY,
    Error,
    FakeClock,
    FakeUpstream,
    GatewayServer,
    Text,
    by_key,
    config_from,
    limits_by_key,
    openai_limits,
)
from clasp_gateway.testing.fakes.keys import anthropic_limits, key_of
from clasp_gateway.wire.ratelimits import UNTIMED_WINDOW, RateLimitState, parse_duration, parse_rate_limits

NOW = 1000.0
WALL = 1_700_000_000.0


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(headers: dict[str, str]) -> RateLimitState:
    return parse_rate_limits(headers, now=NOW, wall=WALL)


# --- parsing tables ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("2m59.56s", 179.56), ("59.339s", 59.339),
     ("1h2m3s", 3723.0), ("0s", 0.0), ("7.66s", 7.66), ("1m", 60.0)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1x", "1 s", "abc", "1s2"])
def test_not_durations(text: str) -> None:
    assert parse_duration(text) is None


# (provider, headers, expected fields; reset/retry values are seconds from NOW)
TABLE: list[tuple[str, dict[str, str], dict[str, Any]]] = [
    ("openai", {
        "x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms", "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-tokens": "29500", "x-ratelimit-reset-tokens": "6m0s",
    }, {"requests_limit": 500, "requests_remaining": 499, "requests_reset": 0.12,
        "tokens_limit": 30000, "tokens_remaining": 29500, "tokens_reset": 360.0, "retry_after": None}),
    ("openai 429", {
        "x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "20s", "x-ratelimit-remaining-tokens": "39000",
        "x-ratelimit-reset-tokens": "1m30s",
    }, {"requests_remaining": 0, "requests_reset": 20.0, "tokens_reset": 90.0, "wait": 20.0}),
    ("groq", {
        "x-ratelimit-limit-requests": "14400", "x-ratelimit-limit-tokens": "18000",
        "x-ratelimit-remaining-requests": "14370", "x-ratelimit-remaining-tokens": "17997",
        "x-ratelimit-reset-requests": "2m59.56s", "x-ratelimit-reset-tokens": "7.66s", "retry-after": "7",
    }, {"requests_remaining": 14370, "requests_reset": 179.56, "tokens_remaining": 17997,
        "tokens_reset": 7.66, "retry_after": 7.0, "wait": 7.0}),
    ("azure", {
        "x-ratelimit-remaining-requests": "99", "x-ratelimit-remaining-tokens": "-1",
        "x-ratelimit-limit-tokens": "-1", "x-ratelimit-reset-tokens": "0",
        "retry-after-ms": "1500", "retry-after": "2",
    }, {"requests_remaining": 99, "requests_limit": None, "tokens_remaining": None, "tokens_limit": None,
        "retry_after": 1.5}),
    ("azure seconds", {
        "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "10",
    }, {"requests_remaining": 0, "requests_reset": 10.0, "wait": 10.0}),
    ("anthropic", {
        **anthropic_limits(0, 38000, rfc3339(WALL + 30)),
        "anthropic-ratelimit-input-tokens-limit": "30000",
        "anthropic-ratelimit-input-tokens-remaining": "29000",
        "anthropic-ratelimit-input-tokens-reset": rfc3339(WALL + 12),
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "1200",
        "anthropic-ratelimit-output-tokens-reset": rfc3339(WALL + 45),
        "retry-after": "30",
    }, {"requests_limit": 50, "requests_remaining": 0, "requests_reset": 30.0,
        # the most constraining token window: output tokens
        "tokens_limit": 8000, "tokens_remaining": 1200, "tokens_reset": 45.0, "retry_after": 30.0}),
    ("anthropic fractional", {
        "anthropic-ratelimit-requests-remaining": "3",
        "anthropic-ratelimit-requests-reset": datetime.fromtimestamp(WALL + 0.5, UTC).isoformat(),
    }, {"requests_remaining": 3, "requests_reset": 0.5}),
    ("mistral", {
        "ratelimitbysize-limit": "500000", "ratelimitbysize-remaining": "499000",
        "ratelimitbysize-reset": "12", "ratelimitbysize-query-cost": "1000",
        "x-ratelimitbysize-limit-minute": "500000", "x-ratelimitbysize-remaining-minute": "499000",
        "x-ratelimitbysize-limit-month": "1000000000", "x-ratelimitbysize-remaining-month": "999000000",
    }, {"tokens_limit": 500000, "tokens_remaining": 499000, "tokens_reset": 12.0, "requests_remaining": None}),
    ("mistral month exhausted", {
        "x-ratelimitbysize-limit-minute": "500000", "x-ratelimitbysize-remaining-minute": "499000",
        "x-ratelimitbysize-limit-month": "1000000", "x-ratelimitbysize-remaining-month": "0",
    }, {"tokens_limit": 1000000, "tokens_remaining": 0, "tokens_reset": None}),
    ("cerebras", {
        "x-ratelimit-limit-requests-day": "14400", "x-ratelimit-remaining-requests-day": "14399",
        "x-ratelimit-reset-requests-day": "43200.5", "x-ratelimit-limit-tokens-minute": "60000",
        "x-ratelimit-remaining-tokens-minute": "59000", "x-ratelimit-reset-tokens-minute": "33.2",
    }, {"requests_limit": 14400, "requests_remaining": 14399, "requests_reset": 43200.5,
        "tokens_limit": 60000, "tokens_remaining": 59000, "tokens_reset": 33.2}),
    ("cohere trial", {
        "x-endpoint-monthly-call-limit": "1000", "x-trial-endpoint-call-limit": "20",
        "x-trial-endpoint-call-remaining": "19",
    }, {"requests_limit": 20, "requests_remaining": 19, "requests_reset": None}),
    ("openrouter", {
        "X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int((WALL + 42) * 1000)),
    }, {"requests_limit": 20, "requests_remaining": 0, "requests_reset": 42.0, "wait": 42.0}),
    ("generic epoch seconds", {
        "x-ratelimit-limit": "60", "x-ratelimit-remaining": "10", "x-ratelimit-reset": str(int(WALL + 5)),
    }, {"requests_remaining": 10, "requests_reset": 5.0}),
    ("ietf draft", {
        "RateLimit-Limit": "100, 100;window=60, 1000;window=3600", "RateLimit-Remaining": "5",
        "RateLimit-Reset": "30",
    }, {"requests_limit": 100, "requests_remaining": 5, "requests_reset": 30.0}),
    ("retry-after http date", {"retry-after": email.utils.formatdate(WALL + 25, usegmt=True)},
     {"retry_after": 25.0}),
    ("retry-after-ms only", {"retry-after-ms": "250"}, {"retry_after": 0.25, "wait": 0.25}),
    ("azure x-ms", {"x-ms-retry-after-ms": "800"}, {"retry_after": 0.8}),
    ("garbage is ignored", {
        "x-ratelimit-remaining-requests": "lots", "x-ratelimit-reset-requests": "soon",
        "retry-after": "later", "anthropic-ratelimit-tokens-reset": "not a date",
        "anthropic-ratelimit-tokens-remaining": "12",
    }, {"requests_remaining": None, "retry_after": None, "tokens_remaining": 12, "tokens_reset": None}),
    ("nothing", {"content-type": "application/json"}, {"requests_remaining": None, "retry_after": None,
                                                        "empty": True}),
]


@pytest.mark.parametrize("provider, headers, expected", TABLE, ids=[t[0] for t in TABLE])
def test_rate_limit_headers(provider: str, headers: dict[str, str], expected: dict[str, Any]) -> None:
    state = parse(headers)
    for name, want in expected.items():
        if name in ("requests_reset", "tokens_reset"):
            deadline = getattr(state, name + "_at")
            got = None if deadline is None else deadline - NOW
        elif name == "wait":
            got = state.wait(NOW)
        else:
            got = getattr(state, name)
        if isinstance(want, float):
            assert got == pytest.approx(want, abs=0.01), name
        else:
            assert got == want, name


def test_header_names_are_case_insensitive() -> None:
    state = parse({"X-RateLimit-Remaining-Requests": "7", "Retry-After": "3"})
    assert state.requests_remaining == 7 and state.retry_after == 3.0


def test_remaining_counts_expire_with_their_window() -> None:
    state = parse(openai_limits(0, 10, reset_requests="2s", reset_tokens="5s"))
    assert state.remaining("requests", NOW + 1) == 0 and state.remaining("requests", NOW + 2.5) is None
    assert state.remaining("tokens", NOW + 4) == 10 and state.remaining("tokens", NOW + 6) is None
    untimed = parse({"x-trial-endpoint-call-remaining": "0"})
    assert untimed.remaining("requests", NOW + UNTIMED_WINDOW - 1) == 0
    assert untimed.remaining("requests", NOW + UNTIMED_WINDOW + 1) is None


def test_wait_is_the_latest_exhausted_window_without_retry_after() -> None:
    state = parse(openai_limits(0, 0, reset_requests="3s", reset_tokens="9s"))
    assert state.wait(NOW) == pytest.approx(9.0)
    assert state.wait(NOW + 4) == pytest.approx(5.0)
    assert parse(openai_limits(5, 100, reset_requests="3s")).wait(NOW) is None


def test_consume_accounts_for_requests_in_flight() -> None:
    state = parse(openai_limits(3, 1000))
    state.consume(1, 400)
    assert state.requests_remaining == 2 and state.tokens_remaining == 600


# --- through the gateway ------------------------------------------------------------------------

K1, K2, K3 = "rl-key-one-7f3a9c2e11", "rl-key-two-0b8d4e6f22", "rl-key-three-5c1a7b9d33"


@pytest.fixture(autouse=True)
def only_the_claude_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Key-pool behaviour is the adapter's: keep retry/fallback plugins out of it."""
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "claude")
    monkeypatch.setenv("CLASP_RL_K1", K1)
    monkeypatch.setenv("CLASP_RL_K2", K2)
    monkeypatch.setenv("CLASP_RL_K3", K3)


def pool_config(up: FakeUpstream, keys: list[str] | None = None, **extra: Any) -> Any:
    deployment = {"model": "openai/gpt-4o", "api_base": up.base_url,
                  "api_keys": keys or ["${CLASP_RL_K1}", "${CLASP_RL_K2}"], **extra}
    return config_from({"models": {"*": [deployment]}})


def sdk(server: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=GATEWAY_KEY, max_retries=0)


def ask(server: GatewayServer, stream: bool = False) -> str:
    client = sdk(server)
    if stream:
        parts = []
        for chunk in client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                                    stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        return "".join(parts)
    answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    return answer.choices[0].message.content or ""


def used(up: FakeUpstream) -> list[str | None]:
    return [key_of(r) for r in up.requests if r.path.endswith("/chat/completions")]


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai", require_key=True) as fake:
        yield fake


@pytest.mark.parametrize("stream", [False, True])
def test_a_429_on_key_one_is_retried_at_once_on_key_two(up: FakeUpstream, stream: bool) -> None:
    limited = Error(429, headers={**openai_limits(0, reset_requests="20s"), "retry-after": "20"})
    up.script = by_key({K1: limited, K2: Text("from key two")})
    with GatewayServer(pool_config(up)) as server:
        assert ask(server, stream) == "from key two"  # the next key right away, not after 20 s
        assert used(up) == [K1, K2]
        # Key one sits out its 20 s: the next requests go straight to key two.
        assert ask(server, stream) == "from key two" and ask(server, stream) == "from key two"
        assert used(up) == [K1, K2, K2, K2]


def test_a_401_benches_the_key_and_logs_its_reference(up: FakeUpstream, caplog: pytest.LogCaptureFixture) -> None:
    up.require_key = K2  # the provider knows only key two: key one gets OpenAI's 401
    with GatewayServer(pool_config(up, key_pool={"auth_cooldown": 60})) as server:
        for _ in range(4):
            assert ask(server) == "ok"
    assert used(up) == [K1, K2, K2, K2, K2]
    warnings = [r.getMessage() for r in caplog.records if "was rejected (401)" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "${CLASP_RL_K1}" in warnings[0] and "60s" in warnings[0]
    assert K1 not in caplog.text and K2 not in caplog.text


def test_keys_near_their_limit_are_skipped(up: FakeUpstream) -> None:
    up.response_headers = limits_by_key({
        K1: openai_limits(1, reset_requests="30s"),  # 1 request left (< min_remaining_requests: 2)
        K2: openai_limits(400),
    })
    with GatewayServer(pool_config(up)) as server:
        for _ in range(4):
            assert ask(server) == "ok"
    assert used(up) == [K1, K2, K2, K2]


def test_a_key_low_on_tokens_for_this_request_is_skipped(up: FakeUpstream) -> None:
    up.response_headers = limits_by_key({
        K1: openai_limits(400, 1500, reset_tokens="30s"),  # 1,500 tokens left: enough for a small request only
        K2: openai_limits(400, 90_000),
    })
    with GatewayServer(pool_config(up)) as server:
        client = sdk(server)
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert used(up) == [K1, K2]
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert used(up)[-1] == K1  # a small request still fits key one
        big = "x" * 20_000  # ~5,000 tokens: does not fit in key one's 1,500
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": big}])
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": big}])
        assert used(up)[-2:] == [K2, K2]


def test_a_benched_key_comes_back_after_its_reset(up: FakeUpstream) -> None:
    calls = {"n": 0}

    def key_one() -> Any:
        calls["n"] += 1
        return Error(429, headers={"retry-after-ms": "400"}) if calls["n"] == 1 else Text("key one is back")

    up.script = by_key({K1: key_one, K2: Text("from key two")})
    with GatewayServer(pool_config(up)) as server:
        clock = FakeClock()  # the pool's benches run on it: no sleeping, no race with a busy machine
        (deployment,) = server.gateway.config.deployments()
        server.gateway.providers.credentials.pool(deployment).clock = clock
        assert ask(server) == "from key two"
        clock.advance(0.39)
        assert ask(server) == "from key two"  # key one still benched
        clock.advance(0.02)
        assert ask(server) == "key one is back"
    assert used(up) == [K1, K2, K2, K1]


def test_when_every_key_is_limited_the_client_gets_429_with_the_soonest_retry(up: FakeUpstream) -> None:
    up.script = by_key({
        K1: Error(429, headers={"retry-after": "7"}),
        K2: Error(429, headers={"retry-after": "3"}),
        K3: Error(429, headers=openai_limits(0, reset_requests="5s")),
    })
    keys = ["${CLASP_RL_K1}", "${CLASP_RL_K2}", "${CLASP_RL_K3}"]
    with GatewayServer(pool_config(up, keys)) as server:
        response = httpx.post(server.base_url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                              json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 429, response.text
        assert response.headers["retry-after"] == "3"
        assert "all 3 API keys" in response.json()["error"]["message"]
        assert used(up) == [K1, K2, K3]
        # Benched keys are not lost: the pool still sends (to the one back first) and lets
        # the provider decide, exactly like a deployment with a single key.
        response = httpx.post(server.base_url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                              json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 429 and used(up)[3] == K2
    text = response.text
    assert K1 not in text and K2 not in text and K3 not in text


def test_an_exhausted_quota_is_benched_like_a_bad_key(up: FakeUpstream, caplog: pytest.LogCaptureFixture) -> None:
    quota = Error(429, body={"error": {"message": "You exceeded your current quota, please check your plan and "
                                                  "billing details.", "type": "insufficient_quota",
                                       "param": None, "code": "insufficient_quota"}})
    up.script = by_key({K1: quota})
    with GatewayServer(pool_config(up)) as server:
        for _ in range(3):
            assert ask(server) == "ok"
    assert used(up) == [K1, K2, K2, K2]
    assert "quota exhausted" in caplog.text and "${CLASP_RL_K1}" in caplog.text


def test_a_single_key_deployment_still_passes_429_and_retry_after_through(up: FakeUpstream) -> None:
    up.queue(Error(429, headers={"retry-after": "4"}), Text("fine again"))
    with GatewayServer(pool_config(up, ["${CLASP_RL_K1}"])) as server:
        with pytest.raises(openai.RateLimitError) as info:
            ask(server)
        assert info.value.response.headers["retry-after"] == "4"
        assert ask(server) == "fine again"  # one key: benched or not, it is the one used
    assert used(up) == [K1, K1]

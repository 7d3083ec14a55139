"""Fault injection through a real gateway: each failure either falls back or fails clearly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from clasp_gateway import hookimpl
from clasp_gateway.testing import GATEWAY_KEY, Cut, Error, FakeUpstream, Hang, Html, Malformed, Text

FAST = {"retry": {"base_delay": 0.01, "max_delay": 0.05}}


class Decisions:
    """Sees every ``on_error`` answer (a wrapper: the fallback plugin still decides)."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    @hookimpl(wrapper=True)
    def on_error(self, ctx: Any, deployment: Any, error: Exception, attempt_number: int) -> Any:
        decision = yield
        self.seen.append(decision)
        return decision

# fault -> chat calls the failing primary receives (1 + retries of the same deployment)
FAULTS: list[tuple[str, Callable[[], Any], int]] = [
    ("429 long retry-after", lambda: Error(429, headers={"retry-after": "30"}), 1),
    ("500", lambda: Error(500), 2),
    ("503", lambda: Error(503), 2),
    ("hang (first byte timeout)", lambda: Hang(), 1),
    ("cut before the first byte", lambda: Cut(Text("never seen"), before_headers=True), 2),
    ("cut after the headers", lambda: Cut(Text("never seen"), after_chunks=0), 1),
    ("HTML instead of JSON", lambda: Html(), 1),
    ("HTML error page", lambda: Html(502), 2),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("name", "fault", "calls"), FAULTS, ids=[f[0] for f in FAULTS])
def test_a_failing_primary_falls_back(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream],
    name: str, fault: Callable[[], Any], calls: int, stream: bool,
) -> None:
    primary, secondary = up
    primary.script = lambda body, rec: fault()
    gw = serve(kit.pair(primary, secondary), fallback=FAST)
    response = gw.chat(stream=stream)
    assert gw.text(response) == "from secondary"
    assert response.headers["x-clasp-deployment"] == "secondary"
    assert "x-clasp-degraded" not in response.headers
    assert kit.chat_requests(primary) == calls and kit.chat_requests(secondary) == 1
    attempts = gw.events.kind("attempt")
    assert [a["deployment"] for a in attempts] == ["primary"] * calls + ["secondary"]
    assert [a["ok"] for a in attempts] == [False] * calls + [True]
    request = gw.events.kind("request")[-1]
    assert request["status"] == 200 and len(request["attempts"]) == calls + 1


def test_malformed_json_falls_back(serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]) -> None:
    primary, secondary = up
    primary.script = lambda body, rec: Malformed()
    gw = serve(kit.pair(primary, secondary), fallback=FAST)
    assert gw.text(gw.chat()) == "from secondary"
    assert kit.chat_requests(primary) == 1  # a protocol error is not worth retrying in place


def test_refused_connection_falls_back(serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]) -> None:
    _, secondary = up
    gw = serve(kit.pair(kit.dead_url(), secondary), fallback=FAST)
    for stream in (False, True):
        assert gw.text(gw.chat(stream=stream)) == "from secondary"
    attempts = gw.events.kind("attempt")
    assert [a["deployment"] for a in attempts[:3]] == ["primary", "primary", "secondary"]
    assert "cannot reach the provider" in attempts[0]["error"]


def test_a_short_retry_after_is_honoured_on_the_same_deployment(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]
) -> None:
    primary, secondary = up
    primary.queue(Error(429, headers={"retry-after": "0.4"}), Text("primary, after waiting"))
    decisions = Decisions()
    gw = serve(kit.pair(primary, secondary), fallback=FAST, plugins=[decisions])
    assert gw.text(gw.chat()) == "primary, after waiting"
    # What the plugin told the gateway (which then sleeps that long): the provider's 0.4 s
    # plus at most base_delay of jitter. Read from the decision, not from a stopwatch.
    assert len(decisions.seen) == 1 and 0.4 <= decisions.seen[0] <= 0.4 + FAST["retry"]["base_delay"]
    assert kit.chat_requests(primary) == 2 and kit.chat_requests(secondary) == 0


def test_a_long_retry_after_rests_the_deployment(serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]) -> None:
    primary, secondary = up
    primary.queue(Error(429, headers={"retry-after": "30"}))
    gw = serve(kit.pair(primary, secondary), fallback=FAST)
    assert gw.text(gw.chat()) == "from secondary"
    assert gw.text(gw.chat()) == "from secondary"
    assert kit.chat_requests(primary) == 1  # skipped while it asked us to wait
    breaker = gw.status()["by_id"]["primary"]["breaker"]
    assert gw.status()["by_id"]["primary"]["state"] == "open"
    assert breaker["reason"] == "rate limited: the provider asked to wait 30s" and breaker["probe_in_s"] > 25


def test_a_cut_mid_stream_is_an_error_never_a_clean_end(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]
) -> None:
    primary, secondary = up
    primary.queue(Cut(Text("the beginning of a long answer that never ends"), after_chunks=3))
    gw = serve(kit.pair(primary, secondary), fallback=FAST)
    client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=GATEWAY_KEY, max_retries=0)
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="stream cut by the provider"):
        for chunk in client.chat.completions.create(
            model="chain", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            seen.extend(c.delta.content or "" for c in chunk.choices)
    client.close()
    assert "".join(seen).startswith("the ")  # part of the answer arrived before the cut
    assert kit.chat_requests(secondary) == 0  # the answer had started: no silent switch
    status = gw.status()["by_id"]["primary"]
    assert status["breaker"]["consecutive_failures"] == 1 and "stream cut" in status["last_error"]["message"]
    request = gw.events.kind("request")[-1]
    assert request["cut"] and request["attempts"][-1]["ok"] is False


def test_a_malformed_event_after_a_role_only_chunk_falls_back(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]
) -> None:
    # The primary sends a valid role-only chunk, then garbage: nothing was said yet,
    # so the stream is not committed to it and the request moves on.
    primary, secondary = up
    primary.queue(Malformed())
    gw = serve(kit.pair(primary, secondary), fallback=FAST)
    response = gw.chat(stream=True)
    assert gw.text(response) == "from secondary" and response.text.rstrip().endswith("[DONE]")
    assert kit.chat_requests(primary) == 1 and kit.chat_requests(secondary) == 1
    assert "malformed event" in gw.events.kind("attempt")[0]["error"]


def test_every_candidate_failing_is_a_clear_529(serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]) -> None:
    primary, secondary = up
    primary.script = lambda body, rec: Error(500)
    secondary.script = lambda body, rec: Hang()
    gw = serve(kit.pair(primary, secondary), fallback=FAST)
    response = gw.chat()
    assert response.status_code == 529
    assert response.headers["x-clasp-degraded"] == "unavailable" and int(response.headers["retry-after"]) >= 1
    message = response.json()["error"]["message"]
    assert message.startswith("no deployment could serve 'chain' right now (primary: provider answered 500")
    assert "(x2); secondary: no answer within" in message
    assert response.json()["error"]["code"] == "overloaded_error"


def test_every_candidate_rate_limited_keeps_the_429(serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]) -> None:
    primary, secondary = up
    primary.script = secondary.script = lambda body, rec: Error(429, headers={"retry-after": "20"})
    gw = serve(kit.pair(primary, secondary), fallback=FAST)
    response = gw.chat()
    assert response.status_code == 429 and response.headers["retry-after"] == "20"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_default_response_when_everything_failed(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream], stream: bool
) -> None:
    primary, secondary = up
    primary.script = secondary.script = lambda body, rec: Error(503)
    gw = serve(kit.pair(primary, secondary), fallback={**FAST, "default_response": "Service is degraded; try again soon."})
    response = gw.chat(stream=stream)
    assert gw.text(response) == "Service is degraded; try again soon."
    assert response.headers["x-clasp-degraded"] == "default-response"
    assert gw.events.kind("request")[-1]["deployment"] == "gateway"


def test_open_breakers_everywhere_give_a_529_without_calling_anyone(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]
) -> None:
    primary, secondary = up
    primary.script = secondary.script = lambda body, rec: Error(500)
    gw = serve(kit.pair(primary, secondary), fallback={"retry": {"attempts": 0}, "breaker": {"failures": 1, "cooldown": 30}})
    assert gw.chat().status_code == 529
    calls = kit.chat_requests(primary) + kit.chat_requests(secondary)
    response = gw.chat()
    assert kit.chat_requests(primary) + kit.chat_requests(secondary) == calls
    assert response.status_code == 529 and int(response.headers["retry-after"]) >= 29
    assert "primary: skipped (circuit breaker open, next probe in" in response.json()["error"]["message"]
    assert [e["deployment"] for e in gw.events.kind("skip")][-2:] == ["primary", "secondary"]


def test_stale_if_error_serves_what_a_cache_plugin_left(serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]) -> None:
    from clasp_fallback import STALE_KEY

    from clasp_gateway import hookimpl

    class StaleCache:
        """Stands in for a cache plugin's side of the contract: it found an expired entry."""

        @hookimpl
        def before_call(self, ctx: Any, request: Any) -> None:
            ctx.state[STALE_KEY] = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": "yesterday's answer"},
                                                  "finish_reason": "stop"}]}]

    primary, secondary = up
    primary.script = secondary.script = lambda body, rec: Error(502)
    gw = serve(kit.pair(primary, secondary), fallback={**FAST, "default_response": "unused"}, plugins=[StaleCache()])
    response = gw.chat()
    assert gw.text(response) == "yesterday's answer" and response.headers["x-clasp-degraded"] == "stale"


def test_client_errors_are_not_retried_or_degraded(serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]) -> None:
    primary, secondary = up
    primary.queue(Error(400, {"error": {"message": "Invalid value for 'temperature'", "type": "invalid_request_error"}}))
    gw = serve(kit.pair(primary, secondary), fallback={**FAST, "default_response": "never for a client error"})
    response = gw.chat()
    assert response.status_code == 400 and "temperature" in response.json()["error"]["message"]
    assert kit.chat_requests(primary) == 1 and kit.chat_requests(secondary) == 0


def test_a_content_policy_refusal_tries_the_next_deployment(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]
) -> None:
    primary, secondary = up
    refusal = {"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
                                    "management policy.", "type": None, "code": "content_filter"}}
    primary.queue(Error(400, refusal))
    gw = serve(kit.pair(primary, secondary), fallback=FAST)
    assert gw.text(gw.chat()) == "from secondary"
    assert gw.status()["by_id"]["primary"]["breaker"]["consecutive_failures"] == 0  # it answered: not unhealthy


def test_an_unconfigured_deployment_is_passed_over_and_explained(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, secondary = up
    monkeypatch.delenv("CLASP_TEST_MISSING_KEY", raising=False)
    chain = [kit.deployment(secondary.base_url, "keyless", api_key="${CLASP_TEST_MISSING_KEY}"),
             kit.deployment(secondary.base_url, "secondary")]
    gw = serve(chain, fallback=FAST)
    assert gw.text(gw.chat()) == "from secondary"
    alone = serve([chain[0]], fallback=FAST)
    response = alone.chat()
    assert response.status_code == 500 and "set CLASP_TEST_MISSING_KEY" in response.json()["error"]["message"]


def test_a_single_deployment_keeps_its_own_mapped_error(serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream]) -> None:
    primary, _ = up
    primary.script = lambda body, rec: Error(500)
    gw = serve([kit.deployment(primary.base_url, "only")], fallback=FAST)
    response = gw.chat()
    assert response.status_code == 500 and "provider answered 500" in response.json()["error"]["message"]
    assert kit.chat_requests(primary) == 2  # retried once, then told the client the truth

"""Per-deployment limits and retry overrides through a real gateway: a deployment at its
own limit is skipped for the next candidate before the provider would 429, every
candidate at its limit is a shaped 429 with retry-after, concurrency slots come back,
replicas share the counts (one SQLite state), the catalogue shows it, and a
deployment's ``retry:`` overrides the global policy. Configuration mistakes are
reported with their paths."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from clasp_fallback.settings import parse_settings

from clasp_gateway import ConfigError
from clasp_gateway.testing import GATEWAY_KEY, Error, FakeUpstream, GatewayServer, Hang, Text, config_from

FAST = {"retry": {"base_delay": 0.01, "max_delay": 0.02}}


def test_a_deployment_at_its_rpm_goes_to_the_next_candidate(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream],
) -> None:
    primary, secondary = up
    primary.script = lambda body, rec: Text("from primary")
    gw = serve([kit.deployment(primary.base_url, "primary", limits={"rpm": 3}), kit.deployment(secondary.base_url, "secondary")],
               fallback=FAST)
    served = [gw.chat().headers["x-clasp-deployment"] for _ in range(5)]
    assert served == ["primary"] * 3 + ["secondary"] * 2
    assert kit.chat_requests(primary) == 3  # never asked beyond its limit: no 429 from it
    skips = gw.events.kind("skip")
    assert len(skips) == 2 and "at its rpm limit (3)" in skips[0]["reason"]
    status = gw.status()["by_id"]["primary"]
    assert status["limits"]["rpm"] == 3 and status["limits"]["skipped_at_limit"] == 2
    assert status["limits"]["headroom"] == 0.0


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_every_candidate_at_its_limit_is_a_429_with_retry_after(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream], api: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "fallback,claude")
    primary, secondary = up
    primary.script = lambda body, rec: Text("from primary")
    gw = serve([kit.deployment(primary.base_url, "primary", limits={"rpd": 1}),
                kit.deployment(secondary.base_url, "secondary", limits={"rpd": 1})])
    assert gw.chat().status_code == 200 and gw.chat().status_code == 200
    if api == "openai":
        response = gw.chat()
        assert response.json()["error"]["type"] in ("rate_limit_error", "rate_limit_exceeded")
    else:
        response = gw.http.post("/v1/messages", json={"model": "chain", "max_tokens": 16,
                                                      "messages": [{"role": "user", "content": "hi"}]})
        body = response.json()
        assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
        assert "configured limit" in body["error"]["message"]
    assert response.status_code == 429 and int(response.headers["retry-after"]) >= 1
    assert kit.chat_requests(primary) + kit.chat_requests(secondary) == 2


def test_concurrency_slots_are_released_when_attempts_end(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream],
) -> None:
    primary, secondary = up
    release = threading.Event()
    primary.script = lambda body, rec: Text("from primary", delay=0.0 if release.is_set() else 1.0)
    gw = serve([kit.deployment(primary.base_url, "primary", limits={"max_concurrency": 1},
                               timeouts={"connect": 1, "first_byte": 5, "idle": 5, "total": 10}),
                kit.deployment(secondary.base_url, "secondary")], fallback={"hedge": {"enabled": False}})
    results: list[str] = []

    def slow() -> None:
        results.append(gw.chat().headers["x-clasp-deployment"])

    worker = threading.Thread(target=slow)
    worker.start()
    primary.wait_for(1)
    # The primary's one slot is taken: the next request goes to the secondary at once.
    assert gw.chat().headers["x-clasp-deployment"] == "secondary"
    worker.join(10)
    release.set()
    assert results == ["primary"]
    # Slot released (also after failures): the primary serves again.
    assert gw.chat().headers["x-clasp-deployment"] == "primary"
    primary.script = lambda body, rec: Error(500)
    gw.chat()
    primary.script = lambda body, rec: Text("from primary")
    assert gw.chat().headers["x-clasp-deployment"] == "primary"


def test_replicas_share_the_counts(kit: Any, up: tuple[FakeUpstream, FakeUpstream], tmp_path: Path) -> None:
    primary, secondary = up
    primary.script = lambda body, rec: Text("from primary")
    config = {
        "state": {"backend": "sqlite", "url": str(tmp_path / "state.sqlite3")},
        "models": {"chain": [kit.deployment(primary.base_url, "primary", limits={"rpm": 4}),
                             kit.deployment(secondary.base_url, "secondary")]},
    }
    with GatewayServer(config_from(config)) as one, GatewayServer(config_from(config)) as two:
        served = []
        for i in range(6):
            server = (one, two)[i % 2]
            response = httpx.post(server.base_url + "/v1/chat/completions", headers={"x-api-key": GATEWAY_KEY},
                                  json={"model": "chain", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
            served.append(response.headers["x-clasp-deployment"])
    assert served == ["primary"] * 4 + ["secondary"] * 2
    assert kit.chat_requests(primary) == 4


def test_the_catalogue_shows_limits_headroom_and_the_learned_p99(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "fallback,router")
    primary, secondary = up
    primary.script = lambda body, rec: Text("from primary")
    gw = serve([kit.deployment(primary.base_url, "primary", limits={"rpm": 2, "max_concurrency": 4}),
                kit.deployment(secondary.base_url, "secondary")], fallback={"hedge": {"min_samples": 2}})
    for _ in range(3):
        assert gw.chat().status_code == 200
    rows = {r["id"]: r for r in gw.http.get("/-/catalogue").json()["deployments"]}
    assert rows["primary"]["limits"] == {"rpm": 2, "max_concurrency": 4}
    assert rows["primary"]["headroom"] == 0.0 and rows["primary"]["available"] is False
    assert rows["primary"]["ttfb_p99_ms"] is not None and rows["primary"]["ttfb_p99_ms"] > 0
    assert rows["secondary"]["limits"] is None and rows["secondary"]["available"] is True


def test_a_deployments_own_retry_policy_overrides_the_global_one(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream],
) -> None:
    primary, secondary = up
    primary.script = lambda body, rec: Error(503)
    secondary.script = lambda body, rec: Error(503)
    third = FakeUpstream("openai").start()
    try:
        third.script = lambda body, rec: Text("from third")
        gw = serve([kit.deployment(primary.base_url, "primary", retry={"attempts": 3, "base_delay": "10ms"}),
                    kit.deployment(secondary.base_url, "secondary", retry={"on": ["429"]}),
                    kit.deployment(third.base_url, "third")],
                   fallback={"retry": {"attempts": 1, "base_delay": 0.01, "budget": {"min_retries": 10}}})
        assert gw.text(gw.chat()) == "from third"
        assert kit.chat_requests(primary) == 4  # its own 3 retries, not the global 1
        assert kit.chat_requests(secondary) == 1  # 503 does not retry there
    finally:
        third.stop()


def test_a_hanging_deployment_with_a_concurrency_limit_frees_its_slot_on_timeout(
    serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream],
) -> None:
    primary, secondary = up
    primary.script = lambda body, rec: Hang()
    gw = serve([kit.deployment(primary.base_url, "primary", limits={"max_concurrency": 1}),
                kit.deployment(secondary.base_url, "secondary")], fallback=FAST)
    for _ in range(2):
        assert gw.text(gw.chat()) == "from secondary"
    assert kit.chat_requests(primary) == 2  # the first timeout released the slot for the second


def test_limit_and_retry_mistakes_are_reported_with_their_paths() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from({"models": {"m": [{"model": "openai/x", "api_key": "sk-x",
                                       "limits": {"rpm": 0, "tmp": 5}}]}})
    text = str(caught.value)
    assert "models.m.0.limits.rpm" in text and "models.m.0.limits.tmp" in text and "did you mean" in text
    config = config_from({"models": {"m": [{"model": "openai/x", "api_key": "sk-x",
                                            "retry": {"attempts": -1, "on": ["teapot"], "budget": 3}}]}})
    with pytest.raises(ConfigError) as caught:
        parse_settings(config)
    text = str(caught.value)
    assert "models.m.0.retry.attempts" in text and "models.m.0.retry.on.0" in text and "models.m.0.retry.budget" in text
    config = config_from({"models": {}, "fallback": {"hedge": {"quantile": 0.3, "budget": {"ratio": 2}, "flor": 1}}})
    with pytest.raises(ConfigError) as caught:
        parse_settings(config)
    text = str(caught.value)
    assert "fallback.hedge.quantile" in text and "fallback.hedge.budget.ratio" in text and "fallback.hedge.flor" in text

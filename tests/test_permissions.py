"""Permission checks before routing (``clasp_gateway/wire/permissions.py``): each credential
is probed off the hot path; a key the provider refuses its model (401/403/404) leaves
rotation before a client request can reach it, a deployment with no usable key is
skipped without an upstream call, transient failures change nothing, and a fixed key
comes back. Probes are driven by calling ``PermissionChecker.step`` on the gateway's
own loop with an injected clock: no test sleeps for a period to pass."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import yaml

from clasp_gateway import hookimpl
from clasp_gateway.config import ConfigError
from clasp_gateway.plugins import PluginManager
from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import GATEWAY_KEY, Cut, Error, FakeUpstream, GatewayServer, Hang, Reply, Text, config_from
from clasp_gateway.testing.fakes.keys import key_of
from clasp_gateway.testing.fakes.record import Recorded
from clasp_gateway.types import Secret
from clasp_gateway.wire.credentials import KeyPool
from clasp_gateway.wire.ratelimits import parse_rate_limits

K1, K2, K3 = "sk-perm-first-1111111111", "sk-perm-second-2222222222", "sk-perm-third-3333333333"
POOL = ["${PERM_K1}", "${PERM_K2}", "${PERM_K3}"]
PROBE = [{"role": "user", "content": "ping"}]
MANUAL = {"enabled": True, "probe_at_startup": False, "interval": 0, "recheck_interval": 60, "timeout": 10}
"""Probes only when a test calls ``step`` (interval 0: no periodic round of its own)."""


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERM_K1", K1)
    monkeypatch.setenv("PERM_K2", K2)
    monkeypatch.setenv("PERM_K3", K3)
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "claude")  # the core's behaviour, without retries


class Clock:
    """The checker's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Hooks:
    """Catches the gateway's event loop (to run ``step`` on it) and its events."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.events: list[dict[str, Any]] = []

    @hookimpl
    def startup(self, app: Any, config: Any) -> None:
        self.loop = asyncio.get_running_loop()

    @hookimpl
    def record(self, ctx: Any, event: dict[str, Any]) -> None:
        self.events.append(event)


class Gateway:
    """A running gateway, its hooks, and its permission checker on an injected clock."""

    def __init__(self, data: dict[str, Any]) -> None:
        config = config_from(data)
        self.hooks = Hooks()
        pm = PluginManager()
        pm.load(config.plugin_paths)
        pm.register(self.hooks, name="test-hooks")
        self.server = GatewayServer(config, create_app(config, pm))
        self.clock = Clock()

    def __enter__(self) -> Gateway:
        self.server.start()
        self.checker.clock = self.clock
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.stop()

    @property
    def checker(self) -> Any:
        return self.server.gateway.permissions

    def step(self) -> list[Any]:
        """One round of probes, on the gateway's loop (as its background task runs it)."""
        assert self.hooks.loop is not None
        return asyncio.run_coroutine_threadsafe(self.checker.step(), self.hooks.loop).result(timeout=60)

    def chat(self, model: str = "m", *, stream: bool = False) -> httpx.Response:
        return httpx.post(self.server.base_url + "/v1/chat/completions",
                          headers={"authorization": f"Bearer {GATEWAY_KEY}"}, timeout=30,
                          json={"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream})

    def messages(self, model: str = "m") -> httpx.Response:
        return httpx.post(self.server.base_url + "/v1/messages", timeout=30,
                          headers={"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"},
                          json={"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]})


def wait_until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    """Wait for something the gateway does on its own (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the gateway did not get there"
        time.sleep(0.01)


def is_probe(rec: Recorded) -> bool:
    return rec.json.get("messages") == PROBE and rec.json.get("max_tokens") == 1


def client_keys(up: FakeUpstream) -> list[str | None]:
    """The key each client request (not a probe) carried, in order."""
    return [key_of(r) for r in up.requests if r.path.endswith("/chat/completions") and not is_probe(r)]


def probe_keys(up: FakeUpstream) -> list[str]:
    return [key_of(r) or "" for r in up.requests if is_probe(r)]


def probes_answer(replies: dict[str, Reply | Callable[[], Reply]]) -> Callable[[dict, Recorded], Reply | None]:
    """A script: probes get ``replies[key]`` (a callable: per probe), client requests "ok"."""

    def script(body: dict, rec: Recorded) -> Reply | None:
        found = replies.get(key_of(rec) or "") if is_probe(rec) else None
        return (found() if callable(found) else found) if found is not None else Text("ok")

    return script


def built(data: dict[str, Any]) -> Any:
    """The (not started) Gateway that ``clasp serve`` would build from ``data``."""
    app: Any = create_app(config_from(data))
    return app.starlette_app.state.gateway


def pool_config(up: FakeUpstream, permissions: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"permissions": permissions or MANUAL,
            "models": {"m": [{"model": "openai/gpt-4o", "api_base": up.base_url, "api_keys": POOL, **extra}]}}


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as fake:
        yield fake


# --- keys without access --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_key_without_access_never_carries_a_client_request(
    up: FakeUpstream, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    up.script = probes_answer({K2: Error(status)})
    with Gateway(pool_config(up)) as gw, caplog.at_level(logging.INFO):
        probed = gw.step()
        assert sorted(c.label for c in probed) == ["API key ${PERM_K1}", "API key ${PERM_K2}", "API key ${PERM_K3}"]
        for _ in range(6):
            response = gw.chat()
            assert response.status_code == 200, response.text
        assert gw.messages().status_code == 200
        [dep] = gw.server.gateway.config.deployments()
        access = gw.checker.status(dep)
    assert sorted(probe_keys(up)) == sorted([K1, K2, K3])  # one probe per key, each with its own key
    used = client_keys(up)
    assert len(used) == 7 and K2 not in used and set(used) == {K1, K3}
    warning = [r.getMessage() for r in caplog.records if r.name == "clasp.permissions" and r.levelno == logging.WARNING]
    assert len(warning) == 1 and "API key ${PERM_K2} has no access to model gpt-4o" in warning[0]
    assert f"({status}" in warning[0] or f" {status}:" in warning[0]
    assert not any(secret[-6:] in caplog.text for secret in (K1, K2, K3))  # not even a fragment
    assert access["available"] is True
    assert [c["access"] for c in access["credentials"]] == ["ok", "no_access", "ok"]
    assert K2 not in str(access)


def test_a_literal_key_is_named_by_position_and_id(up: FakeUpstream, caplog: pytest.LogCaptureFixture) -> None:
    literal = "sk-literal-in-the-file-4444444444"
    up.script = probes_answer({literal: Error(401)})
    with Gateway(pool_config(up, api_keys=["${PERM_K1}", literal])) as gw, caplog.at_level(logging.WARNING):
        gw.step()
        assert gw.chat().status_code == 200
    assert literal not in client_keys(up)
    [line] = [r.getMessage() for r in caplog.records if r.name == "clasp.permissions"]
    assert "API key #2 (literal, id " in line and literal[-4:] not in caplog.text


def test_requests_before_the_first_round_finished_are_served_normally(up: FakeUpstream) -> None:
    # The start-up probes hang (a provider slow to answer): serving does not wait for them.
    up.script = probes_answer({k: Hang(30) for k in (K1, K2, K3)})
    permissions = {"enabled": True, "probe_at_startup": True, "timeout": 30}
    with Gateway(pool_config(up, permissions)) as gw:
        up.wait_for(3)  # the three start-up probes are in flight
        assert gw.chat().status_code == 200
        assert gw.checker.rounds == 0
    assert len(client_keys(up)) == 1


def test_start_up_probes_run_in_the_background_and_take_a_refused_key_out(up: FakeUpstream) -> None:
    up.script = probes_answer({K3: Error(401)})
    with Gateway(pool_config(up, {"enabled": True})) as gw:
        up.wait_for(3)
        wait_until(lambda: gw.checker.rounds == 1)  # the background round, not a call of ours
        for _ in range(4):
            assert gw.chat().status_code == 200
    assert sorted(probe_keys(up)) == sorted([K1, K2, K3])
    assert K3 not in client_keys(up)


def test_probes_are_off_when_disabled(up: FakeUpstream) -> None:
    with Gateway(pool_config(up, {"enabled": False})) as gw:
        assert gw.chat().status_code == 200
        assert gw.checker._task is None
    assert probe_keys(up) == [] and len(up.requests) == 1


# --- transient failures ---------------------------------------------------------------------------


def test_transient_probe_failures_do_not_take_a_key_out(up: FakeUpstream) -> None:
    up.script = probes_answer({K1: Error(503), K2: Cut(Text("x"), before_headers=True), K3: Error(429)})
    with Gateway(pool_config(up)) as gw:
        gw.step()
        states = {c.label: (c.state, c.slot.no_access) for c in gw.checker.credentials()["openai/gpt-4o"]}
        for _ in range(6):
            assert gw.chat().status_code == 200
        assert gw.checker.blocked == {}
    assert set(states.values()) == {("inconclusive", "")}
    assert set(client_keys(up)) == {K1, K2, K3}


def test_a_probe_that_times_out_or_cannot_connect_changes_nothing(up: FakeUpstream) -> None:
    with FakeUpstream("openai") as gone:
        closed = gone.base_url
    up.script = probes_answer({K1: Hang(30)})
    config = {
        "permissions": {**MANUAL, "timeout": 0.3},
        "models": {
            "m": [{"model": "openai/gpt-4o", "api_base": up.base_url, "api_key": "${PERM_K1}"}],
            "down": [{"model": "openai/gpt-4o-mini", "api_base": closed, "api_key": "${PERM_K2}"}],
        },
    }
    with Gateway(config) as gw:
        gw.step()
        creds = {d: c[0] for d, c in gw.checker.credentials().items()}
        assert gw.checker.blocked == {}
        assert gw.chat().status_code == 200
    assert creds["openai/gpt-4o"].state == "inconclusive" and "no answer within 0.3s" in creds["openai/gpt-4o"].reason
    assert creds["openai/gpt-4o-mini"].state == "inconclusive" and "cannot reach" in creds["openai/gpt-4o-mini"].reason
    assert creds["openai/gpt-4o"].slot.no_access == "" and client_keys(up) == [K1]


def test_a_transient_failure_of_a_key_already_out_keeps_it_out(up: FakeUpstream) -> None:
    answers: dict[str, Reply | Callable[[], Reply]] = {K2: Error(401)}
    up.script = probes_answer(answers)
    with Gateway(pool_config(up)) as gw:
        gw.step()
        answers[K2] = Error(502)
        gw.clock.now += 60
        assert [c.label for c in gw.step()] == ["API key ${PERM_K2}"]
        for _ in range(4):
            assert gw.chat().status_code == 200
        [cred] = [c for c in gw.checker.credentials()["openai/gpt-4o"] if c.label.endswith("K2}")]
    assert cred.state == "no_access" and cred.slot.no_access
    assert K2 not in client_keys(up)


# --- a fixed key comes back -----------------------------------------------------------------------


def test_a_key_taken_out_is_probed_again_and_comes_back_when_fixed(
    up: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    answers: dict[str, Reply | Callable[[], Reply]] = {K2: Error(403)}
    up.script = probes_answer(answers)
    with Gateway(pool_config(up)) as gw, caplog.at_level(logging.WARNING):
        gw.step()
        assert gw.step() == []  # nothing is due yet
        gw.clock.now += 59
        assert gw.step() == []
        answers.clear()  # the provider granted the key access
        gw.clock.now += 1
        assert [c.label for c in gw.step()] == ["API key ${PERM_K2}"]  # only the key left out
        for _ in range(3):
            assert gw.chat().status_code == 200
    assert probe_keys(up).count(K2) == 2
    assert K2 in client_keys(up)
    assert any("API key ${PERM_K2} has access to model gpt-4o again; back in rotation" in r.getMessage()
               for r in caplog.records)


def test_every_key_is_probed_again_each_interval(up: FakeUpstream) -> None:
    with Gateway(pool_config(up, {**MANUAL, "interval": 900})) as gw:
        assert len(gw.step()) == 3
        gw.clock.now += 899
        assert gw.step() == []
        gw.clock.now += 1
        assert len(gw.step()) == 3
    assert len(probe_keys(up)) == 6


# --- deployments with no usable key ---------------------------------------------------------------


def test_a_deployment_with_no_usable_key_is_skipped_without_an_upstream_call(up: FakeUpstream) -> None:
    with FakeUpstream("openai") as second:
        up.script = probes_answer({K1: Error(401), K2: Error(404)})
        config = {
            "permissions": MANUAL,
            "models": {"m": [
                {"model": "openai/gpt-4o", "api_base": up.base_url, "api_keys": ["${PERM_K1}", "${PERM_K2}"]},
                {"model": "openai/gpt-4o-mini", "api_base": second.base_url, "api_key": "${PERM_K3}"},
            ]},
        }
        with Gateway(config) as gw:
            gw.step()
            assert set(gw.checker.blocked) == {"openai/gpt-4o"}
            first = gw.chat()
            streamed = gw.chat(stream=True)
            anthropic = gw.messages()
            status = gw.checker.status(gw.server.gateway.config.models[0].deployments[0])
        assert first.status_code == streamed.status_code == anthropic.status_code == 200
        assert first.headers["x-clasp-deployment"] == "openai/gpt-4o-mini"
        assert client_keys(up) == []  # only the two probes reached the first deployment
        assert client_keys(second) == [K3, K3, K3]
    skips = [e for e in gw.hooks.events if e["kind"] == "skip"]
    assert len(skips) == 3 and {e["deployment"] for e in skips} == {"openai/gpt-4o"}
    assert "none of its credentials has access to model gpt-4o" in skips[0]["reason"]
    requests = [e for e in gw.hooks.events if e["kind"] == "request"]
    assert [[a["deployment"] for a in e["attempts"]] for e in requests] == [["openai/gpt-4o-mini"]] * 3
    assert status["available"] is False and "none of its credentials has access" in status["reason"]


def test_when_no_candidate_has_access_the_client_gets_a_clear_error(up: FakeUpstream) -> None:
    up.script = probes_answer({K1: Error(403)})
    config = {"permissions": MANUAL,
              "models": {"m": [{"model": "openai/gpt-4o", "api_base": up.base_url, "api_key": "${PERM_K1}"}]}}
    with Gateway(config) as gw:
        gw.step()
        openai_error = gw.chat()
        anthropic_error = gw.messages()
    assert openai_error.status_code == anthropic_error.status_code == 403
    body = openai_error.json()["error"]
    assert body["type"] == "permission_error"
    assert "openai/gpt-4o: skipped: none of its credentials has access to model gpt-4o" in body["message"]
    assert anthropic_error.json()["type"] == "error"
    assert anthropic_error.json()["error"]["type"] == "permission_error"
    assert K1 not in openai_error.text + anthropic_error.text
    assert client_keys(up) == []


def test_a_rotated_key_file_is_used_at_once_even_on_a_skipped_deployment(up: FakeUpstream, tmp_path: Any) -> None:
    secret = tmp_path / "key"
    secret.write_text("sk-revoked-55555555555555\n")
    up.script = probes_answer({"sk-revoked-55555555555555": Error(401)})
    config = {"permissions": MANUAL, "models": {"m": [
        {"model": "openai/gpt-4o", "api_base": up.base_url, "api_key": f"file:{secret}",
         "key_pool": {"reread_interval": 0.05}}]}}
    with Gateway(config) as gw:
        gw.step()
        assert gw.chat().status_code == 500  # skipped (the provider's 401 is the gateway's fault: a 500)
        secret.write_text("sk-rotated-66666666666666\n")
        assert gw.hooks.loop is not None
        credentials = gw.server.gateway.providers.credentials
        # Re-read now. The file watcher (every 0.05 s here) may have seen the change first,
        # or be reading it still: either way, wait for the new key to be in place.
        deadline = time.monotonic() + 10
        while not any(s.value == "sk-rotated-66666666666666" for s in credentials._files[str(secret)]):
            assert time.monotonic() < deadline, "the rotated key file was never re-read"
            asyncio.run_coroutine_threadsafe(credentials.check_files(), gw.hooks.loop).result(timeout=10)
            time.sleep(0.01)
        assert gw.chat().status_code == 200
    assert client_keys(up) == ["sk-rotated-66666666666666"]


# --- the pool and the configuration ---------------------------------------------------------------


def test_the_pool_leaves_out_keys_without_access_unless_all_are() -> None:
    pool = KeyPool("d", [Secret("${A}", "a-value"), Secret("${B}", "b-value"), Secret("${C}", "c-value")])
    a, b, c = pool.slots
    pool.set_access(b, "403: no access")
    assert {pool.pick().secret.ref for _ in range(6)} == {"${A}", "${C}"}  # type: ignore[union-attr]
    assert pool.has_alternative([a]) and not pool.has_alternative([a, c])
    assert pool.status()[1]["no_access"] == "403: no access"
    pool.set_access(a, "401")
    pool.set_access(c, "401")
    assert pool.pick() is not None  # all out: routing skips the deployment; a direct caller still gets a key
    pool.reject(a, 401, parse_rate_limits({}))
    assert a.benched_until > 0
    pool.set_access(a, "")  # a successful probe: back, and off the bench the refusal put it on
    assert a.benched_until == 0 and a.no_access == ""
    c.secret.value = "c-rotated"
    pool.refresh()
    assert c.no_access == ""  # a new key is in rotation until its own probe says otherwise


def test_the_permissions_section_is_checked_with_key_paths(up: FakeUpstream) -> None:
    bad = pool_config(up, {"enabled": "yes", "interval": "soon", "timeout": 0, "concurency": 2})
    with pytest.raises(ConfigError) as info:
        create_app(config_from(bad))
    problems = "\n".join(info.value.problems)
    assert "permissions.enabled: expected true or false" in problems
    assert "permissions.interval: expected a duration" in problems
    assert "permissions.timeout: expected a duration >= 0.1s" in problems
    assert "permissions.concurency" in problems and "concurrency" in problems
    settings = built(pool_config(up, {"interval": "30m"})).permissions.settings
    assert settings.interval == 1800 and settings.recheck_interval == 60


def test_the_environment_sets_the_default_and_the_file_wins(up: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    def enabled(permissions: dict[str, Any] | None) -> bool:
        data = yaml.safe_load(yaml.safe_dump(pool_config(up, permissions)))
        if permissions is None:
            data.pop("permissions")
        return bool(built(data).permissions.settings.enabled)

    monkeypatch.setenv("CLASP_PERMISSION_PROBES", "off")
    assert not enabled(None) and enabled({"enabled": True})
    monkeypatch.delenv("CLASP_PERMISSION_PROBES")
    assert enabled(None) and not enabled({"enabled": False})


# --- with clasp-fallback: the status page and the exhausted answer --------------------------------


def test_health_providers_shows_why_a_deployment_is_unavailable(
    up: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "claude,fallback")
    with FakeUpstream("openai") as second:
        up.script = probes_answer({K1: Error(401)})
        second.script = probes_answer({K2: Error(403)})
        config = {"permissions": MANUAL, "models": {"m": [
            {"model": "openai/gpt-4o", "api_base": up.base_url, "api_key": "${PERM_K1}"},
            {"model": "openai/gpt-4o-mini", "api_base": second.base_url, "api_key": "${PERM_K2}"},
        ]}}
        with Gateway(config) as gw:
            gw.step()
            health = httpx.get(gw.server.base_url + "/health/providers", headers={"x-api-key": GATEWAY_KEY}).json()
            failed = gw.chat()
        assert client_keys(up) == [] and client_keys(second) == []
    assert health["status"] == "down"
    first = health["deployments"][0]
    assert first["access"]["available"] is False
    assert first["access"]["credentials"] == [
        {"credential": "API key ${PERM_K1}", "access": "no_access", "reason": first["access"]["credentials"][0]["reason"],
         "checked_s_ago": 0.0}]
    assert "none of its credentials has access to model gpt-4o" in first["access"]["reason"]
    assert K1 not in str(health) and K2 not in str(health)
    assert failed.status_code == 529
    message = failed.json()["error"]["message"]
    assert "openai/gpt-4o: skipped (none of its credentials has access to model gpt-4o" in message
    assert "openai/gpt-4o-mini: skipped (none of its credentials has access to model gpt-4o-mini" in message

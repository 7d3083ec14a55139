"""Upstream credentials: several keys per deployment, Azure AD tokens, custom and secret
headers, rotated secret files, ``clasp check`` per key, and no secret ever in a log,
an error, ``/-/plugins`` or ``clasp check`` output."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import pytest
import yaml

from clasp_gateway.config import ConfigError, parse_config
from clasp_gateway.errors import UpstreamError
from clasp_gateway.redact import redact
from clasp_gateway.testing import (
    GATEWAY_KEY,
    Error,
    FakeClock,
    FakeTokenEndpoint,
    FakeUpstream,
    GatewayServer,
    Raw,
    Text,
    config_from,
    free_port,
)
from clasp_gateway.testing.fakes.keys import key_of, openai_key_error
from clasp_gateway.testing.fakes.record import Recorded
from clasp_gateway.types import Secret
from clasp_gateway.wire.credentials import AzureADConfig, AzureADTokens, KeyPool, credential_settings
from clasp_gateway.wire.ratelimits import parse_rate_limits

CLI = [sys.executable, "-m", "clasp_gateway.cli"]
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def only_the_claude_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credential behaviour belongs to the core: keep retry/fallback plugins out of it."""
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "claude")


def sdk(server: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=GATEWAY_KEY, max_retries=0)


def chat(server: GatewayServer, model: str = "gpt-4o") -> httpx.Response:
    return httpx.post(server.base_url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                      json={"model": model, "messages": USER}, timeout=30)


# --- configuration -----------------------------------------------------------------------------


def test_api_keys_take_env_and_file_references(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CRED_K1", "cred-value-one-111")
    (tmp_path / "k3").write_text("cred-value-three-333\n")
    config = parse_config({"models": {"m": [{
        "model": "openai/gpt-4o",
        "api_keys": ["${CRED_K1}", "${CRED_K2_UNSET}", f"file:{tmp_path / 'k3'}"],
        "key_pool": {"auth_cooldown": 120, "min_remaining_requests": 5},
    }]}})
    dep = config.models[0].deployments[0]
    assert [k.ref for k in dep.keys] == ["${CRED_K1}", "${CRED_K2_UNSET}", f"file:{tmp_path / 'k3'}"]
    assert [k.value for k in dep.keys] == ["cred-value-one-111", None, "cred-value-three-333"]
    assert "_problems" not in dep.settings  # one unset key does not disable the deployment
    pool = credential_settings(dep).key_pool
    assert pool.auth_cooldown == 120 and pool.min_remaining_requests == 5 and pool.rate_limit_cooldown == 5.0
    assert "cred-value" not in repr(dep.settings)


def test_credential_settings_are_validated_with_key_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"models": {
            "a": [{"model": "openai/gpt-4o", "api_key": "x-123456", "key_pool": {"cooldown": 3, "auth_cooldown": -1}}],
            "b": [{"model": "azure/gpt-4o", "api_base": "http://x", "azure_ad": {"client_id": "c"}}],
            "c": [{"model": "azure/gpt-4o", "api_base": "http://y", "api_key": "${K}",
                   "azure_ad": {"tenant_id": "t", "client_id": "c", "client_secret": "${S}", "tenant": "?"}}],
        }})
    text = str(info.value)
    for fragment in (
        "models.a.0.key_pool.cooldown: unknown key; did you mean 'auth_cooldown'?", "models.a.0.key_pool.auth_cooldown: expected a non-negative",
        "models.b.0.azure_ad.tenant_id: required", "models.b.0.azure_ad.client_secret: required",
        "models.c.0.azure_ad: use either api_key/api_keys or azure_ad", "models.c.0.azure_ad.tenant: unknown key; did you mean 'tenant_id'?",
    ):
        assert fragment in text, fragment


def test_azure_ad_config_resolves_references_and_reports_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRED_TENANT", "contoso-tenant")
    monkeypatch.delenv("AZURE_API_KEY", raising=False)
    config = parse_config({"models": {"m": [{
        "model": "azure/gpt-4o", "api_base": "https://contoso.openai.azure.com",
        "azure_ad": {"tenant_id": "${CRED_TENANT}", "client_id": "app-id", "client_secret": "${CRED_AAD_UNSET}"},
    }]}})
    dep = config.models[0].deployments[0]
    ad = credential_settings(dep).azure_ad
    assert isinstance(ad, AzureADConfig)
    assert ad.token_url == "https://login.microsoftonline.com/contoso-tenant/oauth2/v2.0/token"
    assert ad.scope == "https://cognitiveservices.azure.com/.default"
    assert dep.keys == []  # no AZURE_API_KEY default next to Azure AD
    assert any("set CRED_AAD_UNSET (used by models.m.0.azure_ad.client_secret)" in w for w in config.warnings)


def test_custom_and_secret_headers_reach_the_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRED_ORG", "org-acme")
    monkeypatch.setenv("CRED_SESSION", "cred-session-token-0f9e8d7c")
    with FakeUpstream("openai") as up:
        config = config_from({"models": {"*": [{
            "model": "openai/gpt-4o", "api_base": up.base_url, "api_key": "sk-upstream-test-1234567890",
            "headers": {"OpenAI-Organization": "${CRED_ORG}", "X-Static": "plain", "X-Default": "${CRED_NOPE:-fallback}"},
            "secret_headers": {"X-Session-Token": "${CRED_SESSION}"},
        }]}})
        with GatewayServer(config) as server:
            assert chat(server).status_code == 200
        headers = up.last.headers
        assert headers["openai-organization"] == "org-acme" and headers["x-static"] == "plain"
        assert headers["x-default"] == "fallback"
        assert headers["x-session-token"] == "cred-session-token-0f9e8d7c"
    assert redact("token cred-session-token-0f9e8d7c!") == "token ***!"


def test_an_unset_secret_header_disables_the_deployment_with_a_hint() -> None:
    config = config_from({"models": {"*": [{"model": "openai/gpt-4o", "api_key": "sk-123456789",
                                           "secret_headers": {"x-session": "${CRED_SESSION_UNSET}"}}]}})
    assert any("set CRED_SESSION_UNSET (used by secret header x-session)" in w for w in config.warnings)


# --- the key pool --------------------------------------------------------------------------------


def secrets(*values: str | None) -> list[Secret]:
    return [Secret(f"${{POOL_K{i + 1}}}", v, f"set POOL_K{i + 1}") for i, v in enumerate(values)]


def test_round_robin_skips_unset_and_benched_keys() -> None:
    pool = KeyPool("dep", secrets("a-111111", None, "c-333333", "d-444444"))
    assert [pool.pick().value for _ in range(4)] == ["a-111111", "c-333333", "d-444444", "a-111111"]  # type: ignore[union-attr]
    slot_c = pool.slots[2]
    assert pool.reject(slot_c, 429, parse_rate_limits({"retry-after": "30"})) == pytest.approx(30, abs=0.1)
    assert [pool.pick().value for _ in range(3)] == ["d-444444", "a-111111", "d-444444"]  # type: ignore[union-attr]
    assert pool.has_alternative([pool.slots[0]]) and not pool.has_alternative([pool.slots[0], pool.slots[3]])
    assert pool.status()[2]["reason"] == "rate-limited" and pool.status()[1]["set"] is False


def test_when_every_key_is_benched_the_one_back_first_is_used() -> None:
    pool = KeyPool("dep", secrets("a-111111", "b-222222"))
    pool.reject(pool.slots[0], 401, parse_rate_limits({}))
    pool.reject(pool.slots[1], 429, parse_rate_limits({"retry-after": "2"}))
    assert pool.pick() is pool.slots[1]
    assert pool.soonest_available() == pytest.approx(2, abs=0.1)


def test_a_rotated_key_starts_with_a_clean_record() -> None:
    pool = KeyPool("dep", secrets("a-111111", "b-222222"))
    pool.reject(pool.slots[0], 401, parse_rate_limits({}))
    pool.slots[0].secret.value = "a-rotated-999999"
    pool.refresh()
    assert pool.slots[0].benched_until == 0 and pool.pick() is pool.slots[0]


def test_key_labels_are_references_or_positions_never_values() -> None:
    pool = KeyPool("dep", [Secret("${A}", "va-123456"), Secret("file:/run/secrets/b", "vb-123456"),
                           Secret("literal-value-123456", "literal-value-123456")])
    import hashlib

    digest = hashlib.sha256(b"literal-value-123456").hexdigest()[:8]
    assert [s.label for s in pool.slots] == ["${A}", "file:/run/secrets/b", f"#3 (literal, id {digest})"]


# --- rotated secret files -------------------------------------------------------------------------


def test_a_rotated_key_file_is_picked_up_without_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clasp")
    key_file = tmp_path / "openai-key"
    key_file.write_text("rotate-old-key-aaaaaa\n")
    with FakeUpstream("openai", require_key="rotate-old-key-aaaaaa") as up:
        config = config_from({"models": {"*": [{
            "model": "openai/gpt-4o", "api_base": up.base_url, "api_keys": [f"file:{key_file}"],
            "key_pool": {"reread_interval": 0.1},
        }]}})
        with GatewayServer(config) as server:
            assert chat(server).status_code == 200
            # The provider rotates: the old key stops working, the mounted file changes.
            up.require_key = "rotate-new-key-bbbbbb"
            assert chat(server).status_code == 500  # 401 upstream: our key is refused
            key_file.write_text("rotate-new-key-bbbbbb\n")
            deadline = time.monotonic() + 5
            while chat(server).status_code != 200:
                assert time.monotonic() < deadline, "the new key was not picked up"
                time.sleep(0.05)
        assert up.last.bearer == "rotate-new-key-bbbbbb"
    assert f"file:{key_file}" in caplog.text and "changed" in caplog.text
    assert "rotate-new-key" not in caplog.text and "rotate-old-key" not in caplog.text
    assert redact("rotate-new-key-bbbbbb") == "***"


# --- Azure AD -------------------------------------------------------------------------------------


def azure_config(up: FakeUpstream, aad: FakeTokenEndpoint, **ad: Any) -> Any:
    return config_from({"models": {"gpt-4o": [{
        "model": "azure/gpt-4o", "api_base": up.base_url,
        "azure_ad": {"tenant_id": aad.tenant, "client_id": aad.client_id, "client_secret": "${CRED_AAD_SECRET}",
                     "token_url": aad.token_url, **ad},
    }]}})


def only_valid_tokens(aad: FakeTokenEndpoint) -> Any:
    """Azure's side: accept a bearer token only while the token endpoint says it is valid."""

    def script(body: dict, rec: Recorded) -> Any:
        if "api-key" in rec.headers or not aad.valid(rec.bearer):
            return Error(401)
        return Text("hello from azure")

    return script


@pytest.fixture
def aad_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    value = "aad-client-secret-Zm9vYmFyYmF6"
    monkeypatch.setenv("CRED_AAD_SECRET", value)
    monkeypatch.delenv("AZURE_API_KEY", raising=False)
    return value


@pytest.fixture
def azure() -> Iterator[FakeUpstream]:
    with FakeUpstream("azure", require_key=True) as up:
        yield up


def test_azure_ad_token_is_sent_as_bearer_and_fetched_once_for_a_burst(aad_secret: str, azure: FakeUpstream) -> None:
    with FakeTokenEndpoint(client_secret=aad_secret, delay=0.3) as aad:
        azure.script = only_valid_tokens(aad)
        with GatewayServer(azure_config(azure, aad)) as server:

            async def burst() -> list[int]:
                async with httpx.AsyncClient(timeout=30) as client:
                    responses = await asyncio.gather(*(
                        client.post(server.base_url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": USER},
                                    headers={"authorization": f"Bearer {GATEWAY_KEY}"})
                        for _ in range(12)
                    ))
                return [r.status_code for r in responses]

            assert asyncio.run(burst()) == [200] * 12
            assert aad.count == 1  # one token request for twelve concurrent requests
            assert chat(server).status_code == 200 and aad.count == 1  # cached
        form = aad.requests[0].form
        assert form == {"grant_type": "client_credentials", "client_id": aad.client_id, "client_secret": aad_secret,
                        "scope": "https://cognitiveservices.azure.com/.default"}
        rec = azure.last
        assert rec.bearer in aad.issued and "api-key" not in rec.headers
        assert rec.path == "/openai/deployments/gpt-4o/chat/completions"
        assert redact(f"token={rec.bearer}") == "token=***"


def test_azure_ad_token_is_refreshed_before_it_expires(aad_secret: str, azure: FakeUpstream) -> None:
    # Tokens live 100 s on a clock the test moves (the token endpoint and the gateway's
    # token cache share it); the upstream refuses any expired token, so every 200 proves
    # the token sent was valid.
    clock = FakeClock()
    with FakeTokenEndpoint(client_secret=aad_secret, expires_in=100, clock=clock) as aad:
        azure.script = only_valid_tokens(aad)
        with GatewayServer(azure_config(azure, aad)) as server:
            (deployment,) = server.gateway.config.deployments()
            server.gateway.providers.credentials.token_source(deployment)._monotonic = clock
            assert chat(server).status_code == 200 and aad.count == 1
            first = azure.last.bearer
            clock.advance(79)  # before 80% of the lifetime: the cached token
            assert chat(server).status_code == 200 and aad.count == 1
            clock.advance(2)  # past 80%: the old token at once, a new one fetched meanwhile
            assert chat(server).status_code == 200 and azure.last.bearer == first
            clock.advance(14)  # past the cache's own end for the first token (100 s less a margin)
            assert chat(server).status_code == 200 and aad.count == 2 and azure.last.bearer != first
            clock.advance(200)  # idle past every expiry: the next request waits for a fresh token
            assert chat(server).status_code == 200 and aad.count == 3


async def test_a_token_near_expiry_is_refreshed_in_the_background(aad_secret: str) -> None:
    clock = [1000.0]
    with FakeTokenEndpoint(client_secret=aad_secret, expires_in=3600, delay=0.05) as aad:
        config = AzureADConfig(aad.tenant, aad.client_id, Secret("${CRED_AAD_SECRET}", aad_secret),
                               token_url=aad.token_url, path="models.x.0.azure_ad")
        async with aiohttp.ClientSession() as session:
            source = AzureADTokens("azure/gpt-4o", config, lambda: session, monotonic=lambda: clock[0])
            first = await asyncio.gather(*(source.token() for _ in range(20)))
            assert len(set(first)) == 1 and aad.count == 1  # one fetch for twenty callers
            clock[0] += 0.5 * 3600
            assert await source.token() == first[0] and source._inflight is not None
            assert source._inflight.done()  # (the first fetch) nothing started before 80%
            clock[0] += 0.35 * 3600  # past 80% of the lifetime, before its safe end
            assert await source.token() == first[0]  # the old token, without waiting...
            refresh = source._inflight
            assert refresh is not None and not refresh.done()  # ...while a new one is fetched
            assert await source.token() == first[0] and source._inflight is refresh  # one refresh at a time
            await refresh
            assert aad.count == 2 and await source.token() != first[0]
            clock[0] += 3600  # past the end: callers wait for a fresh token
            assert await source.token() not in first and aad.count == 3
            await source.close()


def test_token_endpoint_errors_name_the_deployment_and_config_key(aad_secret: str, azure: FakeUpstream,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with FakeTokenEndpoint(client_secret="the-one-azure-knows-123") as aad:
        azure.script = only_valid_tokens(aad)
        with GatewayServer(azure_config(azure, aad)) as server:
            first, second = chat(server), chat(server)
        assert first.status_code == 500 and second.status_code == 500
        message = first.json()["error"]["message"]
        for fragment in ("deployment azure/gpt-4o", "models.gpt-4o.0.azure_ad", "${CRED_AAD_SECRET}",
                         "answered 401", "invalid_client", "AADSTS7000215"):
            assert fragment in message, fragment
        assert aad.count == 1  # the failure is remembered briefly: no request storm on the endpoint
        assert not azure.requests  # nothing was sent to Azure without a token
    for text in (first.text, second.text, caplog.text):
        assert aad_secret not in text and "the-one-azure-knows-123" not in text


def test_an_unreachable_token_endpoint_is_a_clear_error(aad_secret: str, azure: FakeUpstream) -> None:
    aad = FakeTokenEndpoint(client_secret=aad_secret)
    aad.port = free_port()  # nothing listens there
    with GatewayServer(azure_config(azure, aad)) as server:
        response = chat(server)
    message = response.json()["error"]["message"]
    assert response.status_code == 500
    assert "cannot reach the token endpoint" in message and "models.gpt-4o.0.azure_ad.token_url" in message


async def test_token_sources_surface_errors_as_upstream_errors(aad_secret: str) -> None:
    with FakeTokenEndpoint(client_secret=aad_secret, fail=(400, FakeTokenEndpoint.error_body(
            "invalid_scope", 1002012, "The provided value for scope x is not valid."))) as aad:
        config = AzureADConfig(aad.tenant, aad.client_id, Secret("${CRED_AAD_SECRET}", aad_secret),
                               token_url=aad.token_url, path="models.y.1.azure_ad")
        async with aiohttp.ClientSession() as session:
            source = AzureADTokens("dep-y", config, lambda: session)
            with pytest.raises(UpstreamError) as info:
                await source.token()
    assert info.value.retryable and info.value.kind == "credentials"
    assert "invalid_scope: AADSTS1002012" in info.value.message and "Trace ID" not in info.value.message


# --- clasp check, per key ------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "OPENAI_BASE_URL"}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", CLASP_LOAD_PLUGINS="claude", **extra)
    return env


def test_clasp_check_reports_every_key(tmp_path: Path) -> None:
    good, bad = "check-good-key-1a2b3c", "check-bad-key-4d5e6f"
    with FakeUpstream("openai", require_key=good) as up:
        config = {"models": {
            "pool": [{"model": "openai/gpt-4o", "api_base": up.base_url,
                      "api_keys": ["${CHECK_K1}", "${CHECK_K2}", f"file:{tmp_path / 'missing-key'}"]}],
            "solo": [{"model": "openai/gpt-4o-mini", "api_base": up.base_url, "api_key": "${CHECK_K1}"}],
        }}
        path = tmp_path / "clasp.yaml"
        path.write_text(yaml.safe_dump(config))
        done = subprocess.run([*CLI, "check", "--config", str(path), "--timeout", "5"],
                              env=clean_env(CHECK_K1=good, CHECK_K2=bad), capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    lines = out.splitlines()
    pool_line = next(line for line in lines if line.startswith("  openai/gpt-4o:"))
    assert "only 1 of 3 API keys work" in pool_line
    assert "    key ${CHECK_K1}: reachable, authorised, model present" in lines
    assert any(line.startswith("    key ${CHECK_K2}: reachable, NOT authorised (401)") for line in lines)
    assert f"    key file:{tmp_path / 'missing-key'}: not set: create {tmp_path / 'missing-key'} with the key" in lines
    assert "  openai/gpt-4o-mini: reachable, authorised, model present" in lines
    assert good not in out and bad not in out


# --- no secret anywhere -------------------------------------------------------------------------


def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "gateway did not become ready"
        time.sleep(0.1)


def secret_fragments(secret: str) -> list[str]:
    """A secret, its last 4 characters, and its shortest own prefix (from its first
    digit or capital on: a leading plain word is a format, not a secret). Any leak of
    a 4+-character end of it contains one of these."""
    first = next((i for i, c in enumerate(secret) if c.isdigit() or c.isupper()), len(secret) - 1)
    return [secret, secret[-4:], secret[: max(4, first + 1)]]


def masked(key: str) -> str:
    """How OpenAI echoes a key it refuses (first 5 and last 4 characters)."""
    return key[:5] + "*" * (len(key) - 9) + key[-4:]


def test_secrets_never_reach_logs_errors_plugins_or_check_output(tmp_path: Path) -> None:
    """Upstreams that echo the key (in full, masked, in a JSON error, an HTML page, a
    mid-stream error event) on every path: direct, transform, ``litellm.acompletion``
    and the Anthropic pass-through. No secret and no 4+-character end of one reaches
    a client answer, the log (every logger, LiteLLM's at debug level included),
    ``/-/plugins``, ``/health/providers`` or ``clasp check``."""
    secrets_by_name = {
        "LEAK_K_ECHO": "leak-echo-key-8c2f7A6Q",           # the upstream quotes it back in full
        "LEAK_K_SK": "sk-proj-leaktest0123456789abcdEF",   # rate-limited; quoted back too
        "LEAK_K_GOOD": "leak-good-key-4b1d9E0X",
        "LEAK_SESSION": "leak-session-token-9a8b7C6D",     # a secret header, quoted back
        "LEAK_AAD_GOOD": "leak-aad-secret-good-5e6F7A",
        "LEAK_AAD_BAD": "leak-aad-secret-bad-1c2D3E",      # wrong: the token endpoint quotes it back
        "LEAK_K_MASKED": "sk-proj-Mk3Qz8Rt5Lw2Vy7Nh4PQ",   # refused: echoed masked, as OpenAI does
        "LEAK_K_LITE": "sk-proj-Lt6Hb2Nc9Xq4Zr1Ws8GU",    # mode: litellm, quoted back
        "LEAK_K_GEMINI": "AIzaLeakGemini5Tq8Wn2Rv7Xk3Pm",  # transform, quoted back
        "LEAK_K_ANT": "sk-ant-api03-Jd4Kf9Lg2Mh7Nv5Bc",    # pass-through, quoted back mid-stream
    }
    key_file = tmp_path / "file-key"
    key_file.write_text("leak-file-key-0d1e2F3Z\n")
    values = [*secrets_by_name.values(), "leak-file-key-0d1e2F3Z", "leak-gateway-key-77aA88Q"]

    def openai_script(body: dict, rec: Recorded) -> Any:
        key = key_of(rec) or ""
        if body.get("model") == "gpt-echo-session":
            return Error(400, body={"error": {"message": f"bad session {rec.headers.get('x-session-token')}",
                                              "type": "invalid_request_error", "param": None, "code": None}})
        if key in (secrets_by_name["LEAK_K_ECHO"], "leak-file-key-0d1e2F3Z", secrets_by_name["LEAK_K_LITE"]):
            return openai_key_error(key)
        if key == secrets_by_name["LEAK_K_MASKED"]:
            return Error(401, body={"error": {"message": f"Incorrect API key provided: {masked(key)}.",
                                              "type": "invalid_request_error", "param": None,
                                              "code": "invalid_api_key"}})
        if key == secrets_by_name["LEAK_K_SK"]:
            return Error(429, body={"error": {"message": f"Rate limit reached for key {key}", "type": "requests",
                                              "param": None, "code": "rate_limit_exceeded"}},
                         headers={"retry-after-ms": "50", "x-ratelimit-remaining-requests": "0"})
        return Text("fine")

    def gemini_script(body: dict, rec: Recorded) -> Any:
        key = rec.headers.get("x-goog-api-key") or ""
        return Error(400, body={"error": {"code": 400, "message": f"API key not valid: {key} ({masked(key)})",
                                          "status": "INVALID_ARGUMENT"}})

    def anthropic_script(body: dict, rec: Recorded) -> Any:
        key = rec.headers.get("x-api-key") or ""
        if not body.get("stream"):
            return Raw(body=f"<html><body>Bad gateway for {key}</body></html>".encode(), status=502,
                       content_type="text/html")
        start = {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 1}}}
        error = {"type": "error", "error": {"type": "overloaded_error", "message": f"Overloaded for {key}"}}
        return Raw(events=[f"event: message_start\ndata: {json.dumps(start)}\n\n".encode(),
                           f"event: error\ndata: {json.dumps(error)}\n\n".encode()])

    with FakeUpstream("openai", require_key=True) as up, FakeUpstream("azure", require_key=True) as az, \
            FakeUpstream("gemini", require_key=True) as gem, FakeUpstream("anthropic", require_key=True) as ant, \
            FakeTokenEndpoint(client_secret=secrets_by_name["LEAK_AAD_GOOD"]) as aad, \
            FakeTokenEndpoint(client_secret="unused", tenant="bad-tenant", fail=(401, {
                "error": "invalid_client",
                "error_description": f"AADSTS7000215: Invalid client secret provided: {secrets_by_name['LEAK_AAD_BAD']}",
            })) as bad_aad:
        up.script = openai_script
        gem.script = gemini_script
        ant.script = anthropic_script
        # Azure quotes the token it refused (not as "Bearer ...": only registration can hide it).
        az.script = lambda body, rec: Error(401, body={"error": {"code": "401", "message": f"Invalid token {rec.bearer}"}})
        ad = {"client_id": aad.client_id, "client_secret": "${LEAK_AAD_GOOD}", "tenant_id": aad.tenant,
              "token_url": aad.token_url}
        config = {
            "server": {"log_level": "debug"},
            "keys": [{"key": "${LEAK_GATEWAY_KEY}", "name": "leak"}],
            # For /health/providers: no retries, and no breaker opening mid-test (statuses below).
            "fallback": {"retry": {"attempts": 0}, "breaker": {"failures": 1000, "error_rate": None}},
            "models": {
                "pool": [{"model": "openai/gpt-4o", "api_base": up.base_url,
                          "api_keys": ["${LEAK_K_ECHO}", "${LEAK_K_SK}", "${LEAK_K_GOOD}"]}],
                "echo": [{"model": "openai/gpt-4o-mini", "api_base": up.base_url, "api_key": "${LEAK_K_ECHO}"}],
                "masked": [{"model": "openai/gpt-4o-masked", "api_base": up.base_url, "api_key": "${LEAK_K_MASKED}"}],
                "file": [{"model": "openai/gpt-4.1", "api_base": up.base_url, "api_keys": [f"file:{key_file}"]}],
                "session": [{"model": "openai/gpt-echo-session", "api_base": up.base_url, "api_key": "${LEAK_K_GOOD}",
                             "secret_headers": {"x-session-token": "${LEAK_SESSION}"}}],
                "ad-good": [{"model": "azure/gpt-4o", "api_base": az.base_url, "azure_ad": ad}],
                "ad-bad": [{"model": "azure/gpt-4o-mini", "api_base": az.base_url, "azure_ad": {
                    **ad, "tenant_id": "bad-tenant", "client_secret": "${LEAK_AAD_BAD}", "token_url": bad_aad.token_url}}],
                "lite": [{"model": "openai/gpt-4o-lite", "api_base": up.base_url, "api_key": "${LEAK_K_LITE}",
                          "mode": "litellm"}],
                "gem": [{"model": "gemini/gemini-2.5-flash", "api_base": gem.base_url, "api_key": "${LEAK_K_GEMINI}"}],
                "ant": [{"model": "anthropic/claude-sonnet-4-5-20250929", "api_base": ant.base_url,
                         "api_key": "${LEAK_K_ANT}"}],
            },
        }
        path = tmp_path / "clasp.yaml"
        path.write_text(yaml.safe_dump(config))
        env = clean_env(LEAK_GATEWAY_KEY="leak-gateway-key-77aA88Q", **secrets_by_name)
        env["CLASP_LOAD_PLUGINS"] = "claude,fallback"
        port = free_port()
        log = tmp_path / "gateway.log"
        with log.open("w") as out:
            proc = subprocess.Popen([*CLI, "serve", "--config", str(path), "--port", str(port)],
                                    env=env, stdout=out, stderr=subprocess.STDOUT)
        seen: list[str] = []
        statuses: dict[str, int] = {}
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, proc, log)
            auth = {"authorization": "Bearer leak-gateway-key-77aA88Q"}
            for model in ("pool", "echo", "masked", "file", "session", "ad-good", "ad-bad", "lite", "gem", "ant",
                          "pool"):
                for stream in (False, True):
                    r = httpx.post(base + "/v1/chat/completions", headers=auth, timeout=30,
                                   json={"model": model, "messages": USER, "stream": stream})
                    seen.append(r.text)
                    statuses[f"{model}/{stream}"] = r.status_code
                    r = httpx.post(base + "/v1/messages", headers={"x-api-key": "leak-gateway-key-77aA88Q"}, timeout=30,
                                   json={"model": model, "max_tokens": 5, "messages": USER, "stream": stream})
                    seen.append(r.text)
                    statuses[f"{model}/{stream}/anthropic"] = r.status_code
            for url in ("/-/plugins", "/v1/models", "/health", "/ready", "/health/providers"):
                seen.append(httpx.get(base + url, headers=auth, timeout=10).text)
            r = httpx.post(base + "/v1/chat/completions", headers={"authorization": "Bearer wrong-key"},
                           json={"model": "pool", "messages": USER})
            seen.append(r.text)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
        check = subprocess.run([*CLI, "check", "--config", str(path), "--timeout", "15"], env=env,
                               capture_output=True, text=True, timeout=120)
        tokens = list(aad.issued)

    logged = log.read_text()
    everything = "\n".join([logged, *seen, check.stdout, check.stderr])
    assert statuses["pool/False"] == 200 and statuses["pool/True"] == 200
    assert statuses["echo/False"] == 500 and statuses["ad-bad/False"] == 500 and statuses["ad-good/False"] == 500
    assert statuses["session/False"] == 400
    assert statuses["ant/True/anthropic"] == 200 and statuses["ant/False/anthropic"] >= 500
    assert "/health/providers" not in seen[-2] and '"deployments"' in seen[-2], seen[-2]
    assert tokens, "the good Azure AD deployment never got a token"
    for value in [*values, *tokens]:
        for piece in secret_fragments(value):
            assert piece not in everything, f"a secret leaked: {piece[:6]}... (from {value[:6]}...)"
    assert "Traceback" not in "\n".join(seen), "a traceback reached a client"
    assert "litellm." not in "\n".join(seen), "LiteLLM's internals reached a client"
    # ...and the output stays useful: references and reasons are there.
    assert "${LEAK_K_ECHO}" in logged and "was rejected (401)" in logged, logged[-3000:]
    assert "Incorrect API key provided: ***" in everything
    assert "models.ad-bad.0.azure_ad" in everything and "AADSTS7000215" in everything
    assert "key ${LEAK_K_GOOD}: reachable" in check.stdout, check.stdout[-3000:]
    assert "Traceback" not in logged, logged[max(0, logged.find("Traceback") - 1500):][:4000]

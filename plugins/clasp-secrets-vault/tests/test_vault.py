"""The vault: backend against a fake Vault on 127.0.0.1 that speaks Vault's wire."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from clasp_secrets_vault import VaultBackend

from clasp_gateway import SecretLookupError, redact
from clasp_gateway.cli import main
from clasp_gateway.testing import FakeUpstream, StartGateway, config_from, load_module

FakeVault = load_module(Path(__file__).with_name("fake_vault.py"), "clasp_secrets_vault_test_fake").FakeVault

TOKEN = "hvs.Test0Token1For2The3Gateway"
PROVIDER_KEY = "sk-from-vault-Q7w8E9r0T1y2U3i4"


@pytest.fixture
def vault() -> Iterator[Any]:
    with FakeVault() as fake:
        fake.tokens.add(TOKEN)
        fake.secrets[("secret", "llm/openai")] = [{"api_key": "sk-old-version-1"}, {"api_key": PROVIDER_KEY,
                                                                                   "org": "org-7"}]
        yield fake


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def models(base_url: str, ref: str = "vault:secret/llm/openai#api_key") -> dict[str, object]:
    return {"*": [{"model": "openai/gpt-4o", "api_base": base_url, "api_key": ref}]}


def test_a_deployment_key_comes_from_vault(vault: Any, fake_upstream: FakeUpstream, start_gateway: StartGateway,
                                            monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("TEST_VAULT_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    config = config_from({"secrets": {"vault": {"address": vault.url, "token": "${TEST_VAULT_TOKEN}"}},
                          "models": models(fake_upstream.base_url)})
    assert config.warnings == []
    gateway = start_gateway(config)
    answer = httpx.post(gateway.base_url + "/v1/chat/completions", headers=gateway.headers,
                        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200
    assert fake_upstream.last.bearer == PROVIDER_KEY
    assert vault.requests[0][2]["X-Vault-Token"] == TOKEN
    assert PROVIDER_KEY not in caplog.text and TOKEN not in caplog.text
    assert redact(f"key {PROVIDER_KEY} token {TOKEN}") == "key *** token ***"


def test_clasp_check_never_shows_the_secret(vault: Any, tmp_path: object, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(str(tmp_path)) / "clasp.yaml"
    path.write_text(f"secrets:\n  vault:\n    address: {vault.url}\n    token: ${{TEST_VAULT_TOKEN}}\n"
                    "keys:\n  - key: vault:secret/gateway#key\n    name: ops\n"
                    "models:\n  gpt-4o:\n    - model: openai/gpt-4o\n      api_base: http://127.0.0.1:9\n"
                    "      api_key: vault:secret/llm/openai#api_key\n")
    vault.secrets[("secret", "gateway")] = [{"key": "clasp-Gw4Key5From6Vault7Z"}]
    monkeypatch.setenv("TEST_VAULT_TOKEN", TOKEN)
    assert main(["check", "--no-probe", "--config", str(path)]) == 0
    out = capsys.readouterr()
    assert "valid" in out.out
    for secret in (PROVIDER_KEY, TOKEN, "clasp-Gw4Key5From6Vault7Z"):
        assert secret not in out.out + out.err


def test_approle_login_and_the_ttl_cache(vault: Any) -> None:
    vault.approles["role-1"] = "secret-id-Xy9"
    vault.lease_duration = 100
    clock = Clock()
    backend = VaultBackend(vault.url, role_id="role-1", secret_id="secret-id-Xy9", ttl=60, clock=clock)
    assert backend.resolve("secret/llm/openai#api_key") == PROVIDER_KEY
    assert backend.resolve("secret/llm/openai#org") == "org-7"  # one read for both fields
    assert backend.resolve("secret/llm/openai?version=1#api_key") == "sk-old-version-1"
    logins = [p for m, p, _ in vault.requests if m == "POST"]
    assert logins == ["/v1/auth/approle/login"] and vault.reads() == 2
    clock.now += 61  # the cache expires; the token (lease 100 s, renewed at 90) still holds
    backend.resolve("secret/llm/openai#api_key")
    assert vault.reads() == 3 and len([m for m, _, _ in vault.requests if m == "POST"]) == 1
    clock.now += 61  # the cache again, and past 90% of the token's lease: log in again
    backend.resolve("secret/llm/openai#api_key")
    assert len([m for m, _, _ in vault.requests if m == "POST"]) == 2
    vault.tokens.clear()  # the token revoked: one new login, then the read
    clock.now += 61
    assert backend.resolve("secret/llm/openai#api_key") == PROVIDER_KEY
    assert len([m for m, _, _ in vault.requests if m == "POST"]) == 3


def test_a_mount_option_makes_the_path_all_path(vault: Any) -> None:
    backend = VaultBackend(vault.url, token=TOKEN, mount="secret")
    assert backend.resolve("llm/openai#org") == "org-7"


@pytest.mark.parametrize(("path", "message"), [
    ("secret/llm/openai#nope", "has no field 'nope' (it has: api_key, org)"),
    ("secret/llm/openai", "name the field after '#' (this secret has: api_key, org)"),
    ("secret/llm/missing#api_key", "no secret at secret/llm/missing"),
    ("kv/llm/openai#api_key", "no secret at kv/llm/openai (or no such mount)"),
    ("just-a-word", "write vault:<mount>/<path>#<field>"),
])
def test_lookup_errors_say_what_to_fix(vault: Any, path: str, message: str) -> None:
    with pytest.raises(SecretLookupError, match="^") as caught:
        VaultBackend(vault.url, token=TOKEN).resolve(path)
    assert message in str(caught.value) and PROVIDER_KEY not in str(caught.value)


def test_a_refused_token_or_a_dead_vault_leaves_the_deployment_unusable_with_a_hint(
        vault: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_VAULT_TOKEN", "hvs.Wrong0Token1Here")
    config = config_from({"secrets": {"vault": {"address": vault.url, "token": "${TEST_VAULT_TOKEN}"}},
                          "models": models("http://127.0.0.1:9")})
    assert any("permission denied reading secret/llm/openai" in w for w in config.warnings)
    assert all("hvs.Wrong0Token1Here" not in w for w in config.warnings)
    dead = config_from({"secrets": {"vault": {"address": "http://127.0.0.1:9", "token": TOKEN, "timeout": 2}},
                        "models": models("http://127.0.0.1:9")})
    assert any("Vault at http://127.0.0.1:9 is unreachable" in w for w in dead.warnings)


def test_settings_mistakes_are_reported_at_once() -> None:
    from clasp_gateway import ConfigError

    with pytest.raises(ConfigError) as caught:
        config_from({"secrets": {"vault": {"address": "vault.internal", "ttl": -1, "tokn": "x"},
                                 "nosuch": {}}, "models": {}})
    text = str(caught.value)
    assert "secrets.vault.address: expected an http:// or https:// URL" in text
    assert "secrets.vault.ttl" in text and "secrets.vault.tokn" in text
    assert "secrets.nosuch: no secret backend 'nosuch' is installed" in text


def test_without_the_plugin_a_vault_reference_is_unresolved_not_a_literal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "")
    config = config_from({"models": models("http://127.0.0.1:9")})
    assert config.deployments()[0].keys[0].value is None
    assert any("clasp-secrets-vault" in w for w in config.warnings)

"""Secret references resolved by pluggable backends (clasp_gateway/secrets.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from clasp_gateway import ConfigError, Reference, SecretLookupError, Section, String, hookimpl, parse_config, redact
from clasp_gateway.plugins import PluginManager
from clasp_gateway.secrets import is_backend_reference, registered_backends

SECRETS = {"llm/openai": "sk-Fr0mTheSafe-9Xy8Wv7U", "gateway": "clasp-Gw4Key5From6TheSafe7Z"}


class SafeBackend:
    def __init__(self, options: dict[str, Any]) -> None:
        self.prefix = options.get("prefix") or ""
        self.calls: list[str] = []

    def resolve(self, path: str) -> str:
        self.calls.append(path)
        if path == "broken":
            raise RuntimeError("boom " + SECRETS["gateway"])
        try:
            return SECRETS[self.prefix + path]
        except KeyError:
            raise SecretLookupError(f"nothing at {path}") from None


class SafePlugin:
    built: list[SafeBackend] = []

    @hookimpl
    def register_secret_backends(self, register: Any) -> None:
        def factory(options: dict[str, Any]) -> SafeBackend:
            backend = SafeBackend(options)
            self.built.append(backend)
            return backend

        register("safe", factory, settings=Section({"prefix": String(), "token": Reference()}))


def backends() -> Any:
    pm = PluginManager()
    pm.register(SafePlugin(), name="safe-test")
    return registered_backends(pm)


def models(ref: str) -> dict[str, Any]:
    return {"gpt-4o": [{"model": "openai/gpt-4o", "api_base": "http://127.0.0.1:9", "api_key": ref}]}


def test_a_plugin_backend_resolves_keys_and_gateway_keys() -> None:
    config = parse_config({"models": models("safe:llm/openai"), "keys": [{"key": "safe:gateway", "name": "ops"}]},
                          secret_backends=backends())
    assert config.deployments()[0].keys[0].value == SECRETS["llm/openai"]
    assert config.keys[0].secret.value == SECRETS["gateway"]
    assert config.deployments()[0].keys[0].ref == "safe:llm/openai"
    assert redact(f"key={SECRETS['llm/openai']}") == "key=***"


def test_options_come_from_the_secrets_section_with_their_own_references(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken-F0r-The-Safe\n")
    SafePlugin.built.clear()
    config = parse_config({"secrets": {"safe": {"prefix": "llm/", "token": f"file:{token}"}},
                           "models": models("safe:openai")}, secret_backends=backends())
    assert config.deployments()[0].keys[0].value == SECRETS["llm/openai"]
    assert SafePlugin.built[-1].prefix == "llm/"
    assert redact("t0ken-F0r-The-Safe") == "***"


def test_a_failed_lookup_is_a_hint_never_a_secret() -> None:
    config = parse_config({"models": {**models("safe:missing"), "b": [
        {"model": "openai/gpt-4o", "id": "b", "api_base": "http://127.0.0.1:9", "api_key": "safe:broken"}]}},
                          secret_backends=backends())
    assert any("safe:missing: nothing at missing" in w for w in config.warnings)
    assert any("safe:broken: the backend failed (RuntimeError)" in w for w in config.warnings)
    assert all(SECRETS["gateway"] not in w for w in config.warnings)


def test_unknown_backends_and_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"secrets": {"safe": {"prefx": "x"}, "nope": {}}, "models": {}}, secret_backends=backends())
    text = str(caught.value)
    assert "secrets.safe.prefx" in text and "secrets.nope: no secret backend 'nope' is installed" in text


def test_a_manager_reference_without_its_backend_is_unresolved_not_a_literal() -> None:
    config = parse_config({"models": models("vault:secret/x#k")}, secret_backends={})
    assert config.deployments()[0].keys[0].value is None
    assert any("clasp-secrets-vault" in w for w in config.warnings)


def test_urls_and_literals_are_not_backend_references() -> None:
    assert is_backend_reference("postgresql://u:p@h/db") is None
    assert is_backend_reference("file:/run/secrets/x") is None
    assert is_backend_reference("Bearer:abc") is None  # (not a lower-case scheme)
    assert is_backend_reference("vault:secret/a#b") == ("vault", "secret/a#b")


def test_a_literal_with_a_colon_stays_a_literal() -> None:
    config = parse_config({"models": models("sk-abc:def-123456")}, secret_backends={})
    assert config.deployments()[0].keys[0].value == "sk-abc:def-123456"


def test_env_and_file_stay_built_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SB_TEST_KEY", "sk-env-1234567890")
    path = tmp_path / "k"
    path.write_text("sk-file-1234567890\n")
    config = parse_config({"models": {**models("${SB_TEST_KEY}"), "f": [
        {"model": "openai/gpt-4o", "id": "f", "api_base": "http://127.0.0.1:9", "api_key": f"file:{path}"}]}},
                          secret_backends={})
    assert [d.keys[0].value for d in config.deployments()] == ["sk-env-1234567890", "sk-file-1234567890"]


def test_registering_a_built_in_scheme_is_refused() -> None:
    from clasp_gateway import RegistrationError

    class Bad:
        @hookimpl
        def register_secret_backends(self, register: Any) -> None:
            register("env", lambda options: None)

    pm = PluginManager()
    pm.register(Bad(), name="bad")
    with pytest.raises(RegistrationError, match="'env' is built in"):
        registered_backends(pm)

"""clasp.yaml validation: precise errors, secret references, model routes."""

from __future__ import annotations

from pathlib import Path

import pytest

from clasp_gateway.config import ConfigError, load_config, parse_config


def test_shipped_clasp_yaml_is_valid_without_any_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CLASP_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    config = load_config(Path(__file__).parent.parent / "clasp.yaml")
    assert config.models
    joined = "\n".join(config.warnings)
    assert "set CLASP_API_KEY" in joined
    assert "set OPENAI_API_KEY" in joined


def test_errors_name_the_key_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({
            "server": {"port": "eighty", "log_level": "loud"},
            "models": {"m": [{"api_base": "http://x"}], "n": "nope", "o": [{"model": "gpt-4o"}]},
            "keys": [{"name": "k"}],
        })
    text = str(info.value)
    for fragment in (
        "server.port: expected an integer", "server.log_level", "models.m.0.model: required",
        "models.n: expected a list", "models.o.0.model: 'gpt-4o' has no provider prefix",
        "keys.0.key: required",
    ):
        assert fragment in text, fragment


def test_secret_references(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UP_KEY", "sk-from-env-123456")
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file-123456\n")
    config = parse_config({"models": {
        "a": [{"model": "openai/gpt-4o", "api_key": "${UP_KEY}"}],
        "b": [{"model": "openai/gpt-4o-mini", "api_key": f"file:{key_file}"}],
        "c": [{"model": "hosted_vllm/qwen", "api_base": "${MISSING_BASE}", "api_key": "${MISSING_KEY}"}],
    }})
    a, b, c = (route.deployments[0] for route in config.models)
    assert a.keys[0].value == "sk-from-env-123456" and "sk-from" not in repr(a.keys[0])
    assert b.keys[0].value == "sk-from-file-123456"
    assert c.keys[0].value is None
    problems = " ".join(c.settings["_problems"])
    assert "set MISSING_BASE" in problems and "set MISSING_KEY" in problems


def test_same_upstream_in_two_routes_is_one_deployment() -> None:
    config = parse_config({"models": {
        "x": [{"model": "openai/gpt-4o", "api_key": "sk-a-123456"}],
        "y": [{"model": "openai/gpt-4o", "api_key": "sk-a-123456"}],
        "z": [{"model": "openai/gpt-4o", "api_base": "http://other/v1", "api_key": "sk-a-123456"}],
    }})
    x, y, z = (route.deployments[0] for route in config.models)
    assert x is y
    assert z.id != x.id


def test_model_info_comes_from_litellm_catalogue_and_can_be_overridden() -> None:
    config = parse_config({"models": {
        "a": [{"model": "openai/gpt-4o", "api_key": "k-123456"}],
        "b": [{"model": "azure/my-deploy", "api_base": "http://az", "api_key": "k-123456",
               "base_model": "gpt-4o", "max_output_tokens": 1000}],
    }})
    a, b = (route.deployments[0] for route in config.models)
    assert a.info.max_output_tokens == 16384 and a.info.input_cost_per_token > 0
    assert b.info.max_output_tokens == 1000 and b.info.max_input_tokens == 128000
    assert b.mode == "direct" and a.mode == "direct"


def test_unknown_provider_goes_through_litellm() -> None:
    config = parse_config({"models": {"a": [{"model": "bedrock/anthropic.claude-3", "api_key": "k-123456"}]}})
    assert config.models[0].deployments[0].mode == "litellm"


def test_same_upstream_with_different_settings_is_two_deployments() -> None:
    config = parse_config({"models": {
        "x": [{"model": "ollama/qwen", "api_base": "http://gpu/v1", "text_tool_calls": True}],
        "y": [{"model": "ollama/qwen", "api_base": "http://gpu/v1", "text_tool_calls": False}],
    }})
    x, y = (route.deployments[0] for route in config.models)
    assert x is not y and x.id != y.id
    assert x.settings["text_tool_calls"] is True and y.settings["text_tool_calls"] is False

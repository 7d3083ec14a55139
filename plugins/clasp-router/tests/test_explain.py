"""``clasp route --explain`` (no call made) and the ``strategy: strict`` rename warning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from clasp_router.explain import main

from clasp_gateway.testing import config_from, plugin_manager

CONFIG = {
    "keys": [{"key": "sk-clasp-explain-key-0123456789abcdef", "name": "eu", "regions": ["eu-west-1"]}],
    "router": {"strategy": "cost"},
    "models": {"mixed": [
        {"id": "dear", "model": "openai/gpt-4o", "api_key": "sk-secret-never-printed-123456", "region": "eu-west-1",
         "input_cost_per_token": 1e-5, "output_cost_per_token": 4e-5},
        {"id": "cheap-us", "model": "openai/gpt-4o-mini", "api_key": "sk-secret-never-printed-123456",
         "region": "us-east-1", "input_cost_per_token": 1e-7, "output_cost_per_token": 4e-7},
        {"id": "text-only", "model": "openai/gpt-4o-mini", "api_key": "sk-secret-never-printed-123456",
         "region": "eu-west-1", "supports_vision": False, "input_cost_per_token": 1e-8, "output_cost_per_token": 4e-8},
    ]},
}
IMAGE_REQUEST = {"model": "mixed", "messages": [{"role": "user", "content": [
    {"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]}


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    config = tmp_path / "clasp.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    request = tmp_path / "request.json"
    request.write_text(json.dumps(IMAGE_REQUEST))
    return str(config), str(request)


def test_explain_prints_filters_and_order(files: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    config, request = files
    assert main(["--explain", request], config) == 0
    out = capsys.readouterr().out
    assert "strategy cost" in out and "text-only: vision" in out
    assert out.index("1. cheap-us") < out.index("2. dear")  # cheapest that sees images first
    assert "sk-secret" not in out


def test_explain_with_a_regional_key(files: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    config, request = files
    assert main(["--explain", request, "--key", "eu"], config) == 0
    out = capsys.readouterr().out
    assert "cheap-us: region" in out and "1. dear" in out
    assert main(["--explain", request, "--key", "nobody"], config) == 2


def test_explain_bad_input(files: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, _ = files
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["--explain", str(bad)], config) == 2
    bad.write_text(json.dumps({"model": "unknown", "messages": []}))
    assert main(["--explain", str(bad)], config) == 1
    assert "not served" in capsys.readouterr().err


def test_old_strict_configs_get_a_warning_naming_chain() -> None:
    config = config_from({"models": {"m": [{"model": "openai/gpt-4o", "api_key": "sk-x-123456789012345"}]},
                         "fallback": {"strategy": "strict"}})
    pm = plugin_manager(config)
    from clasp_gateway.shell.app import create_app

    create_app(config, pm)
    assert any("strict now means" in w and "chain" in w for w in config.warnings), config.warnings


def test_explain_accepts_another_plugins_strategy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "clasp.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "router": {"strategy": "project-hours"}}))
    request = tmp_path / "request.json"
    request.write_text(json.dumps(IMAGE_REQUEST))
    assert main(["--explain", str(request)], str(config)) == 0
    assert "'project-hours' is another plugin's strategy" in capsys.readouterr().out


LEARNED = {"router": {"strategy": "cheapest-capable", "learn": {"min_tier": {"question": 1}}},
           "models": {"pool": [
               {"id": "tiny", "model": "openai/gpt-4o-mini", "api_key": "sk-secret-never-printed-123456",
                "input_cost_per_token": 1e-8, "output_cost_per_token": 4e-8},
               {"id": "small", "model": "openai/gpt-4o-mini", "api_key": "sk-secret-never-printed-123456",
                "input_cost_per_token": 1e-7, "output_cost_per_token": 4e-7},
               {"id": "big", "model": "openai/gpt-4o", "api_key": "sk-secret-never-printed-123456",
                "input_cost_per_token": 1e-5, "output_cost_per_token": 4e-5}]}}
QUESTION = {"model": "pool", "messages": [{"role": "user", "content": "what is 2 + 2?"}]}


def test_explain_shows_the_learned_estimates_and_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    from clasp_router.estimates import MERGE, STATE_KEY

    from clasp_gateway import create_state, parse_state_settings

    state_section = {"backend": "sqlite", "url": "sqlite:///" + str(tmp_path / "state.db")}
    request = tmp_path / "question.json"
    request.write_text(json.dumps(QUESTION))
    config = tmp_path / "clasp.yaml"
    config.write_text(yaml.safe_dump({**LEARNED, "state": state_section}))
    assert main(["--explain", str(request)], str(config)) == 0
    out = capsys.readouterr().out
    assert "strategy cheapest-capable" in out and "class question, difficulty bucket 0" in out
    assert "estimates: priors (nothing learned yet in the sqlite state)" in out
    assert "tiny: min-tier" in out and out.index("1. small") < out.index("2. big")
    assert "success=0.9" in out and "tier=1" in out

    async def learned() -> None:  # what a gateway sharing this state learned: small fails questions
        state = create_state(parse_state_settings(config_from({**LEARNED, "state": state_section})))
        await state.open()
        deltas = json.dumps({"small|question|0": [0.0, 6.0], "small|question|*": [0.0, 6.0],
                             "big|question|0": [5.0, 0.0], "big|question|*": [5.0, 0.0]})
        await state.run(MERGE, [STATE_KEY], [deltas, 3600.0, 1000])
        await state.close()

    asyncio.run(learned())
    assert main(["--explain", str(request)], str(config)) == 0
    out = capsys.readouterr().out
    assert "estimates: learned (sqlite state)" in out, out
    assert out.index("1. big") < out.index("2. small") and "observed=6.0" in out
    assert "sk-secret" not in out

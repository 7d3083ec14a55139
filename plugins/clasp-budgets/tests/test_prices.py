"""Prices: a newer LiteLLM-format map installed offline (checked first, a malformed
one refused with a clear error and nothing installed), read over the bundled map by
the next configuration; ``clasp prices show``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from clasp_budgets.prices import PriceMapError, check_price_map, describe, install_price_map, main

from clasp_gateway import price_map_path, raw_model_entry, reload_price_map
from clasp_gateway.testing import config_from

NEWER = {
    "sample_spec": {"input_cost_per_token": 0},
    "gpt-4o": {"input_cost_per_token": 1e-06, "output_cost_per_token": 4e-06, "litellm_provider": "openai",
               "max_input_tokens": 128000, "max_output_tokens": 16384, "mode": "chat"},
    "acme/brand-new-model": {"input_cost_per_token": 2e-07, "output_cost_per_token": 8e-07,
                             "cache_read_input_token_cost": 2e-08, "cache_creation_input_token_cost": 2.5e-07,
                             "litellm_provider": "acme", "max_tokens": 8192},
}


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A data dir of the test's own; the catalogue read again before and after."""
    monkeypatch.setenv("CLASP_DATA_DIR", str(tmp_path / "data"))
    reload_price_map()
    yield tmp_path / "data"
    monkeypatch.undo()
    reload_price_map()


def write(tmp_path: Path, data: object, name: str = "prices.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_install_reads_the_newer_map_over_the_bundled_one(data_dir: Path, tmp_path: Path) -> None:
    bundled = raw_model_entry("openai", "gpt-4o")
    assert bundled is not None and bundled["input_cost_per_token"] != 1e-06
    assert raw_model_entry("acme", "brand-new-model") is None
    target, count = install_price_map(write(tmp_path, NEWER))
    assert target == price_map_path() == data_dir / "model_prices.json" and count == 2
    assert raw_model_entry("openai", "gpt-4o")["input_cost_per_token"] == 1e-06  # type: ignore[index]
    assert raw_model_entry("openai", "gpt-4o-mini") is not None  # the bundled entries stay
    # a gateway configured now prices with it (cache rates included)
    config = config_from({"models": {"m": [{"model": "acme/brand-new-model", "api_base": "http://127.0.0.1:9",
                                            "api_key": "x"}]}})
    info = config.models[0].deployments[0].info
    assert (info.input_cost_per_token, info.output_cost_per_token) == (2e-07, 8e-07)
    assert (info.cache_read_input_token_cost, info.cache_creation_input_token_cost) == (2e-08, 2.5e-07)
    shown = describe("acme/brand-new-model")
    assert shown is not None and shown["source"] == "installed"
    assert shown["per_million"]["input_cost_per_token"] == pytest.approx(0.2)
    assert describe("openai/gpt-4o-mini")["source"] == "bundled"  # type: ignore[index]
    assert describe("nobody/nothing-at-all") is None


@pytest.mark.parametrize(("data", "expected"), [
    ("{not json", "not JSON"),
    ([1, 2], "expected a JSON object"),
    ({"m": {"input_cost_per_token": -1}}, "m.input_cost_per_token: expected a price (a number >= 0), got -1"),
    ({"m": {"input_cost_per_token": "0.1"}}, "m.input_cost_per_token: expected a price"),
    ({"m": {"output_cost_per_token": 1e-6, "max_tokens": 0}}, "m.max_tokens: expected a whole number of tokens"),
    ({"m": "cheap"}, "m: expected an object, got str"),
    ({"m": {"mode": "chat"}}, "no entry has input_cost_per_token or output_cost_per_token"),
])
def test_a_malformed_map_is_refused(data_dir: Path, tmp_path: Path, data: object, expected: str) -> None:
    with pytest.raises(PriceMapError) as caught:
        install_price_map(write(tmp_path, data))
    assert expected in str(caught.value) and "not a valid LiteLLM price map" in str(caught.value)
    assert not price_map_path().exists()


def test_problems_are_all_listed() -> None:
    problems = check_price_map({f"m{i}": {"input_cost_per_token": "x"} for i in range(30)})
    assert len(problems) == 30


def test_clasp_prices_command(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, {"m": {"input_cost_per_token": float("inf")}}, "bad.json")
    bad.write_text('{"m": {"input_cost_per_token": Infinity}}')
    assert main(["update", str(bad)], "clasp.yaml") == 1
    assert "clasp prices update: refused:" in capsys.readouterr().err and not price_map_path().exists()
    assert main(["update", str(tmp_path / "missing.json")], "clasp.yaml") == 1
    assert "cannot read it" in capsys.readouterr().err
    assert main(["update", str(write(tmp_path, NEWER))], "clasp.yaml") == 0
    assert "installed 2 model(s)" in capsys.readouterr().out
    assert main(["show", "acme/brand-new-model"], "clasp.yaml") == 0
    out = capsys.readouterr().out
    assert "installed" in out and "$0.2/M tokens" in out and "cache write" in out
    assert main(["show", "nobody/nothing"], "clasp.yaml") == 1


def test_clasp_prices_is_a_clasp_command(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "clasp_gateway.cli", "prices", "show", "openai/gpt-4o-mini"],
                          capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                             "CLASP_DATA_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert "bundled" in done.stdout and "/M tokens" in done.stdout

"""The configuration examples in README.md are valid as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from clasp_fallback.settings import parse_settings

from clasp_gateway.config import parse_config
from clasp_gateway.state import parse_state_settings

README = (Path(__file__).parent.parent / "README.md").read_text()
BLOCKS = [b for b in re.findall(r"```yaml\n(.*?)```", README, re.S)]


def test_readme_has_config_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_each_example_validates(block: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_API_BASE", "https://example.openai.azure.com")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/15")
    config = parse_config(yaml.safe_load(block), "README.md")
    if "fallback" in config.raw:
        parse_settings(config)
    if "state" in config.raw:
        parse_state_settings(config)

"""The examples in README.md are valid as written: its configuration blocks validate, and
its plugin example is the plugin shipped in plugins/clasp-example-tagger."""

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


EXAMPLE = Path(__file__).parent.parent / "plugins" / "clasp-example-tagger"
SNIPPETS = dict(re.findall(r"^`(plugins/clasp-example-tagger/[^`]+\.py)`:\n\n```python\n(.*?)```", README, re.S | re.M))


def test_the_plugin_example_is_the_shipped_plugin() -> None:
    """"Writing a plugin" shows the example plugin and its test as they are shipped
    (and tested, by ``tests/test_testing_package.py`` outside this repository)."""
    assert sorted(SNIPPETS) == [
        "plugins/clasp-example-tagger/clasp_example_tagger/__init__.py",
        "plugins/clasp-example-tagger/tests/test_tagger.py",
    ]
    for path, snippet in SNIPPETS.items():
        assert snippet == (EXAMPLE.parent.parent / path).read_text(), f"README.md's copy of {path} differs from the file"
    entry_point = re.search(r"```toml\n(\[project\.entry-points\.clasp\]\n.*?)```", README, re.S)
    assert entry_point and entry_point.group(1) in (EXAMPLE / "pyproject.toml").read_text()


def test_the_plugin_example_uses_only_the_public_api() -> None:
    """Every name the example imports from ``clasp_gateway`` is public; its test uses
    ``clasp_gateway.testing`` and nothing of this repository's ``tests``."""
    import ast

    import clasp_gateway
    import clasp_gateway.testing

    public = {"clasp_gateway": set(clasp_gateway.__all__), "clasp_gateway.testing": set(clasp_gateway.testing.__all__)}
    for path, snippet in SNIPPETS.items():
        for node in ast.walk(ast.parse(snippet)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("clasp_gateway", "tests")):
                assert node.module in public, f"{path}: from {node.module} import ..."
                assert {a.name for a in node.names} <= public[node.module], f"{path}: {ast.unparse(node)}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith(("clasp_gateway.", "tests")) for a in node.names), ast.unparse(node)

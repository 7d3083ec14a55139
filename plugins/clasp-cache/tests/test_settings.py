"""The ``cache:`` section: defaults, per-route overrides, and mistakes reported before
the gateway serves (with a "did you mean"); the READMEs' examples validate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from clasp_cache.settings import parse_settings

from clasp_gateway import ConfigError
from clasp_gateway.testing import GatewayServer, config_from

ROOT = Path(__file__).resolve().parents[3]


def test_defaults_are_finite_and_conservative() -> None:
    problems: list[str] = []
    settings = parse_settings({}, problems)
    assert problems == [] and settings.enabled and settings.backend == "memory" and settings.scope == "team"
    policy = settings.policy("claude-sonnet-4-5")
    assert policy.ttl == 3600 and policy.max_temperature == 0 and policy.tool_calls is False
    assert "background" not in policy.request_classes and policy.stale_if_error_max_age == 86400
    assert settings.limits.max_entries == 10_000 and settings.limits.max_entry_bytes == 1 << 20


def test_route_overrides_by_glob_first_match_wins() -> None:
    settings = parse_settings({"ttl": "5m", "routes": {"claude-*haiku*": {"enabled": False},
                                                       "claude-*": {"ttl": "24h", "tool_calls": ["Read"]}}}, [])
    assert not settings.policy("claude-3-5-haiku").enabled
    sonnet = settings.policy("claude-sonnet-4-5")
    assert sonnet.ttl == 86400 and sonnet.replays_calls(["Read"]) and not sonnet.replays_calls(["Read", "Bash"])
    assert settings.policy("gpt-4o").ttl == 300


@pytest.mark.parametrize(("section", "message"), [
    ({"tll": "1h"}, "cache.tll: unknown key; did you mean 'ttl'?"),
    ({"ttl": "soon"}, "cache.ttl: expected a duration"),
    ({"backend": "memcached"}, "cache.backend: no cache backend named 'memcached' (backends: memory, redis)"),
    ({"backend": "redis"}, "cache.backend_options.url: required for the redis backend"),
    ({"request_classes": ["questions"]}, "cache.request_classes: no request class 'questions'"),
    ({"routes": {"x": {"tool_calls": "yes"}}}, "cache.routes.x.tool_calls: expected true, false or a list"),
    ({"scope": "org"}, "cache.scope: expected one of"),
])
def test_mistakes_stop_the_gateway_before_it_serves(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        GatewayServer(config_from({"models": {}, "cache": section}))
    assert any(message in p for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize("readme", ["README.md", "plugins/clasp-cache/README.md"])
def test_the_readme_examples_validate(readme: str) -> None:
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", (ROOT / readme).read_text(), re.S)]
    sections = [b["cache"] for b in blocks if isinstance(b, dict) and "cache" in b]
    assert sections
    for section in sections:
        problems: list[str] = []
        parse_settings(section, problems)
        assert problems == []

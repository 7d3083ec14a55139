"""The ``fallback:`` section: defaults, every option, and precise error messages."""

from __future__ import annotations

from typing import Any

import pytest
from clasp_fallback.settings import DEFAULT_RETRY_ON, parse_settings

from clasp_gateway.config import ConfigError
from clasp_gateway.testing import config_from

MODELS = {
    "claude-sonnet": [
        {"id": "main", "model": "openai/gpt-4o", "api_base": "http://127.0.0.1:9/v1", "api_key": "sk-x-1234567"},
        {"model": "openai/gpt-4o-mini", "api_base": "http://127.0.0.1:9/v1", "api_key": "sk-x-1234567"},
    ],
}


def settings(section: Any, **config: Any) -> Any:
    return parse_settings(config_from({"models": MODELS, "fallback": section, **config}))


def problems(section: Any, strategies: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(config_from({"models": MODELS, "fallback": section}), strategies)
    return info.value.problems


def test_defaults_without_a_section() -> None:
    s = parse_settings(config_from({"models": MODELS}))
    assert s.strategy == "chain" and s.retry.attempts == 1 and s.retry.on == frozenset(DEFAULT_RETRY_ON)
    assert s.breaker.failures == 5 and s.breaker.redis_url is None and s.health.interval == 0
    assert s.default_response is None and s.tasks == {}


def test_every_option_parses_with_durations() -> None:
    s = settings({
        "strategy": "balanced",
        "weights": {"latency": 2, "errors": 1, "cost": 0},
        "retry": {"attempts": 2, "base_delay": "100ms", "max_delay": "2s", "max_retry_after": "1m",
                  "on": [429, "5xx", "connect"], "budget": {"ratio": 0.1, "window": "30s", "min_retries": 0}},
        "breaker": {"failures": 3, "error_rate": None, "window": "1m", "cooldown": "15s", "max_cooldown": "2m",
                    "probe_timeout": 20, "redis_url": "redis://127.0.0.1:6379/1", "key_prefix": "x:", "key_ttl": "1h"},
        "health": {"interval": "30s", "timeout": 2, "method": "models", "public": True},
        "tasks": {"background": ["openai/gpt-4o-mini"], "long_context": {"chain": ["main"], "then_model_chain": False}},
        "default_response": "The assistant is unavailable; try again in a minute.",
    })
    assert s.weights.latency == 2 and s.retry.base_delay == 0.1 and s.retry.max_retry_after == 60
    assert s.retry.on == frozenset({"429", "5xx", "connect"}) and s.retry.budget_min_retries == 0
    assert s.breaker.error_rate is None and s.breaker.window == 60 and s.breaker.cooldown == 15
    assert s.breaker.redis_url is not None and s.breaker.redis_url.value == "redis://127.0.0.1:6379/1"
    assert s.health.interval == 30 and s.health.public
    assert [d.id for d in s.tasks["background"].deployments] == ["openai/gpt-4o-mini"]
    assert s.tasks["long_context"].deployments[0].id == "main" and not s.tasks["long_context"].then_model_chain
    assert s.default_response is not None and s.default_response.startswith("The assistant")


def test_every_problem_is_reported_with_its_key_path() -> None:
    found = problems({
        "strategy": "fastest",
        "retry": {"attempts": -1, "base_delay": "soon", "on": [418.5, "teapot"], "budget": {"ratio": "lots"}},
        "breaker": {"failures": 0, "error_rate": 1.5, "cooldown": 60, "max_cooldown": 30, "colour": "red"},
        "health": {"method": "ping"},
        "tasks": {"background": ["openai/gpt-5-nano"], "coding": [], "backgrund": ["main"]},
        "default_response": "",
        "retries": 3,
    })
    expected = [
        "fallback.retries: unknown key",
        "fallback.strategy: expected one of chain, strict, cost, balanced, got 'fastest'",
        "fallback.retry.attempts: expected an integer >= 0, got -1",
        "fallback.retry.base_delay: expected a duration",
        "fallback.retry.on.0: expected an HTTP status",
        "fallback.retry.on.1: expected an HTTP status",
        "fallback.retry.budget.ratio: expected a non-negative number, got 'lots'",
        "fallback.breaker.colour: unknown key",
        "fallback.breaker.failures: expected an integer >= 1, got 0",
        "fallback.breaker.error_rate: expected a number in (0, 1]",
        "fallback.breaker.max_cooldown: must be >= cooldown (60s), got 30s",
        "fallback.health.method: expected one of auto, models, call, got 'ping'",
        "fallback.tasks.background.0: 'openai/gpt-5-nano' is not a deployment under models:",
        "fallback.tasks.coding: expected a non-empty list",
        "fallback.tasks.backgrund: not a request class; did you mean 'background'?",
        "fallback.default_response: expected the text to answer with",
    ]
    for line in expected:
        assert any(p.startswith(line) for p in found), (line, found)


def test_a_strategy_registered_by_a_plugin_is_accepted() -> None:
    assert problems({"strategy": "fastest"}, strategies=("cheapest",))
    s = parse_settings(config_from({"models": MODELS, "fallback": {"strategy": "cheapest"}}), ("cheapest",))
    assert s.strategy == "cheapest"


def test_a_missing_redis_secret_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLASP_TEST_REDIS_URL", raising=False)
    found = problems({"breaker": {"redis_url": "${CLASP_TEST_REDIS_URL}"}})
    assert found == [
        "fallback.breaker.redis_url: ${CLASP_TEST_REDIS_URL} is not set: set CLASP_TEST_REDIS_URL, "
        "or remove redis_url to keep breaker state in memory"
    ]
    assert problems({"breaker": {"redis_url": "http://cache:6379"}}) == [
        "fallback.breaker.redis_url: expected a redis://, rediss:// or unix:// URL"
    ]


def test_the_error_names_the_file() -> None:
    with pytest.raises(ConfigError, match=r"test-config: fallback.breaker: expected a mapping, got list"):
        settings({"breaker": [1]})


def test_tasks_are_keyed_by_the_gateways_request_classes() -> None:
    """``fallback.tasks`` names request classes: the built-in ones by default, and
    any class the gateway has (plugins' too) when it passes its names."""
    section = {"models": MODELS, "fallback": {"tasks": {"review": ["main"]}}}
    with pytest.raises(ConfigError, match=r"fallback.tasks.review: not a request class .*classes: background, "):
        parse_settings(config_from(section))
    s = parse_settings(config_from(section), (), ["review", "background", "question"])
    assert [d.id for d in s.tasks["review"].deployments] == ["main"]

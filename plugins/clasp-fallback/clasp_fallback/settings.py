"""The ``fallback:`` section of clasp.yaml: defaults, and validation with precise messages.

Every problem is reported at once, as ``fallback.key.path: what was expected``, through
the core's :class:`~clasp_gateway.config.ConfigError`, so a bad file fails at start-up
with the same kind of message as the rest of clasp.yaml.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from clasp_gateway.config import Config, ConfigError, resolve_secret
from clasp_gateway.types import Deployment, Secret

BUILTIN_STRATEGIES = ("strict", "cost", "balanced")
HEALTH_METHODS = ("auto", "models", "call")
ERROR_CLASSES = ("connect", "timeout", "protocol")
DEFAULT_RETRY_ON = ("429", "500", "502", "503", "504", "529", "connect")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_STATUS_PATTERN = re.compile(r"^[1-5](\d\d|xx)$")


@dataclass(slots=True, frozen=True)
class RetrySettings:
    """Retrying the same deployment (``fallback.retry``)."""

    attempts: int = 1
    """Retries of one deployment after its first try, before moving to the next candidate."""
    base_delay: float = 0.25
    """Backoff before retry n is uniform in [0, min(max_delay, base_delay * 2**(n-1))]."""
    max_delay: float = 4.0
    max_retry_after: float = 5.0
    """A ``retry-after`` longer than this moves on to the next candidate instead of waiting."""
    on: frozenset[str] = frozenset(DEFAULT_RETRY_ON)
    """What retries the same deployment: upstream statuses ("503", "5xx") and "connect",
    "timeout", "protocol". Anything else that may succeed elsewhere goes to the next candidate."""
    budget_ratio: float = 0.2
    """Retries may be at most this share of a deployment's requests over ``budget_window``..."""
    budget_window: float = 10.0
    budget_min_retries: int = 3
    """...plus this many per window, so a quiet deployment can still retry."""


@dataclass(slots=True, frozen=True)
class BreakerSettings:
    """Circuit breakers per deployment (``fallback.breaker``)."""

    failures: int = 5
    """Consecutive failures that open the breaker."""
    error_rate: float | None = 0.5
    """Or: this share of failed requests over ``window`` (``null`` disables)..."""
    min_requests: int = 20
    """...once at least this many requests were seen in the window."""
    window: float = 30.0
    cooldown: float = 30.0
    """Seconds open before one probe request may go through (half-open)."""
    max_cooldown: float = 300.0
    """Each failed probe doubles the cooldown, up to this."""
    probe_timeout: float = 60.0
    """A probe that has not reported by then frees the half-open slot for another."""
    rest_on_retry_after: bool = True
    """A 429 whose retry-after exceeds ``retry.max_retry_after`` opens the breaker for that long."""
    redis_url: Secret | None = None
    """A per-plugin override: keep this plugin's state in this Redis (``redis://``,
    ``rediss://``) instead of the gateway's ``state:`` backend."""
    key_prefix: str | None = None
    """Where this plugin's keys start. Default: ``fallback:`` inside the gateway state's
    own prefix, or ``clasp:fallback:`` on the ``redis_url`` override (so both give
    ``clasp:fallback:breaker:<id>``); when set, it is the namespace inside ``state.prefix``
    or, with ``redis_url``, the whole prefix as before."""
    key_ttl: float = 3600.0
    redis_timeout: float = 0.25
    """With ``redis_url``: seconds a Redis call may take before local state is used instead."""


@dataclass(slots=True, frozen=True)
class HealthSettings:
    """Active health checks (``fallback.health``)."""

    interval: float = 0.0
    """Seconds between checks of each deployment; 0 turns active checks off."""
    timeout: float = 5.0
    method: str = "auto"
    """"models" (GET /models, free), "call" (a 1-token completion, proves the model
    answers), or "auto": models for OpenAI-compatible deployments, none for others."""
    public: bool = False
    """Serve ``GET /health/providers`` without a gateway key."""


@dataclass(slots=True, frozen=True)
class TaskChain:
    """The deployments that serve one task class (``fallback.tasks.<task>``)."""

    deployments: tuple[Deployment, ...]
    then_model_chain: bool = True
    """After the task chain, try the model's own chain (deployments not already tried)."""


@dataclass(slots=True, frozen=True)
class BalanceWeights:
    """How the ``balanced`` strategy weighs its normalised scores (lower is better)."""

    latency: float = 1.0
    errors: float = 2.0
    cost: float = 1.0


@dataclass(slots=True, frozen=True)
class FallbackSettings:
    """The whole validated ``fallback:`` section."""

    strategy: str = "strict"
    weights: BalanceWeights = field(default_factory=BalanceWeights)
    retry: RetrySettings = field(default_factory=RetrySettings)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    tasks: dict[str, TaskChain] = field(default_factory=dict)
    default_response: str | None = None
    """When every candidate failed: answer with this text instead of a 529."""


class _Checker:
    """Collects problems as ``key.path: message`` while reading a mapping."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, value: Any, path: str, allowed: Iterable[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping, got {type(value).__name__}")
            return {}
        known = set(allowed)
        for key in value:
            if key not in known:
                self.fail(f"{path}.{key}", f"unknown key (expected one of: {', '.join(sorted(known))})")
        return value

    def duration(self, value: Any, path: str, default: float, *, minimum: float = 0.0) -> float:
        """Seconds, written as a number or ``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"``."""
        if value is None:
            return default
        seconds: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str):
            match = _DURATION.match(value)
            if match:
                seconds = float(match.group(1)) * _UNITS[match.group(2)]
        if seconds is None or seconds < minimum:
            self.fail(path, f"expected a duration >= {minimum:g}s (a number of seconds, or e.g. '500ms', '30s', '5m'), got {value!r}")
            return default
        return seconds

    def integer(self, value: Any, path: str, default: int, *, minimum: int = 0) -> int:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(path, f"expected an integer >= {minimum}, got {value!r}")
            return default
        return value

    def fraction(self, value: Any, path: str, default: float | None, *, allow_null: bool = False) -> float | None:
        if value is None:
            return None if allow_null else default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            self.fail(path, f"expected a number in (0, 1], e.g. 0.2, got {value!r}")
            return default
        return float(value)

    def number(self, value: Any, path: str, default: float) -> float:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            self.fail(path, f"expected a non-negative number, got {value!r}")
            return default
        return float(value)

    def boolean(self, value: Any, path: str, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(path, f"expected true or false, got {value!r}")
            return default
        return value

    def choice(self, value: Any, path: str, default: str, choices: Iterable[str]) -> str:
        options = list(choices)
        if value is None:
            return default
        if not isinstance(value, str) or value not in options:
            self.fail(path, f"expected one of {', '.join(options)}, got {value!r}")
            return default
        return value


_TOP_KEYS = ("strategy", "weights", "retry", "breaker", "health", "tasks", "default_response")


def parse_settings(config: Config, strategies: Iterable[str] = ()) -> FallbackSettings:
    """Validate ``config``'s ``fallback:`` section; raise ConfigError listing every problem.

    ``strategies`` are the names registered by ``register_routing_strategies``; they are
    valid values of ``fallback.strategy`` beside the built-in ones.
    """
    chk = _Checker()
    raw = config.raw.get("fallback")
    top = chk.mapping(raw, "fallback", _TOP_KEYS)
    settings = FallbackSettings(
        strategy=chk.choice(top.get("strategy"), "fallback.strategy", "strict", (*BUILTIN_STRATEGIES, *strategies)),
        weights=_weights(chk, top.get("weights")),
        retry=_retry(chk, top.get("retry")),
        breaker=_breaker(chk, top.get("breaker")),
        health=_health(chk, top.get("health")),
        tasks=_tasks(chk, top.get("tasks"), config),
        default_response=_default_response(chk, top.get("default_response")),
    )
    if chk.problems:
        raise ConfigError(config.source, chk.problems)
    return settings


def _weights(chk: _Checker, raw: Any) -> BalanceWeights:
    w = chk.mapping(raw, "fallback.weights", ("latency", "errors", "cost"))
    base = BalanceWeights()
    return BalanceWeights(
        latency=chk.number(w.get("latency"), "fallback.weights.latency", base.latency),
        errors=chk.number(w.get("errors"), "fallback.weights.errors", base.errors),
        cost=chk.number(w.get("cost"), "fallback.weights.cost", base.cost),
    )


def _retry(chk: _Checker, raw: Any) -> RetrySettings:
    p = "fallback.retry"
    r = chk.mapping(raw, p, ("attempts", "base_delay", "max_delay", "max_retry_after", "on", "budget"))
    base = RetrySettings()
    b = chk.mapping(r.get("budget"), f"{p}.budget", ("ratio", "window", "min_retries"))
    on = base.on
    if r.get("on") is not None:
        items = r["on"]
        if not isinstance(items, list):
            chk.fail(f"{p}.on", "expected a list such as [429, 503, 5xx, connect, timeout]")
        else:
            parsed: set[str] = set()
            for i, item in enumerate(items):
                text = str(item).strip().lower()
                if isinstance(item, bool) or not (_STATUS_PATTERN.match(text) or text in ERROR_CLASSES):
                    chk.fail(f"{p}.on.{i}", f"expected an HTTP status (503), a class (5xx) or one of {', '.join(ERROR_CLASSES)}, got {item!r}")
                    continue
                parsed.add(text)
            on = frozenset(parsed)
    settings = RetrySettings(
        attempts=chk.integer(r.get("attempts"), f"{p}.attempts", base.attempts),
        base_delay=chk.duration(r.get("base_delay"), f"{p}.base_delay", base.base_delay),
        max_delay=chk.duration(r.get("max_delay"), f"{p}.max_delay", base.max_delay),
        max_retry_after=chk.duration(r.get("max_retry_after"), f"{p}.max_retry_after", base.max_retry_after),
        on=on,
        budget_ratio=chk.number(b.get("ratio"), f"{p}.budget.ratio", base.budget_ratio),
        budget_window=chk.duration(b.get("window"), f"{p}.budget.window", base.budget_window, minimum=0.1),
        budget_min_retries=chk.integer(b.get("min_retries"), f"{p}.budget.min_retries", base.budget_min_retries),
    )
    if settings.max_delay < settings.base_delay:
        chk.fail(f"{p}.max_delay", f"must be >= base_delay ({settings.base_delay:g}s), got {settings.max_delay:g}s")
    return settings


def _breaker(chk: _Checker, raw: Any) -> BreakerSettings:
    p = "fallback.breaker"
    b = chk.mapping(raw, p, (
        "failures", "error_rate", "min_requests", "window", "cooldown", "max_cooldown", "probe_timeout",
        "rest_on_retry_after", "redis_url", "key_prefix", "key_ttl", "redis_timeout",
    ))
    base = BreakerSettings()
    redis_url: Secret | None = None
    if b.get("redis_url") is not None:
        if not isinstance(b["redis_url"], str):
            chk.fail(f"{p}.redis_url", f"expected a URL such as redis://host:6379/0 or ${{REDIS_URL}}, got {type(b['redis_url']).__name__}")
        else:
            redis_url = resolve_secret(b["redis_url"])
            if redis_url.value and not redis_url.value.startswith(("redis://", "rediss://", "unix://")):
                chk.fail(f"{p}.redis_url", "expected a redis://, rediss:// or unix:// URL")
            elif not redis_url.value:
                chk.fail(f"{p}.redis_url", f"{redis_url.describe()} is not set: {redis_url.hint}, or remove redis_url to keep breaker state in memory")
    prefix = b.get("key_prefix", base.key_prefix)
    if prefix is not None and (not isinstance(prefix, str) or not prefix):
        chk.fail(f"{p}.key_prefix", f"expected a non-empty string, got {prefix!r}")
        prefix = base.key_prefix
    settings = BreakerSettings(
        failures=chk.integer(b.get("failures"), f"{p}.failures", base.failures, minimum=1),
        error_rate=chk.fraction(b.get("error_rate"), f"{p}.error_rate", base.error_rate, allow_null="error_rate" in b),
        min_requests=chk.integer(b.get("min_requests"), f"{p}.min_requests", base.min_requests, minimum=1),
        window=chk.duration(b.get("window"), f"{p}.window", base.window, minimum=0.1),
        cooldown=chk.duration(b.get("cooldown"), f"{p}.cooldown", base.cooldown, minimum=0.01),
        max_cooldown=chk.duration(b.get("max_cooldown"), f"{p}.max_cooldown", base.max_cooldown, minimum=0.01),
        probe_timeout=chk.duration(b.get("probe_timeout"), f"{p}.probe_timeout", base.probe_timeout, minimum=0.01),
        rest_on_retry_after=chk.boolean(b.get("rest_on_retry_after"), f"{p}.rest_on_retry_after", base.rest_on_retry_after),
        redis_url=redis_url,
        key_prefix=prefix,
        key_ttl=chk.duration(b.get("key_ttl"), f"{p}.key_ttl", base.key_ttl, minimum=1),
        redis_timeout=chk.duration(b.get("redis_timeout"), f"{p}.redis_timeout", base.redis_timeout, minimum=0.001),
    )
    if settings.max_cooldown < settings.cooldown:
        chk.fail(f"{p}.max_cooldown", f"must be >= cooldown ({settings.cooldown:g}s), got {settings.max_cooldown:g}s")
    if settings.key_ttl < settings.max_cooldown + settings.window:
        chk.fail(f"{p}.key_ttl", f"must outlive max_cooldown + window ({settings.max_cooldown + settings.window:g}s), got {settings.key_ttl:g}s")
    return settings


def _health(chk: _Checker, raw: Any) -> HealthSettings:
    p = "fallback.health"
    h = chk.mapping(raw, p, ("interval", "timeout", "method", "public"))
    base = HealthSettings()
    return HealthSettings(
        interval=chk.duration(h.get("interval"), f"{p}.interval", base.interval),
        timeout=chk.duration(h.get("timeout"), f"{p}.timeout", base.timeout, minimum=0.01),
        method=chk.choice(h.get("method"), f"{p}.method", base.method, HEALTH_METHODS),
        public=chk.boolean(h.get("public"), f"{p}.public", base.public),
    )


def _default_response(chk: _Checker, raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        chk.fail("fallback.default_response", f"expected the text to answer with, got {raw!r}")
        return None
    return raw


def _tasks(chk: _Checker, raw: Any, config: Config) -> dict[str, TaskChain]:
    p = "fallback.tasks"
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        chk.fail(p, f"expected a mapping of task name -> list of deployments, got {type(raw).__name__}")
        return {}
    known = config.deployments()
    by_id = {d.id: d for d in known}
    by_ref: dict[str, Deployment] = {}
    for dep in known:
        by_ref.setdefault(f"{dep.provider}/{dep.model}", dep)
    out: dict[str, TaskChain] = {}
    for task, spec in raw.items():
        path = f"{p}.{task}"
        then_model_chain = True
        refs = spec
        if isinstance(spec, dict):
            chk.mapping(spec, path, ("chain", "then_model_chain"))
            refs = spec.get("chain")
            then_model_chain = chk.boolean(spec.get("then_model_chain"), f"{path}.then_model_chain", True)
            path = f"{path}.chain"
        if not isinstance(refs, list) or not refs:
            chk.fail(path, "expected a non-empty list of deployment ids or provider/model names from models:")
            continue
        chain: list[Deployment] = []
        for i, ref in enumerate(refs):
            found = by_id.get(str(ref)) or by_ref.get(str(ref))
            if found is None:
                names = ", ".join(sorted(by_id)) or "none configured"
                chk.fail(f"{path}.{i}", f"{ref!r} is not a deployment under models: (known: {names})")
            elif all(d.id != found.id for d in chain):
                chain.append(found)
        out[str(task)] = TaskChain(tuple(chain), then_model_chain)
    return out

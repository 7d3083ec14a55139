"""The ``fallback:`` section of clasp.yaml: defaults, and validation with precise messages.

Declared with the core's schema fields (:class:`clasp_gateway.Section` and friends), so
every problem is reported at once, as ``fallback.key.path: what was expected``, with the
same messages and "did you mean" as the rest of clasp.yaml. The plugin's
``validate_config`` hook runs :func:`parse_settings` for ``clasp check`` and before
``clasp serve`` binds; ``startup`` runs it again to get the settings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from clasp_gateway import (
    Anything,
    Boolean,
    Choice,
    Config,
    ConfigError,
    Custom,
    Deployment,
    Duration,
    Field,
    Integer,
    Invalid,
    ListOf,
    MapOf,
    Number,
    Secret,
    Section,
    String,
    build_classifier,
    did_you_mean,
    resolve_secret,
)

from .hedge import HedgeSettings

BUILTIN_STRATEGIES = ("chain", "strict", "cost", "balanced")
"""Strategies this plugin runs itself when no plugin registers the name. ``chain`` is the
file order. ``strict`` is the same-capability fallback of clasp-router when that plugin
is installed (it registers ``strict``, ``cost`` and ``balanced`` with the seed's
capability meanings, and a registered name wins over the built-in); without it,
``strict`` keeps its old meaning, the file order, and :func:`strict_warning` says so."""

STRICT_RENAMED = (
    "fallback.strategy: strict now means 'every fallback has the same capabilities' (tools, vision, "
    "context and output room, reasoning), as clasp-router defines it; the file order is called `chain`. "
)
HEALTH_METHODS = ("auto", "models", "call")
ERROR_CLASSES = ("connect", "timeout", "protocol")
DEFAULT_RETRY_ON = ("429", "500", "502", "503", "504", "529", "connect")

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
    """The deployments that serve one request class (``fallback.tasks.<class>``)."""

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

    strategy: str = "chain"
    weights: BalanceWeights = field(default_factory=BalanceWeights)
    retry: RetrySettings = field(default_factory=RetrySettings)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    tasks: dict[str, TaskChain] = field(default_factory=dict)
    """Chains by request class (``ctx.request_class``: ``background``, ``coding``...)."""
    default_response: str | None = None
    """When every candidate failed: answer with this text instead of a 529."""
    hedge: HedgeSettings = field(default_factory=HedgeSettings)
    """Hedged first byte (``fallback.hedge``, see hedge.py)."""
    retry_overrides: dict[str, RetrySettings] = field(default_factory=dict)
    """Per deployment id: its ``retry:`` in clasp.yaml merged over ``fallback.retry``."""

    def retry_for(self, deployment_id: str) -> RetrySettings:
        """The retry policy of one deployment (its own overrides, else the global one)."""
        return self.retry_overrides.get(deployment_id, self.retry)


# --- the schema (clasp_gateway's declarative fields) ------------------------------------------


def _retry_condition(item: Any) -> str:
    text = str(item).strip().lower()
    if isinstance(item, bool) or not (_STATUS_PATTERN.match(text) or text in ERROR_CLASSES):
        raise Invalid()
    return text


def _redis_url(value: Any) -> Secret:
    if not isinstance(value, str):
        raise Invalid(f"expected a URL such as redis://host:6379/0 or ${{REDIS_URL}}, got {type(value).__name__}")
    secret = resolve_secret(value)
    if not secret.value:
        raise Invalid(f"{secret.describe()} is not set: {secret.hint}, or remove redis_url to keep breaker state in memory")
    if not secret.value.startswith(("redis://", "rediss://", "unix://")):
        raise Invalid("expected a redis://, rediss:// or unix:// URL")
    return secret


_R, _B, _H = RetrySettings(), BreakerSettings(), HealthSettings()

WEIGHTS = Section({"latency": Number(0), "errors": Number(0), "cost": Number(0)}, into=BalanceWeights)

RETRY = Section({
    "attempts": Field(Integer(0), _R.attempts),
    "base_delay": Field(Duration(), _R.base_delay),
    "max_delay": Field(Duration(), _R.max_delay),
    "max_retry_after": Field(Duration(), _R.max_retry_after),
    "on": Field(ListOf(Custom(_retry_condition, f"an HTTP status (503), a class (5xx) or one of {', '.join(ERROR_CLASSES)}"),
                       expected="a list such as [429, 503, 5xx, connect, timeout]"), _R.on),
    "budget": Section({
        "ratio": Field(Number(0), _R.budget_ratio),
        "window": Field(Duration(minimum=0.1), _R.budget_window),
        "min_retries": Field(Integer(0), _R.budget_min_retries),
    }),
})

BREAKER = Section({
    "failures": Integer(1),
    "error_rate": Field(Number(above=0, maximum=1), nullable=True),
    "min_requests": Integer(1),
    "window": Duration(minimum=0.1),
    "cooldown": Duration(minimum=0.01),
    "max_cooldown": Duration(minimum=0.01),
    "probe_timeout": Duration(minimum=0.01),
    "rest_on_retry_after": Boolean(),
    "redis_url": Custom(_redis_url, "a URL such as redis://host:6379/0 or ${REDIS_URL}"),
    "key_prefix": String(non_empty=True),
    "key_ttl": Duration(minimum=1),
    "redis_timeout": Duration(minimum=0.001),
}, into=BreakerSettings)

HEALTH = Section({
    "interval": Duration(),
    "timeout": Duration(minimum=0.01),
    "method": Choice(*HEALTH_METHODS),
    "public": Boolean(),
}, into=HealthSettings)

_HG = HedgeSettings()

HEDGE = Section({
    "enabled": Boolean(),
    "quantile": Number(above=0.5, maximum=0.9999),
    "floor": Duration(minimum=0.01),
    "initial_delay": Duration(minimum=0.01),
    "min_samples": Integer(1),
    "cold_losses": Choice("ignore", "count"),
    "alpha": Number(above=0, maximum=1),
    "budget": Section({
        "ratio": Field(Number(0, maximum=1), _HG.ratio),
        "burst": Field(Number(0), _HG.burst),
    }),
})

DEPLOYMENT_RETRY = Section({
    "attempts": Integer(0),
    "base_delay": Duration(),
    "max_delay": Duration(),
    "max_retry_after": Duration(),
    "on": RETRY.fields["on"].kind,
})
"""A deployment's ``retry:`` (clasp.yaml ``models:``): any of ``fallback.retry``'s
policy keys, overriding the global value for that deployment only (the retry budget
stays global)."""

TASK = Section({
    "chain": Field(ListOf(String(non_empty=True), non_empty=True,
                          expected="a non-empty list of deployment ids or provider/model names from models:"),
                   required="a list of deployment ids or provider/model names from models:"),
    "then_model_chain": Field(Boolean(), True),
})


def _section(strategies: Iterable[str]) -> Section:
    return Section({
        "strategy": Field(Choice(*dict.fromkeys([*BUILTIN_STRATEGIES, *strategies])), "chain"),
        "weights": WEIGHTS,
        "retry": RETRY,
        "breaker": BREAKER,
        "health": HEALTH,
        "tasks": Field(MapOf(Anything(), expected="a mapping of request class -> list of deployments"), factory=dict),
        "default_response": Field(String(non_empty=True, expected="the text to answer with"), None),
        "hedge": HEDGE,
    })


def strict_warning(config: Config, strategies: Iterable[str]) -> str | None:
    """The warning for an old ``strategy: strict`` (it changed meaning with clasp-router)."""
    section = config.raw.get("fallback")
    if not isinstance(section, dict) or section.get("strategy") != "strict":
        return None
    if "strict" in set(strategies):
        return STRICT_RENAMED + "Write `strategy: chain` to keep the file order."
    return STRICT_RENAMED + "clasp-router is not installed, so it still means the file order here: write `chain`."


def parse_settings(
    config: Config, strategies: Iterable[str] = (), classes: Iterable[str] | None = None
) -> FallbackSettings:
    """Validate ``config``'s ``fallback:`` section; raise ConfigError listing every problem.

    ``strategies`` are the names registered by ``register_routing_strategies``; they are
    valid values of ``fallback.strategy`` beside the built-in ones. ``classes`` are the
    gateway's request class names (``gateway.classifier.names``; default: the built-in
    classes), the valid keys of ``fallback.tasks``.
    """
    problems: list[str] = []
    top = _section(strategies).parse(config.raw.get("fallback"), "fallback", problems)
    r, b = top["retry"], top["breaker"]
    retry = RetrySettings(
        attempts=r["attempts"], base_delay=r["base_delay"], max_delay=r["max_delay"],
        max_retry_after=r["max_retry_after"], on=frozenset(r["on"]), budget_ratio=r["budget"]["ratio"],
        budget_window=r["budget"]["window"], budget_min_retries=r["budget"]["min_retries"],
    )
    if retry.max_delay < retry.base_delay:
        problems.append(f"fallback.retry.max_delay: must be >= base_delay ({retry.base_delay:g}s), got {retry.max_delay:g}s")
    if b.max_cooldown < b.cooldown:
        problems.append(f"fallback.breaker.max_cooldown: must be >= cooldown ({b.cooldown:g}s), got {b.max_cooldown:g}s")
    if b.key_ttl < b.max_cooldown + b.window:
        problems.append(f"fallback.breaker.key_ttl: must outlive max_cooldown + window ({b.max_cooldown + b.window:g}s), "
                        f"got {b.key_ttl:g}s")
    h = top["hedge"]
    hedge = HedgeSettings(
        enabled=_HG.enabled if h["enabled"] is None else h["enabled"],
        quantile=h["quantile"] or _HG.quantile, floor=h["floor"] or _HG.floor,
        initial_delay=h["initial_delay"] or _HG.initial_delay, min_samples=h["min_samples"] or _HG.min_samples,
        cold_losses=h["cold_losses"] or _HG.cold_losses,
        alpha=h["alpha"] or _HG.alpha, ratio=h["budget"]["ratio"], burst=h["budget"]["burst"],
    )
    settings = FallbackSettings(
        strategy=top["strategy"],
        weights=top["weights"],
        retry=retry,
        breaker=b,
        health=top["health"],
        tasks=_tasks(top["tasks"], config, problems, classes),
        default_response=top["default_response"],
        hedge=hedge,
        retry_overrides=_retry_overrides(config, retry, problems),
    )
    if problems:
        raise ConfigError(config.source, problems)
    return settings


def _tasks(
    raw: dict[str, Any], config: Config, problems: list[str], classes: Iterable[str] | None
) -> dict[str, TaskChain]:
    class_names = list(classes) if classes is not None else build_classifier({}).names
    known = config.deployments()
    by_id = {d.id: d for d in known}
    by_ref: dict[str, Deployment] = {}
    for dep in known:
        by_ref.setdefault(f"{dep.provider}/{dep.model}", dep)
    out: dict[str, TaskChain] = {}
    for task, spec in raw.items():
        path = f"fallback.tasks.{task}"
        if str(task) not in class_names:  # a chain no request would ever take
            guess = did_you_mean(str(task), class_names)
            problems.append(f"{path}: not a request class" + (f"; did you mean {guess!r}?" if guess else "")
                            + f" (classes: {', '.join(class_names)})")
            continue
        if isinstance(spec, dict):
            parsed = TASK.parse(spec, path, problems)
            refs, then_model_chain, path = parsed["chain"], parsed["then_model_chain"], f"{path}.chain"
            if refs is None:
                continue
        elif isinstance(spec, list) and spec:
            refs, then_model_chain = spec, True
        else:
            problems.append(f"{path}: expected a non-empty list of deployment ids or provider/model names from models:")
            continue
        chain: list[Deployment] = []
        for i, ref in enumerate(refs):
            found = by_id.get(str(ref)) or by_ref.get(str(ref))
            if found is None:
                names = ", ".join(sorted(by_id)) or "none configured"
                problems.append(f"{path}.{i}: {ref!r} is not a deployment under models: (known: {names})")
            elif all(d.id != found.id for d in chain):
                chain.append(found)
        out[str(task)] = TaskChain(tuple(chain), then_model_chain)
    return out


def _retry_overrides(config: Config, retry: RetrySettings, problems: list[str]) -> dict[str, RetrySettings]:
    """Each deployment's ``retry:`` merged over the global policy (checked here: the
    core keeps it raw, as this plugin owns what it means)."""
    out: dict[str, RetrySettings] = {}
    for route in config.models:
        for i, dep in enumerate(route.deployments):
            raw = dep.settings.get("retry")
            if raw is None or dep.id in out:
                continue
            path = f"models.{route.pattern}.{i}.retry"
            given = DEPLOYMENT_RETRY.parse(raw, path, problems, defaults=False)
            if "on" in given:
                given["on"] = frozenset(given["on"])
            merged = replace(retry, **given)
            if merged.max_delay < merged.base_delay:
                problems.append(f"{path}.max_delay: must be >= base_delay ({merged.base_delay:g}s), "
                                f"got {merged.max_delay:g}s")
            out[dep.id] = merged
    return out

"""``context:`` and ``context_fallback:`` of clasp.yaml: how each route fits requests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...config import Config, ConfigError, ModelRoute
from ...errors import GatewayError
from ...types import Deployment
from ...validation import Boolean, Integer, ListOf, Number, Section, String

TRIM_TO = 0.8
"""A trim aims at this fraction of the budget, leaving room for the next turns."""

SUMMARY_MAX_TOKENS = 1024
"""Longest summary asked of the summariser (tokens)."""


@dataclass(slots=True, frozen=True)
class ContextSettings:
    """How one model route fits requests into windows.

    From the top-level ``context:`` section, overridden by the route's own
    ``context:`` mapping; ``context_fallback:`` is the route's list of larger-window
    deployments (deployment ids or public model names).
    """

    enabled: bool = True
    trim_to: float = TRIM_TO
    fallback: tuple[Deployment, ...] = ()
    summarize_with: str | None = None
    summarizers: tuple[Deployment, ...] = ()
    summary_max_tokens: int = SUMMARY_MAX_TOKENS


CONTEXT = Section({
    "enabled": Boolean(),
    "trim_to": Number(0.1, 1, expected="a fraction of the budget between 0.1 and 1"),
    "summarize_with": String(non_empty=True, expected="a public model name or a deployment id"),
    "summary_max_tokens": Integer(16),
})
"""``context:`` at the top level, and a route's own ``context:`` (its keys override)."""

CONTEXT_FALLBACK = ListOf(String(non_empty=True, expected="a deployment id or a public model name"), single=True,
                          expected="a list of deployment ids or public model names")
"""A route's ``context_fallback:``."""


def load_settings(config: Config, resolve: Callable[[str], ModelRoute]) -> dict[str, ContextSettings]:
    """Every route's :class:`ContextSettings`; :class:`ConfigError` lists the problems."""
    problems: list[str] = []
    by_id = {d.id: d for d in config.deployments()}

    def deployments(name: str, path: str) -> tuple[Deployment, ...]:
        if name in by_id:
            return (by_id[name],)
        try:
            return tuple(resolve(name).deployments)
        except GatewayError:
            known = ", ".join(sorted(by_id)) or "none"
            problems.append(f"{path}: {name!r} is neither a deployment id ({known}) nor a served model name")
            return ()

    def merge(base: dict[str, Any], raw: Any, path: str) -> dict[str, Any]:
        return {**base, **CONTEXT.parse(raw, path, problems, defaults=False)}

    base = merge({}, config.raw.get("context"), "context")
    result: dict[str, ContextSettings] = {}
    for route in config.models:
        path = f"models.{route.pattern}"
        values = merge(base, route.settings.get("context"), f"{path}.context")
        fallback: list[Deployment] = []
        raw_fallback = route.settings.get("context_fallback")
        if raw_fallback is not None:
            for i, name in enumerate(CONTEXT_FALLBACK.parse(raw_fallback, f"{path}.context_fallback", problems)):
                fallback += [d for d in deployments(name, f"{path}.context_fallback.{i}") if d not in fallback]
        summarize_with = values.get("summarize_with")
        own = route.settings.get("context")
        where = f"{path}.context" if isinstance(own, dict) and "summarize_with" in own else "context"
        summarizers = deployments(summarize_with, f"{where}.summarize_with") if summarize_with else ()
        result[route.pattern] = ContextSettings(
            enabled=values.get("enabled", True),
            trim_to=float(values.get("trim_to", TRIM_TO)),
            fallback=tuple(fallback),
            summarize_with=summarize_with,
            summarizers=summarizers,
            summary_max_tokens=values.get("summary_max_tokens", SUMMARY_MAX_TOKENS),
        )
    if problems:
        raise ConfigError(config.source, sorted(set(problems)))
    return result

"""The ``cache:`` section of clasp.yaml, and the policy it gives each route.

The section's presence turns the cache on (``enabled`` defaults to true once there is
a ``cache:``); without one the plugin does nothing per request. Every size and time
has a finite default. Per-route overrides are keyed by public model glob, first match
in file order (``routes: {"claude-*haiku*": {enabled: false}}``).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from clasp_gateway import (
    Anything,
    Boolean,
    Choice,
    Custom,
    Duration,
    Field,
    Integer,
    Invalid,
    ListOf,
    MapOf,
    Number,
    Section,
    String,
)

from .backends.base import BackendLimits

__all__ = ["CacheSettings", "RoutePolicy", "SETTINGS", "parse_settings"]

DEFAULT_CLASSES = ("question", "coding", "thinking", "long_context", "images")
"""Request classes cached by default: all built-in ones but ``background`` (quota probes
and session titles: cheap, and a probe must reach the provider)."""


def _tool_calls(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise Invalid("expected true, false or a list of tool names whose calls may be replayed, got "
                  + type(value).__name__)


TOOL_CALLS = Custom(_tool_calls, "true, false or a list of tool names")

_POLICY_FIELDS: dict[str, Field] = {
    "enabled": Field(Boolean()),
    "ttl": Field(Duration(minimum=1)),
    "request_classes": Field(ListOf(String(non_empty=True))),
    "max_temperature": Field(Number(minimum=0, maximum=2)),
    "tool_calls": Field(TOOL_CALLS),
    "stale_if_error_max_age": Field(Duration(minimum=0)),
}

ROUTE = Section(_POLICY_FIELDS, expected="a mapping of cache settings for the route")

BACKEND_OPTIONS = Section({
    "url": Field(String(non_empty=True)),
    "prefix": Field(String(non_empty=True), "clasp:cache:"),
    "timeout": Field(Duration(minimum=0.001), 0.25),
    "max_connections": Field(Integer(minimum=1, maximum=1024), 32),
})

SETTINGS = Section({
    "enabled": Field(Boolean(), True),
    "backend": Field(String(pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", expected="a backend name such as 'redis'"),
                     "memory"),
    "backend_options": Field(BACKEND_OPTIONS),
    "scope": Field(Choice("team", "key"), "team"),
    "ttl": Field(Duration(minimum=1), 3600.0),
    "max_entries": Field(Integer(minimum=1, maximum=10_000_000), 10_000),
    "max_bytes": Field(Integer(minimum=1024), 256 * 1024 * 1024),
    "max_entry_bytes": Field(Integer(minimum=256, maximum=64 * 1024 * 1024), 1024 * 1024),
    "request_classes": Field(ListOf(String(non_empty=True)), list(DEFAULT_CLASSES)),
    "max_temperature": Field(Number(minimum=0, maximum=2), 0.0),
    "tool_calls": Field(TOOL_CALLS, False),
    "stale_if_error_max_age": Field(Duration(minimum=0), 86400.0),
    "routes": Field(MapOf(ROUTE, expected="a mapping of public model globs to cache settings"), {}),
    "semantic": Field(Anything("a mapping (clasp_cache.semantic's settings)")),
})


@dataclass(slots=True, frozen=True)
class RoutePolicy:
    """What the cache does for requests to one public model."""

    enabled: bool
    ttl: float
    request_classes: frozenset[str]
    max_temperature: float
    tool_calls: bool | tuple[str, ...]
    """Answers ending in tool calls: never (False), always (True), or when every call is
    to one of these tools (read-only ones, e.g. ``[Read, Grep]``)."""
    stale_if_error_max_age: float

    def replays_calls(self, names: list[str]) -> bool:
        """Whether an answer calling ``names`` (not yet run by the client) may be stored."""
        if not names:
            return True
        if isinstance(self.tool_calls, bool):
            return self.tool_calls
        return all(name in self.tool_calls for name in names)


@dataclass(slots=True)
class CacheSettings:
    """The parsed ``cache:`` section."""

    enabled: bool
    backend: str
    backend_options: dict[str, Any]
    scope: str
    limits: BackendLimits
    default: RoutePolicy
    routes: list[tuple[str, RoutePolicy]]
    semantic: dict[str, Any] | None
    _policies: dict[str, RoutePolicy] = field(default_factory=dict)

    def policy(self, model: str) -> RoutePolicy:
        """The policy for public model ``model`` (first matching glob, else the default)."""
        cached = self._policies.get(model)
        if cached is not None:
            return cached
        policy = next((p for glob, p in self.routes if fnmatch.fnmatchcase(model, glob)), self.default)
        if len(self._policies) < 10_000 and len(model) <= 256:  # bounded: names come from clients
            self._policies[model] = policy
        return policy

    @property
    def max_stale_age(self) -> float:
        return max([self.default.stale_if_error_max_age, *(p.stale_if_error_max_age for _, p in self.routes)])


def parse_settings(raw: Any, problems: list[str]) -> CacheSettings:
    """The ``cache:`` section (``raw``), defaults filled in; mistakes appended to ``problems``."""
    values = SETTINGS.parse(raw, "cache", problems)
    default = RoutePolicy(
        enabled=values["enabled"], ttl=values["ttl"], request_classes=frozenset(values["request_classes"]),
        max_temperature=values["max_temperature"], tool_calls=values["tool_calls"],
        stale_if_error_max_age=values["stale_if_error_max_age"],
    )
    routes: list[tuple[str, RoutePolicy]] = []
    for glob, override in (values.get("routes") or {}).items():
        merged: dict[str, Any] = {
            "enabled": default.enabled, "ttl": default.ttl, "request_classes": default.request_classes,
            "max_temperature": default.max_temperature, "tool_calls": default.tool_calls,
            "stale_if_error_max_age": default.stale_if_error_max_age,
        }
        for key, value in override.items():
            if value is not None:
                merged[key] = frozenset(value) if key == "request_classes" else value
        routes.append((glob, RoutePolicy(**merged)))
    limits = BackendLimits(max_entries=values["max_entries"], max_bytes=values["max_bytes"],
                           max_entry_bytes=values["max_entry_bytes"])
    return CacheSettings(
        enabled=values["enabled"] or any(p.enabled for _, p in routes), backend=values["backend"],
        backend_options=values.get("backend_options") or {}, scope=values["scope"], limits=limits,
        default=default, routes=routes, semantic=values.get("semantic"),
    )

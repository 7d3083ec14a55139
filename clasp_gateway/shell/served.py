"""What the gateway serves, by the concrete model names clients send.

clasp.yaml routes public names, exact or glob (``claude-*sonnet*``), to deployments.
A client cannot send a glob, so everything a client is shown names real models:

- :func:`tier_models`: for each Claude Code tier (opus, sonnet, haiku, fable), the
  Claude Code model name to send for it. An exact route that names the tier wins;
  otherwise the first name Claude Code knows for the tier (:data:`TIER_NAMES`) that a
  route serves, resolved as the pipeline resolves names (exact first, then the first
  matching glob in file order).
- :func:`served_models`: ``GET /v1/models``: exact route names and each tier's name,
  with a display name and a description naming the real model behind it (provider/
  model of the primary deployment, or "routed per request" when a strategy picks
  one per request).
- :func:`describe_model`: ``GET /v1/models/{id}``: any name a route serves,
  including any name a glob matches.
- :func:`claude_code_profile`: ``GET /-/claude-code``, what ``clasp code`` needs to
  size Claude Code to the models (names, capabilities, usable input windows). It
  names providers and models, never an ``api_base``, a key or a header.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..config import Config, ModelRoute
from ..errors import GatewayError
from ..shaping.context import input_budget
from ..types import Deployment
from .http import authenticate, error_response, json_response

__all__ = [
    "CLAUDE_CODE_MAX_TOKENS",
    "TIERS",
    "TIER_NAMES",
    "ServedModel",
    "claude_code_endpoint",
    "claude_code_profile",
    "describe_model",
    "route_for",
    "served_models",
    "tier_models",
]

TIERS = ("opus", "sonnet", "haiku", "fable")
"""Claude Code's model tiers, each set by ``ANTHROPIC_DEFAULT_<TIER>_MODEL``."""

TIER_NAMES: dict[str, tuple[str, ...]] = {
    # Claude Code 2.1.331's own names, the preferred one first. Left out: names it
    # remaps (claude-opus-4-0/4-1 become Opus 5.5) or warns about on every start as
    # retired (claude-sonnet-4-0; claude-sonnet-4-5 only as a last resort).
    "opus": ("claude-opus-4-6", "claude-opus-4-7", "claude-opus-4-8", "claude-opus-5", "claude-opus-5-5",
             "claude-opus-4-5"),
    "sonnet": ("claude-sonnet-4-6", "claude-sonnet-5", "claude-sonnet-5-5", "claude-sonnet-4-5"),
    "haiku": ("claude-haiku-4-5", "claude-haiku-5-5"),
    "fable": ("claude-fable-5-2", "claude-fable-5-1", "claude-fable-5"),
}

CLAUDE_CODE_MAX_TOKENS: dict[str, int] = {
    # ``max_tokens`` Claude Code 2.1.331 asks for with each name (measured).
    "claude-opus-4-5": 32_000, "claude-opus-4-6": 64_000, "claude-opus-4-7": 64_000, "claude-opus-4-8": 64_000,
    "claude-opus-5": 64_000, "claude-opus-5-5": 128_000,
    "claude-sonnet-4-5": 32_000, "claude-sonnet-4-6": 32_000, "claude-sonnet-5": 64_000, "claude-sonnet-5-5": 128_000,
    "claude-haiku-4-5": 32_000, "claude-haiku-5-5": 128_000,
    "claude-fable-5": 64_000, "claude-fable-5-1": 64_000, "claude-fable-5-2": 128_000,
}
CLAUDE_CODE_MAX_TOKENS_DEFAULT = 128_000
"""Assumed for a name not measured: the most Claude Code asks for."""

_STRICT = (None, "strict", "chain")


def route_for(config: Config, name: str) -> ModelRoute | None:
    """The route serving ``name``: an exact route first, then the first matching glob
    (the pipeline's rule, see ``Gateway.resolve_model``)."""
    globs: list[ModelRoute] = []
    for route in config.models:
        if any(ch in route.pattern for ch in "*?["):
            globs.append(route)
        elif route.pattern == name:
            return route
    return next((r for r in globs if fnmatch.fnmatchcase(name, r.pattern)), None)


def _is_glob(route: ModelRoute) -> bool:
    return any(ch in route.pattern for ch in "*?[")


def tier_models(config: Config) -> dict[str, tuple[str, ModelRoute]]:
    """For each tier some route serves: the name to send and the route serving it."""
    found: dict[str, tuple[str, ModelRoute]] = {}
    for tier in TIERS:
        exact = next(
            (r for r in config.models if not _is_glob(r) and r.deployments
             and tier in r.pattern.lower() and ("claude" in r.pattern.lower() or "anthropic" in r.pattern.lower())),
            None,
        )
        if exact is not None:
            found[tier] = (exact.pattern, exact)
            continue
        for name in TIER_NAMES[tier]:
            route = route_for(config, name)
            if route is not None and route.deployments:
                found[tier] = (name, route)
                break
    return found


def routing_strategy(config: Config, route: ModelRoute) -> str | None:
    """The strategy that picks this route's deployment per request, or None when the
    chain is tried in order (the first deployment serves unless it fails)."""
    own = route.settings.get("strategy") or route.settings.get("router")
    if own not in _STRICT:
        return str(own)
    fallback = config.section("fallback").get("strategy")
    if fallback not in _STRICT and len(route.deployments) > 1:
        return str(fallback)
    return None


def _considered(config: Config, route: ModelRoute) -> list[Deployment]:
    """The deployments that may serve a request: all of them when a strategy picks
    per request, else the primary (a fallback only serves when it fails)."""
    return list(route.deployments) if routing_strategy(config, route) else list(route.deployments[:1])


def _upstream(dep: Deployment) -> str:
    return f"{dep.provider}/{dep.model}"


def _tokens(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000:
        return f"{n / 1000:.1f}".rstrip("0").rstrip(".") + "k"
    return str(n)


@dataclass(slots=True, frozen=True)
class ServedModel:
    """A concrete name a client can send, and the route serving it."""

    id: str
    route: ModelRoute
    display_name: str
    description: str
    tier: str | None = None

    def openai(self, created: int) -> dict[str, Any]:
        """The OpenAI ``model`` object (plus ``display_name`` and ``description``)."""
        return {"id": self.id, "object": "model", "created": created, "owned_by": "clasp",
                "display_name": self.display_name, "description": self.description}

    def anthropic(self, created_at: str) -> dict[str, Any]:
        """Anthropic's ``model`` object (plus ``description``, which Claude Code reads)."""
        return {"type": "model", "id": self.id, "display_name": self.display_name, "created_at": created_at,
                "description": self.description}


def describe_model(config: Config, name: str, route: ModelRoute | None = None, tier: str | None = None) -> ServedModel | None:
    """``name`` as a served model, or None when no route serves it."""
    route = route or route_for(config, name)
    if route is None or not route.deployments:
        return None
    if tier is None:
        tier = next((t for t, (n, _) in tier_models(config).items() if n == name), None)
    deps = route.deployments
    primary = deps[0]
    strategy = routing_strategy(config, route)
    if strategy is not None:
        names = ", ".join(dict.fromkeys(_upstream(d) for d in deps))
        display = " | ".join(dict.fromkeys(d.model for d in deps)) + " (routed)"
        description = f"routed per request by the gateway ({strategy}) among {names}"
    else:
        display = f"{primary.model} ({primary.provider})"
        description = f"{_upstream(primary)} through the clasp gateway"
        if primary.info.max_input_tokens:
            description += f" · {_tokens(primary.info.max_input_tokens)} context"
        if len(deps) > 1:
            description += " · falls back to " + ", ".join(dict.fromkeys(_upstream(d) for d in deps[1:]))
    if not all(d.info.supports_vision for d in _considered(config, route)):
        description += " · text only"
    if tier is not None:  # several tiers often share one model: say which this is
        description = f"{tier} tier: {description}"
    return ServedModel(name, route, display, description, tier)


def served_models(config: Config) -> list[ServedModel]:
    """Every concrete name the gateway lists: exact route names, and for glob routes
    the tier names they serve (a glob itself is never a model id)."""
    tiers = tier_models(config)
    by_route: dict[int, list[tuple[str, str | None]]] = {}
    for tier, (name, route) in tiers.items():
        by_route.setdefault(id(route), []).append((name, tier))
    tier_of = {name: tier for tier, (name, _) in tiers.items()}
    out: list[ServedModel] = []
    seen: set[str] = set()
    for route in config.models:
        names: list[tuple[str, str | None]] = (
            by_route.get(id(route), []) if _is_glob(route) else [(route.pattern, tier_of.get(route.pattern))]
        )
        for name, its_tier in names:
            if name in seen:
                continue
            model = describe_model(config, name, route, its_tier)
            if model is not None:
                seen.add(name)
                out.append(model)
    return out


def _capabilities(deps: list[Deployment]) -> list[str]:
    """Claude Code capability names (``_SUPPORTED_CAPABILITIES``) the deployments
    that may serve have: no thinking or effort for a model that cannot reason."""
    caps = ["temperature"]
    if deps and all(d.info.supports_reasoning for d in deps):
        caps = ["thinking", "adaptive_thinking", "interleaved_thinking", "effort", *caps]
    return caps


def _window(config: Config, name: str, route: ModelRoute) -> dict[str, Any]:
    """The input window Claude Code may fill before it must compact.

    The primary deployment's (with a per-request strategy: the smallest of the
    route's, since any of them may serve), less the answer room Claude Code asks for,
    computed exactly as the gateway's context handling does (``input_budget``), so
    Claude Code compacts before the gateway would have to trim. A fallback with a
    smaller window is the gateway's own business (it reroutes or trims).
    """
    deps = _considered(config, route)
    asks = CLAUDE_CODE_MAX_TOKENS.get(name, CLAUDE_CODE_MAX_TOKENS_DEFAULT)
    budgets = [(b, d) for d in deps if (b := input_budget(d, asks)) is not None]
    if not budgets:
        return {"max_input_tokens": None, "max_output_tokens": deps[0].info.max_output_tokens if deps else None,
                "usable_input_tokens": None}
    (usable, _reserve, window), dep = min(budgets, key=lambda item: item[0][0])
    return {"max_input_tokens": window, "max_output_tokens": dep.info.max_output_tokens, "usable_input_tokens": usable}


def _profile_entry(config: Config, model: ServedModel) -> dict[str, Any]:
    deps = _considered(config, model.route)
    return {
        "model": model.id,
        "display_name": model.display_name,
        "description": model.description,
        "upstream": _upstream(deps[0]),
        "routed": routing_strategy(config, model.route),
        "reasoning": all(d.info.supports_reasoning for d in deps),
        "vision": all(d.info.supports_vision for d in deps),
        "capabilities": _capabilities(deps),
        **_window(config, model.id, model.route),
    }


def claude_code_profile(config: Config, model: str | None = None) -> dict[str, Any]:
    """What ``clasp code`` needs: per tier the name to send, names and capabilities
    for Claude Code's ``/model`` picker, and usable windows; ``model``: also the
    entry of that name (``claude --model NAME``), None when it is not served."""
    tiers = tier_models(config)
    profile: dict[str, Any] = {
        "tiers": {
            tier: _profile_entry(config, described)
            for tier, (name, route) in tiers.items()
            if (described := describe_model(config, name, route, tier)) is not None
        },
    }
    if model is not None:
        described = describe_model(config, model)
        profile["model"] = None if described is None else _profile_entry(config, described)
    return profile


async def claude_code_endpoint(request: Request) -> Response:
    """``GET /-/claude-code[?model=NAME]``: :func:`claude_code_profile`, for a valid key."""
    gateway = request.app.state.gateway
    try:
        await authenticate(request)
    except GatewayError as exc:
        return error_response(exc, "anthropic", request.scope["state"]["request_id"])
    model = request.query_params.get("model") or None
    return json_response(claude_code_profile(gateway.config, model))


def created_timestamps() -> tuple[int, str]:
    """Now, as OpenAI (epoch seconds) and Anthropic (RFC 3339) write model creation."""
    now = time.time()
    return int(now), datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

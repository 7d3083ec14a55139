"""clasp-credential-guard: refuse to send credentials to a third-party provider.

A developer pastes a ``.env`` file, a service-account JSON or a deploy key into a
conversation; this plugin keeps it from leaving for a provider the organisation does
not run. With a ``credential_guard:`` section, every request is scanned once (one
compiled pattern, first finding wins: :mod:`.scan`) before any attempt, and a
request that carries a credential is never sent to an untrusted deployment:

- deployments marked ``trusted: true`` in clasp.yaml, and self-hosted ones (the
  Ollama, vLLM, LM Studio... providers) still get it, unless marked ``trusted: false``;
- any other candidate is skipped; when none is left, the client gets a 403
  (Anthropic- or OpenAI-shaped) naming the kind of credential and the message it is
  in, never any of its text.

A cached answer may still be replayed (it calls no provider). The guard is on for
every route and team, unless ``routes:`` (public model globs) or ``teams:`` turn it
off (or on) for some. Uses only the public API.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from clasp_gateway import (
    Boolean,
    CanonicalRequest,
    Choice,
    Config,
    Deployment,
    Field,
    ListOf,
    MapOf,
    PermissionDeniedError,
    RegisterConfigSection,
    RequestContext,
    Section,
    hookimpl,
)

from .scan import KINDS, find_credential, texts_of

__all__ = ["KINDS", "CredentialGuard", "find_credential", "is_trusted"]

SETTINGS = Section({
    "enabled": Field(Boolean(), True),
    "kinds": Field(ListOf(Choice(*KINDS, expected="one of " + ", ".join(KINDS))), list(KINDS)),
    "routes": Field(MapOf(Boolean(), expected="a mapping of public model name (or glob) to true or false"), {}),
    "teams": Field(MapOf(Boolean(), expected="a mapping of team name to true or false"), {}),
})
"""``credential_guard:``. ``routes``/``teams`` override ``enabled`` (a team's choice wins
over a route's: a team may be exempt on every route)."""

SELF_HOSTED = frozenset({"ollama", "ollama_chat", "vllm", "hosted_vllm", "lm_studio", "llamafile", "xinference",
                         "triton", "oobabooga", "local"})
"""Providers that are software a team runs itself, not a third party."""

RUNTIME = "credential_guard.runtime"
STATE = "credential_guard"
"""``ctx.state`` key: ``Finding`` of this request (``None``: nothing found or not scanned)."""


@dataclass(slots=True, frozen=True)
class Finding:
    """A credential found in a request: its kind and where, never its text."""

    kind: str
    where: str


def is_trusted(deployment: Deployment) -> bool:
    """Whether ``deployment`` may receive credentials: ``trusted:`` when set, else
    whether its provider is self-hosted software (:data:`SELF_HOSTED`). An
    OpenAI-compatible ``api_base`` on a private address is not trusted by itself: it
    may as well be a proxy to a third party; mark it ``trusted: true``."""
    marked = deployment.settings.get("trusted")
    if isinstance(marked, bool):
        return marked
    return deployment.provider in SELF_HOSTED


def locate(request: CanonicalRequest, api: str, kinds: frozenset[str]) -> Finding | None:
    """The first credential in ``request``'s messages, with where it is as the client
    numbers them (the Anthropic API carries ``system`` apart from ``messages``)."""
    messages = request.get("messages") or []
    offset = 0
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = str(message.get("role") or "")
        if api == "anthropic" and role in ("system", "developer"):
            offset += 1
        for text in texts_of(message):
            kind = find_credential(text, kinds)
            if kind is not None:
                where = "system" if api == "anthropic" and role in ("system", "developer") else (
                    f"messages[{index - offset}] ({role})")
                return Finding(kind, where)
    return None


class CredentialGuard:
    """One app's guard, with that app's settings (registered at start-up)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.enabled: bool = settings["enabled"]
        self.kinds = frozenset(settings["kinds"])
        self.routes: dict[str, bool] = settings["routes"]
        self.teams: dict[str, bool] = settings["teams"]

    def applies(self, ctx: RequestContext) -> bool:
        """Whether this request is guarded: its team's setting, else the first route
        glob matching its public model, else ``enabled``."""
        team = ctx.principal.team if ctx.principal is not None else None
        if team is not None and team in self.teams:
            return self.teams[team]
        for pattern, on in self.routes.items():
            if fnmatch.fnmatchcase(ctx.public_model, pattern):
                return on
        return self.enabled

    @hookimpl(tryfirst=True)
    def before_call(self, ctx: RequestContext, request: CanonicalRequest) -> None:
        """Scan once, before any attempt (and before a cache or budget plugin answers
        or reserves); answer nothing."""
        if self.kinds and self.applies(ctx):
            ctx.state[STATE] = locate(request, ctx.api, self.kinds)

    @hookimpl
    def before_attempt(self, ctx: RequestContext, deployment: Deployment) -> bool | None:
        """Skip an untrusted deployment when the request carries a credential."""
        finding: Finding | None = ctx.state.get(STATE)
        if finding is None or is_trusted(deployment):
            return None
        ctx.state.setdefault(STATE + ".skipped", []).append(deployment.id)
        return False

    @hookimpl(tryfirst=True)
    def on_exhausted(self, ctx: RequestContext) -> PermissionDeniedError | None:
        """Every candidate was skipped or failed: when the guard skipped one, say why
        (before any plugin answers with a degraded reply)."""
        finding: Finding | None = ctx.state.get(STATE)
        skipped: list[str] = ctx.state.get(STATE + ".skipped") or []
        if finding is None or not skipped:
            return None
        return PermissionDeniedError(
            f"this request carries {KINDS[finding.kind]} in {finding.where}; the gateway does not send credentials "
            f"to third-party providers ({', '.join(dict.fromkeys(skipped))}). Remove it from the conversation "
            f"(or ask your administrator for a trusted deployment of {ctx.public_model!r}).",
            retryable=False,
        )


@hookimpl
def register_config_sections(register: RegisterConfigSection) -> None:
    register("credential_guard")


@hookimpl
def validate_config(config: Config) -> list[str]:
    problems: list[str] = []
    SETTINGS.parse(config.raw.get("credential_guard"), "credential_guard", problems)
    return problems


@hookimpl
def startup(app: Any, config: Config) -> None:
    if "credential_guard" in config.raw:  # registered per app: no module-level settings
        settings = SETTINGS.parse(config.raw["credential_guard"], "credential_guard", [])
        app.state.gateway.pm.register(CredentialGuard(settings), name=RUNTIME)


@hookimpl
def shutdown(app: Any) -> None:
    if app.state.gateway.pm.has_plugin(RUNTIME):
        app.state.gateway.pm.unregister(name=RUNTIME)

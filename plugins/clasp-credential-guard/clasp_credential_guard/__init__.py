"""clasp-credential-guard: refuse to send credentials to a third-party provider.

A developer pastes a ``.env`` file, a service-account JSON or a deploy key into a
conversation, or a tool reads one (``cat ~/.aws/credentials``, a web page with a
token in it); this plugin keeps it from leaving for a provider the organisation does
not run. With a ``credential_guard:`` section, every request is scanned once before
any attempt (:mod:`.scan`: one compiled pattern, first finding wins), everywhere a
provider would read it (:mod:`.texts`): the system prompt, every message's text, tool
calls' inputs and tool results (nested blocks too), and the tool definitions
(descriptions, schemas' defaults, enums and examples). Each later round the gateway
runs itself (server tools: a web search's or a fetch's result fed back to the model)
is scanned too, for what it added. A request that carries a credential is never sent
to an untrusted deployment, as an attempt or as a side call (a summariser condensing
what a context trim drops, clasp-router's shadow copy for an experiment):

- deployments marked ``trusted: true`` in clasp.yaml, and self-hosted ones (the
  Ollama, vLLM, LM Studio... providers) still get it, unless marked ``trusted: false``;
- any other candidate is skipped; when none is left, the client gets a 403
  (Anthropic- or OpenAI-shaped) naming the kind of credential and where it is in the
  client's own request (``tools[2].description``, ``messages[4].content[1] (user)``),
  never any of its text.

An Anthropic client's request is scanned as it arrived (the body clasp-claude keeps
for its pass-through, which is what an Anthropic deployment receives, server-tool and
thinking blocks included), so places are numbered as the client numbers them; other
requests as the gateway received them. Parts found clean are remembered by digest
(:mod:`.finder`), so a conversation's next turn only pays for what is new.

A cached answer may still be replayed (it calls no provider). The guard is on for
every route and team, unless ``routes:`` (public model globs) or ``teams:`` turn it
off (or on) for some. Uses only the public API.
"""

from __future__ import annotations

import fnmatch
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

from .finder import Finding, Scanner, locate
from .scan import KINDS, find_credential
from .texts import segments

__all__ = ["KINDS", "STATE", "CredentialGuard", "Finding", "find_credential", "is_trusted", "locate"]

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
SEEN = STATE + ".seen"
"""``ctx.state`` key: how many canonical messages were scanned (absent: not guarded)."""


def is_trusted(deployment: Deployment) -> bool:
    """Whether ``deployment`` may receive credentials: ``trusted:`` when set, else
    whether its provider is self-hosted software (:data:`SELF_HOSTED`). An
    OpenAI-compatible ``api_base`` on a private address is not trusted by itself: it
    may as well be a proxy to a third party; mark it ``trusted: true``."""
    marked = deployment.settings.get("trusted")
    if isinstance(marked, bool):
        return marked
    return deployment.provider in SELF_HOSTED


def client_body(ctx: RequestContext, request: CanonicalRequest) -> dict[str, Any]:
    """What to scan for ``ctx``: the client's body as it arrived when its route kept it
    (``RequestContext.client_body``: clasp-claude's ``/v1/messages``, a superset of the
    canonical request, what a pass-through sends, numbered as the client numbers it),
    else the canonical request (an OpenAI client's body as it arrived)."""
    body = ctx.client_body
    return body if isinstance(body, dict) else request


def added_by_gateway(messages: list[Any], index: int) -> str:
    """How a person reads a message a later round added (a server tool's result, the
    model's own call)."""
    message = messages[index]
    role = message.get("role") if isinstance(message, dict) else None
    if role == "tool":
        call_id = message.get("tool_call_id")
        for earlier in reversed(messages[:index]):
            for call in (earlier.get("tool_calls") or ()) if isinstance(earlier, dict) else ():
                if isinstance(call, dict) and call.get("id") == call_id:
                    return f"the result of the gateway's server tool {(call.get('function') or {}).get('name')!r}"
        return "a server tool's result"
    return f"a message the gateway added in a later round ({role})"


class CredentialGuard:
    """One app's guard, with that app's settings (registered at start-up)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.enabled: bool = settings["enabled"]
        self.kinds = frozenset(settings["kinds"])
        self.routes: dict[str, bool] = settings["routes"]
        self.teams: dict[str, bool] = settings["teams"]
        self.scanner = Scanner(self.kinds)

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
            ctx.state[STATE] = self.scanner.first(segments(client_body(ctx, request)))
            ctx.state[SEEN] = len(request.get("messages") or ())

    @hookimpl
    def before_round(self, ctx: RequestContext, request: CanonicalRequest) -> None:
        """A later round (server tools): scan the messages the gateway added since."""
        seen: int | None = ctx.state.get(SEEN)
        messages = request.get("messages") or []
        if seen is None or ctx.state.get(STATE) is not None or len(messages) <= seen:
            return
        finding = self.scanner.first((f"messages[{i}]", messages[i], "") for i in range(seen, len(messages)))
        ctx.state[SEEN] = len(messages)
        if finding is not None:
            index = int(finding.where[len("messages[") : finding.where.index("]")])
            ctx.state[STATE] = Finding(finding.kind, added_by_gateway(messages, index))

    @hookimpl
    def before_attempt(self, ctx: RequestContext, deployment: Deployment) -> bool | None:
        """Skip an untrusted deployment when the request carries a credential."""
        finding: Finding | None = ctx.state.get(STATE)
        if finding is None or is_trusted(deployment):
            return None
        ctx.state.setdefault(STATE + ".skipped", []).append(deployment.id)
        return False

    @hookimpl
    def before_side_call(self, ctx: RequestContext, deployment: Deployment) -> bool | None:
        """Keep a conversation that carries a credential off an untrusted deployment
        the gateway or a plugin sends it to on its own account (a context summariser,
        an experiment's shadow copy). A guarded request not scanned yet (a side call
        started before ``before_call``) is kept off too."""
        if is_trusted(deployment) or not (self.kinds and self.applies(ctx)):
            return None
        if SEEN not in ctx.state or ctx.state.get(STATE) is not None:
            return False
        return None

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

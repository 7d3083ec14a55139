"""clasp.yaml: loading, secret references and validation with precise errors.

Every field is declared with its type, range or choices (the schemas below, built
from :mod:`clasp_gateway.validation`), every mistake is reported at once as
``file: key.path: what was expected, got what``, and unknown keys are errors with a
"did you mean" (a misspelt ``api_base`` would otherwise send the key to the
provider's public default host). Top-level sections other than the core's belong
to plugins, which declare and check them (``register_config_sections``,
``validate_config``); :func:`section_problems` and :func:`plugin_problems` run
those checks when the gateway is built, by ``clasp check`` and ``clasp serve`` alike.

Secrets are references: ``${ENV_VAR}`` (``${ENV_VAR:-default}`` for non-secrets),
``file:/run/secrets/name``, or ``scheme:path`` for a secret backend a plugin registers
(``vault:secret/llm/openai#api_key``, see :mod:`.secrets`). A reference that does not resolve does not stop the
gateway: the deployment that needs it is marked unusable, the start-up log says
which variable to set, and requests routed to it get the same message.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import importlib.metadata
import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .classes import BACKGROUND_MAX_TOKENS, LONG_CONTEXT_TOKENS
from .content_log import LOGGING
from .redact import register_secret
from .registrations import RegistrationError, config_sections, sections_declared_by
from .retention import RETENTION
from .secrets import KNOWN_MANAGERS, SecretBackendRegistration, SecretBackends, is_backend_reference
from .types import Deployment, KeyPolicy, Secret, Timeouts
from .validation import (
    Anything,
    Boolean,
    Choice,
    Custom,
    Field,
    Integer,
    Invalid,
    ListOf,
    MapOf,
    Number,
    Reference,
    Section,
    String,
    unknown_key,
)
from .wire import catalog
from .wire.credentials import AZURE_AD, KEY_POOL, credentials_from

if TYPE_CHECKING:
    from .pipeline import Gateway
    from .plugins import PluginManager

log = logging.getLogger("clasp.config")

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """clasp.yaml is invalid. ``problems`` lists every problem as ``file: key.path: what``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {source}: {p}" for p in problems)
        super().__init__(f"invalid configuration ({len(problems)} problem(s)):\n{lines}")


@dataclass(slots=True)
class ApiKey:
    """A gateway key that clients present (``x-api-key`` or ``Authorization: Bearer``),
    with what it may do (``role``, ``policy``) and how its requests are labelled."""

    secret: Secret
    name: str
    team: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    role: str = "member"
    project: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    policy: KeyPolicy = field(default_factory=KeyPolicy)


@dataclass(slots=True)
class ModelRoute:
    """A public model name (or glob such as ``claude-*sonnet*``) and its deployments."""

    pattern: str
    deployments: list[Deployment]
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ServerTimeouts:
    """Client-side timeouts in seconds (``server.timeouts``): each bounds how long one
    client may hold a connection without making progress."""

    header: float = 10.0
    """From the connection's first byte to the end of the request headers."""
    body: float = 60.0
    """Longest gap while the request body is arriving."""
    keep_alive: float = 75.0
    """Idle time between requests on a kept-alive connection (above a load balancer's 60 s)."""
    send: float = 60.0
    """Longest a client may leave the response unread (a slow or stalled reader)."""


@dataclass(slots=True)
class TlsConfig:
    """``server.tls``: serve https (and optionally require client certificates)."""

    certfile: str | None = None
    """PEM certificate chain; with ``keyfile``, the gateway serves https only."""
    keyfile: str | None = None
    keyfile_password: str | None = None
    """A secret reference (``${ENV}``, ``file:``) when the key file is encrypted."""
    ca_certs: str | None = None
    """PEM bundle of the CAs whose client certificates are accepted (mutual TLS)."""
    client_cert: str = "none"
    """``none``, ``optional`` (verified when sent) or ``required`` (needs ``ca_certs``)."""

    @property
    def enabled(self) -> bool:
        return self.certfile is not None


@dataclass(slots=True)
class CorsConfig:
    """``server.cors``: which browser origins may call the gateway (off unless listed)."""

    allow_origins: list[str] = field(default_factory=list)
    allow_origin_regex: str | None = None
    allow_methods: list[str] = field(default_factory=lambda: ["GET", "POST"])
    allow_headers: list[str] = field(default_factory=lambda: [
        "authorization", "x-api-key", "content-type", "anthropic-version", "anthropic-beta"])
    expose_headers: list[str] = field(default_factory=lambda: ["request-id", "retry-after"])
    allow_credentials: bool = False
    """Cookies and client certificates on cross-origin calls; never with a ``*`` origin."""
    max_age: int = 600

    @property
    def enabled(self) -> bool:
        return bool(self.allow_origins or self.allow_origin_regex)


@dataclass(slots=True)
class ServerConfig:
    """``server:``. Every size, time and concurrency limit has a finite default."""

    host: str = "127.0.0.1"
    port: int = 4000
    max_request_bytes: int = 32 * 1024 * 1024
    log_level: str = "info"
    log_format: str = "text"
    """``text`` (for a person) or ``json`` (one object per line: :mod:`clasp_gateway.logs`)."""
    workers: int = 1
    allow_unauthenticated: bool = False
    """Serve without ``keys:`` on a non-loopback address (refused unless set)."""
    trusted_proxies: list[str] = field(default_factory=list)
    """Peers (IPs or CIDRs) whose ``X-Forwarded-For`` names the client address."""
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_connections: int = 1000
    """Open client connections per worker; more are refused (and logged)."""
    max_concurrent_requests: int = 512
    """Requests in progress per worker; more get a 529 (and a log line)."""
    max_messages: int = 10_000
    """Messages per request (bounds the work one request can cause)."""
    max_upstream_response_bytes: int = 64 * 1024 * 1024
    """Largest non-streamed upstream answer read into memory."""
    max_line_bytes: int = 8 * 1024 * 1024
    """Longest SSE or NDJSON line from an upstream."""
    auth_failures_per_minute: int = 30
    """Failed key attempts per client address per minute before it is slowed down (429)."""
    drain_seconds: float = 30.0
    """On SIGTERM: how long in-flight requests (streams) may run on before they are cut
    and the process exits (``shell/reload.py``); Kubernetes' default grace period is 30 s,
    so set ``terminationGracePeriodSeconds`` a few seconds above this."""
    timeouts: ServerTimeouts = field(default_factory=ServerTimeouts)
    tls: TlsConfig = field(default_factory=TlsConfig)
    cors: CorsConfig = field(default_factory=CorsConfig)
    behind_https: bool = False
    """Clients reach the gateway over https through a TLS-terminating proxy: cookies
    are marked ``Secure`` even though the gateway itself speaks plain http."""


@dataclass(slots=True)
class ClassesConfig:
    """``classes:``: the thresholds of the built-in request classes (``classes.py``)."""

    background_max_tokens: int = BACKGROUND_MAX_TOKENS
    """A request offering no tools with ``max_tokens`` at or under this is a
    ``background`` call (a ``max_tokens: 1`` quota probe, short helper calls); 0: never
    by size alone (structured answers without tools still are, see ``classes.py``)."""
    long_context_tokens: int = LONG_CONTEXT_TOKENS
    """An estimated input of at least this many tokens is ``long_context``."""


@dataclass(slots=True)
class Config:
    """The validated configuration. ``raw`` keeps every section for plugins."""

    source: str
    server: ServerConfig
    keys: list[ApiKey]
    models: list[ModelRoute]
    plugin_paths: list[str]
    raw: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    key_problems: list[str] = field(default_factory=list)
    """Hints for gateway keys whose reference did not resolve (``set CLASP_API_KEY``)."""
    classes: ClassesConfig = field(default_factory=ClassesConfig)
    """``classes:``, the request classifier's thresholds."""

    def section(self, name: str) -> dict[str, Any]:
        """A plugin's section of clasp.yaml (``{}`` when absent)."""
        value = self.raw.get(name)
        return value if isinstance(value, dict) else {}

    def deployments(self) -> list[Deployment]:
        """Every deployment once, in file order."""
        seen: dict[str, Deployment] = {}
        for route in self.models:
            for dep in route.deployments:
                seen.setdefault(dep.id, dep)
        return list(seen.values())


# --- secrets ---------------------------------------------------------------------------------


def resolve_secret(ref: Any, *, default_env: str | None = None) -> Secret:
    """Resolve a credential reference without ever logging its value."""
    secret = _resolve_secret(ref, default_env)
    register_secret(secret.value)
    return secret


def _resolve_secret(ref: Any, default_env: str | None) -> Secret:
    if ref is None:
        if default_env:
            value = os.environ.get(default_env) or None
            return Secret(f"${{{default_env}}}", value, f"set {default_env}")
        return Secret("", None, "no credential configured")
    text = str(ref)
    reference = is_backend_reference(text)
    if reference is not None and (reference[0] in KNOWN_MANAGERS or reference[0] in _backends.registrations):
        value, hint = _backends.resolve(*reference)
        return Secret(text, value, hint)
    return _resolve_builtin(text)


def _resolve_builtin(text: str) -> Secret:
    """``${VAR}``, ``file:/path``, or a literal (the built-in backends, env and file)."""
    if text.startswith("file:"):
        path = Path(text[5:])
        try:
            return Secret(text, path.read_text().strip() or None, f"put the key in {path}")
        except OSError:
            return Secret(text, None, f"create {path} with the key")
    match = _ENV_REF.fullmatch(text)
    if match:
        var, default = match.group(1), match.group(2)
        value = os.environ.get(var) or default or None
        return Secret(text, value, f"set {var}")
    return Secret(text, text or None, "")


_backends = SecretBackends()
"""The secret backends of the configuration being loaded (:func:`parse_config` sets
them from ``secrets:``); plugins resolving their own references later use them too."""


def _builtin_secret(ref: Any) -> Secret:
    secret = _resolve_builtin(str(ref))
    register_secret(secret.value)
    return secret


def expand_env(value: str) -> tuple[str, list[str]]:
    """Expand ``${VAR}`` / ``${VAR:-default}`` inside a non-secret string.

    Returns the expanded text and the names of variables that were unset.
    """
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        var, default = m.group(1), m.group(2)
        got = os.environ.get(var)
        if got:
            return got
        if default is not None:
            return default
        missing.append(var)
        return ""

    return _ENV_REF.sub(sub, value), missing


# --- the core's schema -----------------------------------------------------------------------

CORE_SECTIONS = ("server", "plugins", "keys", "models", "classes", "context", "server_tools", "state", "permissions",
                 "storage", "long_answers", "secrets", "logging", "retention")
"""Top-level sections the core reads: ``server``, ``plugins``, ``keys``, ``models``,
``classes``, ``secrets`` (the options of secret backends, :mod:`.secrets`), ``logging``
(content logging, :mod:`.content_log`) and ``retention`` (:mod:`.retention`) here;
``context`` in :mod:`.context`, ``server_tools`` in :mod:`.server_tools`,
``state`` in :mod:`.state`, ``permissions`` in :mod:`.permissions`, ``storage`` in
:mod:`.storage` and ``long_answers`` in :mod:`.shaping.long_answers`, when the gateway is built. Any other top-level key must be declared by a loaded plugin
(``register_config_sections``), see :func:`section_problems`."""


def _ip_or_network(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid()
    try:
        ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise Invalid() from None
    return value.strip()


SERVER = Section({
    "host": String(non_empty=True),
    "port": Integer(1, 65535),
    "max_request_bytes": Integer(1024),
    "log_level": Choice("debug", "info", "warning", "error", fold_case=True),
    "log_format": Choice("text", "json", expected="text or json (one JSON object per line)"),
    "workers": Integer(1),
    "allow_unauthenticated": Boolean(),
    "trusted_proxies": ListOf(Custom(_ip_or_network, "an IP address or network such as 10.0.0.0/8")),
    "max_header_bytes": Integer(1024),
    "max_headers": Integer(8),
    "max_connections": Integer(1),
    "max_concurrent_requests": Integer(1),
    "max_messages": Integer(1),
    "max_upstream_response_bytes": Integer(1024),
    "max_line_bytes": Integer(1024),
    "auth_failures_per_minute": Integer(1),
    "drain_seconds": Number(above=0, maximum=3600),
    "timeouts": Section({name: Number(above=0) for name in ("header", "body", "keep_alive", "send")},
                        into=ServerTimeouts),
    "tls": Section({
        "certfile": String(non_empty=True), "keyfile": String(non_empty=True), "keyfile_password": Reference(),
        "ca_certs": String(non_empty=True), "client_cert": Choice("none", "optional", "required"),
    }, into=TlsConfig),
    "cors": Section({
        "allow_origins": ListOf(String(non_empty=True), single=True),
        "allow_origin_regex": String(non_empty=True),
        "allow_methods": ListOf(String(non_empty=True), single=True),
        "allow_headers": ListOf(String(non_empty=True), single=True),
        "expose_headers": ListOf(String(non_empty=True), single=True),
        "allow_credentials": Boolean(),
        "max_age": Integer(0, 86400),
    }, into=CorsConfig),
    "behind_https": Boolean(),
}, into=ServerConfig)
"""``server:`` (defaults: :class:`ServerConfig`)."""

PLUGINS = Section({
    "paths": Field(ListOf(String(non_empty=True), expected="a list of module names or .py file paths"), factory=list),
})

CLASSES = Section({
    "background_max_tokens": Integer(0, 1_000_000, example=512),
    "long_context_tokens": Integer(1, 100_000_000, example=100000),
}, into=ClassesConfig)
"""``classes:`` (defaults: :class:`ClassesConfig`)."""

def _glob(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 256 or not value.isprintable() \
            or value.count("[") != value.count("]"):
        raise Invalid()
    return value


def _expiry(value: Any) -> float:
    from .policy import parse_expiry

    try:
        return parse_expiry(value)
    except ValueError:
        raise Invalid() from None


def _tag_map(value: Any) -> dict[str, str]:
    from .policy import check_tag_map

    try:
        return check_tag_map(value)
    except ValueError as exc:
        raise Invalid(f"expected {exc}") from None


KEY_ROLES = ("admin", "team_admin", "member")
BUDGET_PERIODS = ("daily", "weekly", "monthly", "total")

KEY = Section({
    "key": Field(Reference(), required="e.g. `${CLASP_API_KEY}`"),
    "name": String(non_empty=True),
    "team": String(non_empty=True),
    "metadata": Field(MapOf(Anything()), factory=dict),
    "role": Field(Choice(*KEY_ROLES), "member"),
    "project": String(non_empty=True, pattern=r"[ -~]{1,128}", expected="a project name (printable, 128 at most)"),
    "tags": Field(Custom(_tag_map, "a mapping of tag name to value"), factory=dict),
    "models": ListOf(Custom(_glob, "a model name or glob such as claude-*haiku*"), non_empty=True, single=True),
    "rpm": Integer(1, example=60),
    "tpm": Integer(1, example=100000),
    "rpd": Integer(1, example=1000),
    "tpd": Integer(1, example=1000000),
    "max_concurrency": Integer(1, example=4),
    "max_budget_usd": Number(above=0),
    "budget_period": Choice(*BUDGET_PERIODS),
    "expires": Custom(_expiry, "an ISO date or date-time such as 2027-01-31 or 2027-01-31T18:00:00Z"),
    "regions": ListOf(String(non_empty=True), non_empty=True, single=True),
})
"""One entry of ``keys:``: the key, who it belongs to, and what it may do (its
:class:`~clasp_gateway.types.KeyPolicy`: the core enforces ``models`` and ``expires``,
the plugin owning limits and budgets the rest)."""


def _policy(v: dict[str, Any], path: str, problems: list[str]) -> KeyPolicy:
    period = v.get("budget_period")
    if period is not None and v.get("max_budget_usd") is None:
        problems.append(f"{path}.budget_period: needs max_budget_usd (the spend allowed per {period} period)")
    if v.get("max_budget_usd") is not None and period is None:
        period = "total"  # a budget without a period never resets
    return KeyPolicy(
        models=tuple(v.get("models") or ()), rpm=v.get("rpm"), tpm=v.get("tpm"), rpd=v.get("rpd"), tpd=v.get("tpd"),
        max_concurrency=v.get("max_concurrency"), max_budget_usd=v.get("max_budget_usd"), budget_period=period,
        expires_at=v.get("expires"), regions=tuple(v.get("regions") or ()),
    )

ROUTE = Section({
    "deployments": Anything("a list of deployments"),
    "context": Anything("a mapping"),            # checked by context.py when the gateway is built
    "context_fallback": Anything("a list"),      # idem
    # A pool: deployment ids (or provider/model names) of other routes, or deployment
    # entries; a routing plugin picks among them per request (``router:`` names its
    # strategy, checked by that plugin).
    "pool": Anything("a list of deployment ids, provider/model names or deployment entries"),
    "router": String(non_empty=True, expected="a routing strategy name"),
})
"""A route written as a mapping (``deployments:`` or ``pool:``, plus per-route settings)."""

_INFO_OVERRIDES = (
    "max_input_tokens", "max_output_tokens", "supports_tools", "supports_parallel_tool_calls",
    "supports_reasoning", "supports_vision", "input_cost_per_token", "output_cost_per_token",
    "cache_read_input_token_cost", "cache_creation_input_token_cost",
)
_PROVIDER_KEYS = {
    # Where a deployment runs (residency and routing read it; Bedrock signs for it).
    "region": String(non_empty=True),
    # AWS (Bedrock): LiteLLM's names, so a LiteLLM deployment list carries over.
    "aws_region_name": String(non_empty=True),
    "aws_profile": String(non_empty=True),
    "aws_profile_name": String(non_empty=True),
    "aws_access_key_id": Reference(),
    "aws_secret_access_key": Reference(),
    "aws_session_token": Reference(),
    # Google Vertex AI.
    "vertex_project": String(non_empty=True),
    "vertex_location": String(non_empty=True),
    "vertex_credentials": Reference(),
}
"""Provider-specific deployment keys, read by the provider that needs them (kept raw
in ``Deployment.settings``: secrets stay references until the provider resolves them)."""

DEPLOYMENT_LIMITS = Section({
    "rpm": Integer(1, example=500),
    "tpm": Integer(1, example=200000),
    "rpd": Integer(1, example=10000),
    "max_concurrency": Integer(1, example=8),
})
"""A deployment's own ``limits:`` (for providers that send no rate-limit headers):
requests and tokens per minute, requests per day, requests in flight. Enforced across
replicas by clasp-fallback (``deployment_limits.py``), which routes to the next
candidate before the provider would answer 429."""

_SETTINGS_KEYS = ("text_tool_calls", "schema_dialect", "limits", "retry", "trusted", *_PROVIDER_KEYS)
"""Deployment keys kept in ``Deployment.settings`` for the modules that read them."""

PRICES = Section({
    "input": Number(0),
    "output": Number(0),
    "cache_read": Number(0),
    "cache_write": Number(0),
    "per": Field(Choice("token", "million", expected="token or million (the unit the prices are for)"), "million"),
})
"""A deployment's ``prices:`` (USD, per million tokens unless ``per: token``): input,
output, cache-read and cache-write rates replacing LiteLLM's price map for it. Each
may instead be given as LiteLLM's per-token key (``input_cost_per_token``...), not both."""

_PRICE_KEYS = (
    ("input", "input_cost_per_token"), ("output", "output_cost_per_token"),
    ("cache_read", "cache_read_input_token_cost"), ("cache_write", "cache_creation_input_token_cost"),
)

DEPLOYMENT = Section({
    "model": Field(String(non_empty=True), required="e.g. `openai/gpt-4o` or `ollama/qwen2.5-coder`"),
    "id": String(non_empty=True),
    "provider": String(non_empty=True),
    "base_model": String(non_empty=True),
    "api_base": String(non_empty=True, expected="an http:// or https:// URL"),
    "api_key": Reference(),
    "api_keys": ListOf(Reference(), non_empty=True, expected="a non-empty list of key references"),
    "api_version": String(non_empty=True),
    "headers": MapOf(String(), expected="a mapping of header name to value"),
    "secret_headers": MapOf(Reference(), expected="a mapping of header name to secret reference"),
    "key_pool": KEY_POOL,
    "azure_ad": Field(AZURE_AD, None),
    "mode": Field(Choice("auto", "direct", "transform", "litellm"), "auto"),
    "streaming": Field(Choice("auto", "always", "never", expected=(
        "auto, always (a stream-only provider) or never (one that cannot stream)")), "auto"),
    "timeouts": Section({name: Number(above=0) for name in ("connect", "first_byte", "idle", "total")},
                        into=Timeouts),
    "extra_body": Field(MapOf(Anything()), factory=dict),
    "max_input_tokens": Integer(1, example=131072),
    "max_output_tokens": Integer(1, example=8192),
    "supports_tools": Boolean(),
    "supports_parallel_tool_calls": Boolean(),
    "supports_reasoning": Boolean(),
    "supports_vision": Boolean(),
    "input_cost_per_token": Number(0),
    "output_cost_per_token": Number(0),
    "cache_read_input_token_cost": Number(0),
    "cache_creation_input_token_cost": Number(0),
    "prices": PRICES,
    "text_tool_calls": Anything("true, false or auto"),  # checked by textcalls.py when the gateway is built
    "schema_dialect": Choice("none", "openai", "gemini", "strict"),
    # The organisation runs it (or has a contract for what it is sent): plugins that
    # keep data from third parties (clasp-credential-guard) treat it as its own.
    "trusted": Boolean(),
    "limits": Field(DEPLOYMENT_LIMITS, None),
    # This deployment's overrides of fallback.retry (attempts, backoff, on...): the
    # fallback plugin's schema checks it (validate_config), as it owns the policy.
    "retry": Anything("a mapping of fallback.retry settings (attempts, base_delay, max_delay, on...)"),
    **_PROVIDER_KEYS,
})
"""One deployment of a route. Everything LiteLLM's catalogue says about a model
(``max_input_tokens``, prices, ``supports_*``) can be overridden here."""


# --- deployments and routes ------------------------------------------------------------------


def _deployment(raw: Any, path: str, problems: list[str]) -> Deployment | None:
    if not isinstance(raw, dict):
        problems.append(f"{path}: expected a deployment (a mapping with at least `model: provider/model-name`), "
                        f"got {type(raw).__name__}")
        return None
    v = DEPLOYMENT.parse(raw, path, problems)
    model_ref: str | None = v["model"]
    if not model_ref:
        return None
    provider: str | None = v["provider"]
    if provider is None:
        if "/" not in model_ref:
            problems.append(f"{path}.model: {model_ref!r} has no provider prefix; write e.g. `openai/{model_ref}`")
            return None
        provider, model_name = model_ref.split("/", 1)
    else:
        model_name = model_ref.split("/", 1)[1] if model_ref.startswith(provider + "/") else model_ref
    profile = catalog.provider_profile(provider)
    unusable: list[str] = []  # what a person must set before this deployment can serve

    api_base = ""
    if v["api_base"]:
        api_base, missing = expand_env(v["api_base"])
        unusable += [f"set {m} (used by api_base)" for m in missing]
        if api_base and not re.match(r"https?://[^/\s]", api_base):
            problems.append(f"{path}.api_base: expected an http:// or https:// URL, got {api_base!r}")
    elif profile.default_base_env and os.environ.get(profile.default_base_env):
        api_base = os.environ[profile.default_base_env]
    elif profile.default_api_base:
        api_base = profile.default_api_base
    elif profile.needs_api_base:
        hint = f"set {profile.default_base_env}" if profile.default_base_env else "add api_base"
        unusable.append(f"{hint} (the {provider} endpoint URL)")

    creds = credentials_from(v, path, resolve_secret, expand_env)
    unusable += creds.problems
    keys: list[Secret] = []
    if creds.azure_ad is not None:
        # Azure AD tokens replace API keys (and the AZURE_API_KEY default).
        if "api_keys" in raw or "api_key" in raw:
            problems.append(f"{path}.azure_ad: use either api_key/api_keys or azure_ad, not both")
    elif v["api_keys"]:
        keys = [resolve_secret(k) for k in v["api_keys"]]
    elif "api_key" in raw:
        keys = [resolve_secret(v["api_key"])]
    elif profile.default_key_env:
        keys = [resolve_secret(None, default_env=profile.default_key_env)]
    if keys and not any(k.value for k in keys):
        unusable.append(" or ".join(sorted({k.hint for k in keys if k.hint})) or "set an API key")

    headers: dict[str, str] = {}
    for name, value in (v["headers"] or {}).items():
        text, missing = expand_env(value)
        unusable += [f"set {m} (used by header {name})" for m in missing]
        headers[str(name).lower()] = text

    info = catalog.model_info(provider, v["base_model"] or model_name)
    overrides = {k: v[k] for k in _INFO_OVERRIDES if v[k] is not None}
    prices = v["prices"] or {}
    scale = 1e-6 if prices.get("per", "million") == "million" else 1.0
    for short, per_token in _PRICE_KEYS:
        if prices.get(short) is None:
            continue
        if v[per_token] is not None:
            problems.append(f"{path}.prices.{short}: {per_token} gives this price too; give it once")
        overrides[per_token] = prices[short] * scale
    if overrides:
        info = dataclasses.replace(info, **overrides)

    settings: dict[str, Any] = {k: v[k] for k in _SETTINGS_KEYS if v[k] is not None}
    settings["streaming"] = v["streaming"]
    settings["credentials"] = creds
    if unusable:
        settings["_problems"] = unusable
    return Deployment(
        id=v["id"] or f"{provider}/{model_name}",
        provider=provider,
        model=model_name,
        api_base=api_base.rstrip("/"),
        keys=keys,
        api_version=v["api_version"] or profile.default_api_version,
        headers=headers,
        mode=profile.mode if v["mode"] == "auto" else v["mode"],
        info=info,
        timeouts=v["timeouts"],
        extra_body=v["extra_body"],
        settings=settings,
    )


def _glob_tokens(pattern: str) -> list[str]:
    """A glob as tokens: ``*``, ``?``, ``[...]`` classes and single characters."""
    tokens: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("!", "]") else i + 1)
            if end != -1:
                tokens.append(pattern[i:end + 1])
                i = end + 1
                continue
        tokens.append(pattern[i])
        i += 1
    return tokens


def glob_covers(wide: str, narrow: str) -> bool:
    """Whether every name ``narrow`` matches is matched by ``wide`` too (``claude-*``
    covers ``claude-*sonnet*``). Sound, not complete: a ``False`` may be a miss for
    exotic classes, a ``True`` is always right, so a warning is never wrong."""
    a, b = _glob_tokens(wide), _glob_tokens(narrow)

    @functools.cache
    def covers(i: int, j: int) -> bool:
        if i == len(a):
            return j == len(b)
        if a[i] == "*":
            return covers(i + 1, j) or (j < len(b) and covers(i, j + 1))
        if j == len(b) or b[j] == "*":
            return False
        x, y = a[i], b[j]
        if x == "?":
            ok = True
        elif len(x) > 1:  # a class: covers a literal it matches, or the same class
            ok = x == y or (len(y) == 1 and y not in "?" and fnmatch.fnmatchcase(y, x))
        else:
            ok = x == y and y != "?"
        return ok and covers(i + 1, j + 1)

    return covers(0, 0)


def _shadowed_routes(routes: list[ModelRoute]) -> list[str]:
    """Warnings for glob routes no name can reach: exact names are looked up first,
    then globs in file order, so a glob is dead when an earlier glob covers it."""
    warnings: list[str] = []
    globs = [r.pattern for r in routes if any(ch in r.pattern for ch in "*?[")]
    for n, narrow in enumerate(globs):
        wide = next((w for w in globs[:n] if glob_covers(w, narrow)), None)
        if wide is not None:
            warnings.append(
                f"models.{narrow}: never used: the earlier route {wide!r} matches every name {narrow!r} matches "
                f"(routes are tried in file order; move {narrow!r} above {wide!r})"
            )
    return warnings


# --- gateway keys ------------------------------------------------------------------------------

MIN_KEY_LENGTH = 20
_PLACEHOLDERS = ("changeme", "changeit", "replaceme", "yourkey", "yourapikey", "yoursecret", "keyhere", "insertkey",
                 "placeholder", "password", "choosealongrandomkey")


def weak_key_reason(value: str) -> str | None:
    """Why a gateway key is easy to guess, or ``None``: shorter than
    :data:`MIN_KEY_LENGTH`, mostly one character (``xxxxxxxx``), or a well-known
    placeholder (``change-me...``, the README's ``choose-a-long-random-key``)."""
    if len(value) < MIN_KEY_LENGTH:
        return f"shorter than {MIN_KEY_LENGTH} characters"
    letters = re.sub(r"[^a-z0-9]", "", value.lower())
    if len(set(letters)) <= 3 or re.search(r"(.)\1{7}", letters):
        return "a repeated character"
    word = next((w for w in _PLACEHOLDERS if w in letters), None)
    if word is not None:
        return f"a placeholder ({word!r})"
    return None


def _keys(raw_keys: Any, problems: list[str], warnings: list[str]) -> tuple[list[ApiKey], list[str]]:
    keys: list[ApiKey] = []
    key_problems: list[str] = []
    if raw_keys is None:
        return keys, key_problems
    if not isinstance(raw_keys, list):
        problems.append(f"keys: expected a list of {{key, name, team}}, got {type(raw_keys).__name__}")
        return keys, key_problems
    now = time.time()
    for i, entry in enumerate(raw_keys):
        v = KEY.parse(entry, f"keys.{i}", problems)
        policy = _policy(v, f"keys.{i}", problems)
        if v["key"] is None:
            continue
        name = v["name"] or f"key-{i}"
        if policy.expires_at is not None and policy.expires_at <= now:
            warnings.append(f"keys.{i} ({name}) expired on {entry.get('expires')}: it is refused (401)")
        secret = resolve_secret(v["key"])
        if not secret.value:
            key_problems.append(secret.hint)
            warnings.append(f"keys.{i} ({v['name'] or 'unnamed'}) is disabled: {secret.hint}")
            continue
        weak = weak_key_reason(secret.value)
        if weak:  # name the key, never show it
            warnings.append(f"keys.{i} ({name}): weak key ({weak}): anyone who guesses it can spend your provider "
                            "budget; use a long random value, e.g. `openssl rand -hex 32`")
        keys.append(ApiKey(secret=secret, name=name, team=v["team"], metadata=v["metadata"], role=v["role"],
                           project=v["project"], tags=v["tags"], policy=policy))
    if raw_keys and not keys:
        warnings.append("no gateway key resolved: every request will be refused (401) until you "
                        + " or ".join(key_problems))
    return keys, key_problems


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost``: addresses only this machine can reach."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def open_gateway(config: Config, host: str, *, other_auth: bool = False) -> tuple[bool, str] | None:
    """``(refuse, message)`` when clients need no key to use the gateway, else ``None``.

    Open means no ``keys:`` (absent, empty, or misspelt: then the file is refused
    anyway) and no plugin implementing ``authenticate`` (``other_auth``). Refused on
    an address other machines can reach, unless ``server.allow_unauthenticated: true``
    says it is on purpose; on loopback it is served with a warning.
    """
    if config.raw.get("keys") or other_auth:
        return None
    if is_loopback(host):
        return False, (f"the gateway on {host} is OPEN: no `keys:` are configured, so any program on this machine "
                       "can use it (and its provider keys) without a key; add `keys:` to require one")
    if config.server.allow_unauthenticated:
        return False, (f"the gateway on {host} is OPEN to the network without authentication "
                       "(server.allow_unauthenticated: true)")
    return True, (f"refusing to serve {host} without authentication: no `keys:` are configured, so anyone who can "
                  "reach this address could use the gateway and spend its provider keys. Add `keys:` (see README.md), "
                  "or set `server.allow_unauthenticated: true` to serve it open on purpose")


def tls_cors_problems(server: ServerConfig) -> list[str]:
    """What ``server.tls`` and ``server.cors`` cannot mean: a certificate without its
    key, client certificates without a CA to check them, and a ``*`` origin with
    credentials (any site could act as the signed-in user). Whether the files exist on
    this machine is :func:`tls_file_problems` (``clasp check`` and ``clasp serve``)."""
    problems: list[str] = []
    tls = server.tls
    if (tls.certfile is None) != (tls.keyfile is None):
        problems.append("server.tls: certfile and keyfile go together (the certificate and its private key)")
    if tls.client_cert != "none" and tls.ca_certs is None:
        problems.append(f"server.tls.client_cert: {tls.client_cert} needs server.tls.ca_certs (the CAs to trust)")
    if tls.client_cert != "none" and not tls.enabled:
        problems.append("server.tls.client_cert: needs certfile and keyfile (client certificates are a TLS feature)")
    cors = server.cors
    if "*" in cors.allow_origins and cors.allow_credentials:
        problems.append("server.cors: allow_origins ['*'] with allow_credentials: true would let any web site call "
                        "the gateway as the signed-in user; list the origins instead")
    for i, origin in enumerate(cors.allow_origins):
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            problems.append(f"server.cors.allow_origins.{i}: expected an origin such as https://app.example.com "
                            f"(scheme and host, no path), got {origin!r}")
    if cors.allow_origin_regex is not None:
        try:
            re.compile(cors.allow_origin_regex)
        except re.error as exc:
            problems.append(f"server.cors.allow_origin_regex: not a regular expression ({exc})")
    return problems


def tls_file_problems(server: ServerConfig) -> list[str]:
    """The ``server.tls`` files this process cannot read (checked where the gateway
    will run, by ``clasp check`` and before ``clasp serve`` binds)."""
    tls = server.tls
    return [f"server.tls.{name}: cannot read {getattr(tls, name)}" for name in ("certfile", "keyfile", "ca_certs")
            if getattr(tls, name) is not None and not os.access(getattr(tls, name), os.R_OK)]


# --- the whole file ----------------------------------------------------------------------------


def parse_config(data: Any, source: str = "clasp.yaml", *,
                 secret_backends: Mapping[str, SecretBackendRegistration] | None = None) -> Config:
    """Validate a loaded YAML document; raise :class:`ConfigError` listing every problem.

    Checks the core's sections (``server``, ``plugins``, ``keys``, ``models``). The
    sections read elsewhere are checked when the gateway is built (:func:`section_problems`,
    ``context``, ``server_tools``, plugins' ``validate_config``): ``clasp check`` and
    ``clasp serve`` both build it before serving, see ``app.build_gateway``.

    References are resolved with the built-in backends and those of
    ``secret_backends`` (default: the installed plugins', see :mod:`.secrets`).
    """
    global _backends
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"top level: expected a mapping of sections (models:, keys:...), "
                                   f"got {type(data).__name__}"])
    problems: list[str] = []
    warnings: list[str] = []
    raw_secrets = data.get("secrets")
    if raw_secrets is not None and not isinstance(raw_secrets, dict):
        problems.append(f"secrets: expected a mapping of backend name -> its settings, got {type(raw_secrets).__name__}")
        raw_secrets = None
    _backends = SecretBackends(raw_secrets, secret_backends)  # before any reference below is resolved
    if raw_secrets:
        _backends.check(_builtin_secret, problems)
    server = SERVER.parse(data.get("server"), "server", problems)
    if isinstance(server, ServerConfig):
        problems += tls_cors_problems(server)
    LOGGING.parse(data.get("logging"), "logging", problems)
    RETENTION.parse(data.get("retention"), "retention", problems)
    paths = PLUGINS.parse(data.get("plugins"), "plugins", problems)["paths"]
    classes = CLASSES.parse(data.get("classes"), "classes", problems)
    keys, key_problems = _keys(data.get("keys"), problems, warnings)

    models: list[ModelRoute] = []
    pending_pools: list[tuple[ModelRoute, list[tuple[int, str]], str]] = []
    by_id: dict[str, tuple[Any, Deployment]] = {}
    raw_models = data.get("models")
    if raw_models is not None and not isinstance(raw_models, dict):
        problems.append(f"models: expected a mapping of public model name -> deployments, got {type(raw_models).__name__}")
        raw_models = {}
    for pattern, deps in (raw_models or {}).items():
        path = f"models.{pattern}"
        settings: dict[str, Any] = {}
        if isinstance(deps, dict) and "deployments" not in deps and "model" in deps:
            problems.append(f"{path}: expected a list of deployments; this looks like one deployment: "
                            "write it as a list item (`- model: ...`)")
            continue
        pool_refs: list[tuple[int, str]] = []
        if isinstance(deps, dict):
            ROUTE.parse(deps, path, problems)
            settings = {k: deps[k] for k in ("context", "context_fallback", "router") if k in deps}
            if ("deployments" in deps) == ("pool" in deps):
                problems.append(f"{path}: expected either `deployments:` (a list of deployments, each with `model:`) "
                                "or `pool:` (deployment ids or entries)")
                continue
            if "pool" in deps:
                pool = deps["pool"]
                if not isinstance(pool, list) or not pool:
                    problems.append(f"{path}.pool: expected a non-empty list of deployment ids, provider/model names "
                                    "or deployment entries")
                    continue
                settings["pool"] = True
                pool_refs = [(i, str(item)) for i, item in enumerate(pool) if isinstance(item, str)]
                deps = [item for item in pool if not isinstance(item, str)]
                path = f"{path}.pool"
                if not deps:
                    models.append(ModelRoute(str(pattern), [], settings))
                    pending_pools.append((models[-1], pool_refs, path))
                    continue
            else:
                deps = deps.get("deployments")
                path = f"{path}.deployments" if isinstance(deps, list) else path
        if isinstance(deps, dict):
            deps = [deps]
        if not isinstance(deps, list) or not deps:
            problems.append(f"{path}: expected a list of deployments (each with `model: provider/name`)")
            continue
        chain: list[Deployment] = []
        for i, raw_dep in enumerate(deps):
            dep = _deployment(raw_dep, f"models.{pattern}.{i}", problems)
            if dep is None:
                continue
            # The same deployment entry named in several routes is one deployment
            # (shared health and limits); any difference in its settings makes it
            # another deployment, whose id gets a suffix.
            fingerprint = json.dumps(raw_dep, sort_keys=True, default=str)
            n = 1
            base_id = dep.id
            while dep.id in by_id and by_id[dep.id][0] != fingerprint:
                n += 1
                dep.id = f"{base_id}#{n}"
            if dep.id in by_id:
                dep = by_id[dep.id][1]
            else:
                by_id[dep.id] = (fingerprint, dep)
            chain.append(dep)
        models.append(ModelRoute(str(pattern), chain, settings))
        if pool_refs:
            pending_pools.append((models[-1], pool_refs, path))

    # Pools name deployments of other routes: resolved once every route is read.
    by_ref: dict[str, Deployment] = {}
    for _, known in by_id.values():
        by_ref.setdefault(f"{known.provider}/{known.model}", known)
    for route, refs, where in pending_pools:
        for position, ref in refs:
            found = by_id[ref][1] if ref in by_id else by_ref.get(ref)
            if found is None:
                names = ", ".join(sorted(by_id)) or "none configured"
                problems.append(f"{where}.{position}: {ref!r} is not a deployment under models: (known: {names})")
            elif found not in route.deployments:
                route.deployments.insert(min(position, len(route.deployments)), found)

    if problems:
        raise ConfigError(source, problems)
    warnings += _shadowed_routes(models)
    for _, dep in by_id.values():
        for problem in dep.settings.get("_problems", []):
            warnings.append(f"deployment {dep.id} is unusable until you {problem}")
    return Config(
        source=source,
        server=server,
        keys=keys,
        models=models,
        plugin_paths=list(paths),
        raw=data,
        warnings=warnings,
        key_problems=key_problems,
        classes=classes,
    )


# --- what plugins own --------------------------------------------------------------------------


def declared_sections(pm: PluginManager) -> dict[str, str]:
    """Top-level sections declared by loaded plugins (``register_config_sections``):
    section name -> the plugin that declared it. A section two plugins declare, or a
    core section a plugin declares, is a
    :class:`~clasp_gateway.registrations.RegistrationError` naming the plugin(s)."""
    owners: dict[str, str] = {}
    for record in config_sections(pm):
        if record.name in CORE_SECTIONS:
            raise RegistrationError(f"plugin {record.plugin!r}: register_config_sections: {record.name!r} is a "
                                    f"section of the core ({', '.join(CORE_SECTIONS)}); declare your own")
        owners[record.name] = record.plugin
    return owners


def _sections_of_plugins_not_loaded(pm: PluginManager) -> dict[str, str]:
    """Sections declared by installed plugins that ``CLASP_LOAD_PLUGINS`` left out,
    to say "load it" rather than "unknown" (looked up only when a section is unknown)."""
    owners: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group="clasp"):
        if pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin = ep.load()
            function = getattr(plugin, "register_config_sections", None)
            declared = sections_declared_by(function, ep.name) if callable(function) else []
        except Exception:  # a broken plugin cannot own anything; its own load says why
            continue
        for record in declared:
            owners.setdefault(record.name, record.plugin)
    return owners


def section_problems(config: Config, pm: PluginManager) -> list[str]:
    """Every top-level key that neither the core nor a loaded plugin reads.

    An unknown section is never ignored: a typo (``model:``, ``Keys:``) would drop
    what the user meant, and a section whose plugin is not loaded (``fallback:``
    without clasp-fallback) would silently run without the retries, breakers or
    limits it asks for. Both are errors, the second one naming the plugin.
    """
    declared = declared_sections(pm)
    known = [*CORE_SECTIONS, *declared]
    unknown = [key for key in config.raw if key not in known]
    if not unknown:
        return []
    not_loaded = _sections_of_plugins_not_loaded(pm)
    problems: list[str] = []
    for key in unknown:
        owner = not_loaded.get(str(key))
        if owner is not None:
            allowed = os.environ.get("CLASP_LOAD_PLUGINS")
            why = f" (CLASP_LOAD_PLUGINS={allowed!r})" if allowed is not None else ""
            problems.append(f"{key}: this section belongs to the plugin {owner!r}, which is not loaded{why}; "
                            "load the plugin or remove the section")
        else:
            problems.append(f"{key}: {unknown_key(key, known, 'section')}")
    return problems


def plugin_problems(config: Config, pm: PluginManager, gateway: Gateway) -> list[str]:
    """What plugins' ``validate_config`` hooks find, each plugin on its own (one that
    raises is reported, and does not hide the others' findings)."""
    problems: list[str] = []
    offered = {"config": config, "gateway": gateway}
    for impl in pm.hook.validate_config.get_hookimpls():
        found: Any
        try:
            found = impl.function(**{name: offered[name] for name in impl.argnames})
        except ConfigError as exc:
            found = exc.problems
        except Exception as exc:  # a plugin's bug: say whose, without a traceback
            found = [f"the plugin {impl.plugin_name!r} failed to check the configuration: "
                     f"{type(exc).__name__}: {exc}"]
        if isinstance(found, str):
            found = [found]
        problems += [str(p) for p in found or ()]
    return problems


# --- loading -----------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (YAML itself
    keeps the last one silently: a second route of the same name would vanish)."""


def _unique_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first written on line {first})", key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load clasp.yaml from ``path``, ``$CLASP_CONFIG`` or ``./clasp.yaml``."""
    chosen = Path(path or os.environ.get("CLASP_CONFIG") or "clasp.yaml")
    try:
        text = chosen.read_text()
    except FileNotFoundError:
        raise ConfigError(str(chosen), ["file not found (pass --config or set CLASP_CONFIG)"]) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(str(chosen), [f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    return parse_config(data, str(chosen))

"""clasp.yaml: loading, secret references and validation with precise errors.

Secrets are references: ``${ENV_VAR}`` (``${ENV_VAR:-default}`` for non-secrets) or
``file:/run/secrets/name``. A reference that does not resolve does not stop the
gateway: the deployment that needs it is marked unusable, the start-up log says
which variable to set, and requests routed to it get the same message.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import catalog
from .credentials import parse_credentials
from .redact import register_secret
from .types import Deployment, ModelInfo, Secret, Timeouts

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
    """A gateway key that clients present (``x-api-key`` or ``Authorization: Bearer``)."""

    secret: Secret
    name: str
    team: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


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
class ServerConfig:
    """``server:``. Every size, time and concurrency limit has a finite default."""

    host: str = "127.0.0.1"
    port: int = 4000
    max_request_bytes: int = 32 * 1024 * 1024
    log_level: str = "info"
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
    timeouts: ServerTimeouts = field(default_factory=ServerTimeouts)


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


# --- validation helpers ----------------------------------------------------------------------


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, value: Any, path: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping, got {type(value).__name__}")
            return {}
        return value

    def integer(self, value: Any, path: str, default: int, minimum: int = 0) -> int:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(path, f"expected an integer >= {minimum}, got {value!r}")
            return default
        return value

    def number(self, value: Any, path: str) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            self.fail(path, f"expected a non-negative number, got {value!r}")
            return None
        return float(value)

    def string(self, value: Any, path: str, default: str | None = None) -> str | None:
        if value is None:
            return default
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            self.fail(path, f"expected a string, got {type(value).__name__}")
            return default
        return str(value)


_DEPLOYMENT_KEYS = {
    "id", "model", "provider", "api_base", "api_key", "api_keys", "api_version", "headers",
    "mode", "timeouts", "extra_body", "max_input_tokens", "max_output_tokens",
    "supports_tools", "supports_parallel_tool_calls", "supports_reasoning", "supports_vision",
    "input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost",
    "base_model", "streaming", "key_pool", "azure_ad", "secret_headers",
}
_INFO_OVERRIDES = (
    "max_input_tokens", "max_output_tokens", "supports_tools", "supports_parallel_tool_calls",
    "supports_reasoning", "supports_vision", "input_cost_per_token", "output_cost_per_token",
    "cache_read_input_token_cost",
)


def _deployment(chk: _Checker, raw: Any, path: str, pattern: str, index: int) -> Deployment | None:
    item = chk.mapping(raw, path)
    if not item:
        if raw is not None and not isinstance(raw, dict):
            return None
        chk.fail(path, "a deployment needs at least `model: provider/model-name`")
        return None
    model_ref = chk.string(item.get("model"), f"{path}.model")
    if not model_ref:
        chk.fail(f"{path}.model", "required, e.g. `openai/gpt-4o` or `ollama/qwen2.5-coder`")
        return None
    provider = chk.string(item.get("provider"), f"{path}.provider")
    if provider is None:
        if "/" not in model_ref:
            chk.fail(f"{path}.model", f"{model_ref!r} has no provider prefix; write e.g. `openai/{model_ref}`")
            return None
        provider, model_name = model_ref.split("/", 1)
    else:
        model_name = model_ref.split("/", 1)[1] if model_ref.startswith(provider + "/") else model_ref
    profile = catalog.provider_profile(provider)
    problems: list[str] = []

    api_base_raw = chk.string(item.get("api_base"), f"{path}.api_base")
    api_base = ""
    if api_base_raw:
        api_base, missing = expand_env(api_base_raw)
        problems += [f"set {m} (used by api_base)" for m in missing]
    elif profile.default_base_env and os.environ.get(profile.default_base_env):
        api_base = os.environ[profile.default_base_env]
    elif profile.default_api_base:
        api_base = profile.default_api_base
    elif profile.needs_api_base:
        hint = f"set {profile.default_base_env}" if profile.default_base_env else "add api_base"
        problems.append(f"{hint} (the {provider} endpoint URL)")

    creds = parse_credentials(chk, item, path, resolve_secret, expand_env)
    problems += creds.problems
    keys: list[Secret] = []
    if creds.azure_ad is not None:
        # Azure AD tokens replace API keys (and the AZURE_API_KEY default).
        if item.get("api_keys") is not None or "api_key" in item:
            chk.fail(f"{path}.azure_ad", "use either api_key/api_keys or azure_ad, not both")
    elif item.get("api_keys") is not None:
        raw_keys = item["api_keys"]
        if not isinstance(raw_keys, list) or not raw_keys:
            chk.fail(f"{path}.api_keys", "expected a non-empty list of key references")
        else:
            keys = [resolve_secret(k) for k in raw_keys]
    elif "api_key" in item:
        keys = [resolve_secret(item["api_key"])]
    elif profile.default_key_env:
        keys = [resolve_secret(None, default_env=profile.default_key_env)]
    if keys and not any(k.value for k in keys):
        problems.append(" or ".join(sorted({k.hint for k in keys if k.hint})) or "set an API key")

    headers: dict[str, str] = {}
    for name, value in chk.mapping(item.get("headers"), f"{path}.headers").items():
        text, missing = expand_env(str(value))
        problems += [f"set {m} (used by header {name})" for m in missing]
        headers[str(name).lower()] = text

    mode = chk.string(item.get("mode"), f"{path}.mode", "auto")
    if mode not in ("auto", "direct", "transform", "litellm"):
        chk.fail(f"{path}.mode", f"expected auto, direct, transform or litellm, got {mode!r}")
        mode = "auto"
    if mode == "auto":
        mode = profile.mode

    t = chk.mapping(item.get("timeouts"), f"{path}.timeouts")
    base = Timeouts()
    timeouts = Timeouts(
        connect=chk.number(t.get("connect"), f"{path}.timeouts.connect") or base.connect,
        first_byte=chk.number(t.get("first_byte"), f"{path}.timeouts.first_byte") or base.first_byte,
        idle=chk.number(t.get("idle"), f"{path}.timeouts.idle") or base.idle,
        total=chk.number(t.get("total"), f"{path}.timeouts.total") or base.total,
    )

    info = catalog.model_info(provider, str(item.get("base_model") or model_name))
    overrides = {k: item[k] for k in _INFO_OVERRIDES if item.get(k) is not None}
    if overrides:
        info = ModelInfo(**{**{f: getattr(info, f) for f in ModelInfo.__slots__}, **overrides})  # type: ignore[attr-defined]

    settings = {k: v for k, v in item.items() if k not in _DEPLOYMENT_KEYS}
    streaming = chk.string(item.get("streaming"), f"{path}.streaming", "auto")
    if streaming not in ("auto", "always", "never"):
        chk.fail(f"{path}.streaming", f"expected auto, always (stream-only provider) or never (cannot stream), got {streaming!r}")
    settings["streaming"] = streaming
    settings["credentials"] = creds
    if problems:
        settings["_problems"] = problems
    dep_id = chk.string(item.get("id"), f"{path}.id") or f"{provider}/{model_name}"
    return Deployment(
        id=dep_id,
        provider=provider,
        model=model_name,
        api_base=api_base.rstrip("/"),
        keys=keys,
        api_version=chk.string(item.get("api_version"), f"{path}.api_version", profile.default_api_version),
        headers=headers,
        mode=mode,  # type: ignore[arg-type]
        info=info,
        timeouts=timeouts,
        extra_body=chk.mapping(item.get("extra_body"), f"{path}.extra_body"),
        settings=settings,
    )


def parse_config(data: Any, source: str = "clasp.yaml") -> Config:
    """Validate a loaded YAML document; raise :class:`ConfigError` listing every problem."""
    chk = _Checker(source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"top level: expected a mapping, got {type(data).__name__}"])

    s = chk.mapping(data.get("server"), "server")
    server = ServerConfig(
        host=chk.string(s.get("host"), "server.host", "127.0.0.1") or "127.0.0.1",
        port=chk.integer(s.get("port"), "server.port", 4000, 1),
        max_request_bytes=chk.integer(s.get("max_request_bytes"), "server.max_request_bytes", 32 * 1024 * 1024, 1024),
        log_level=(chk.string(s.get("log_level"), "server.log_level", "info") or "info").lower(),
        workers=chk.integer(s.get("workers"), "server.workers", 1, 1),
        allow_unauthenticated=bool(s.get("allow_unauthenticated", False)),
        trusted_proxies=[str(x) for x in (s.get("trusted_proxies") or [])],
        max_header_bytes=chk.integer(s.get("max_header_bytes"), "server.max_header_bytes", 64 * 1024, 1024),
        max_headers=chk.integer(s.get("max_headers"), "server.max_headers", 100, 8),
        max_connections=chk.integer(s.get("max_connections"), "server.max_connections", 1000, 1),
        max_concurrent_requests=chk.integer(
            s.get("max_concurrent_requests"), "server.max_concurrent_requests", 512, 1),
        max_messages=chk.integer(s.get("max_messages"), "server.max_messages", 10_000, 1),
        max_upstream_response_bytes=chk.integer(
            s.get("max_upstream_response_bytes"), "server.max_upstream_response_bytes", 64 * 1024 * 1024, 1024),
        max_line_bytes=chk.integer(s.get("max_line_bytes"), "server.max_line_bytes", 8 * 1024 * 1024, 1024),
        auth_failures_per_minute=chk.integer(
            s.get("auth_failures_per_minute"), "server.auth_failures_per_minute", 30, 1),
        timeouts=ServerTimeouts(**{
            name: chk.number(value, f"server.timeouts.{name}") or getattr(ServerTimeouts(), name)
            for name, value in chk.mapping(s.get("timeouts"), "server.timeouts").items()
            if name in ServerTimeouts.__dataclass_fields__
        }),
    )
    if server.log_level not in ("debug", "info", "warning", "error"):
        chk.fail("server.log_level", f"expected debug, info, warning or error, got {server.log_level!r}")

    p = chk.mapping(data.get("plugins"), "plugins")
    paths = p.get("paths") or []
    if not isinstance(paths, list) or not all(isinstance(x, str) for x in paths):
        chk.fail("plugins.paths", "expected a list of module names or .py file paths")
        paths = []

    keys: list[ApiKey] = []
    raw_keys = data.get("keys") or []
    if not isinstance(raw_keys, list):
        chk.fail("keys", "expected a list of {key, name, team}")
        raw_keys = []
    warnings: list[str] = []
    key_problems: list[str] = []
    for i, entry in enumerate(raw_keys):
        item = chk.mapping(entry, f"keys.{i}")
        if "key" not in item:
            chk.fail(f"keys.{i}.key", "required (e.g. `${CLASP_API_KEY}`)")
            continue
        secret = resolve_secret(item["key"])
        if not secret.value:
            key_problems.append(secret.hint)
            warnings.append(f"keys.{i} ({item.get('name') or 'unnamed'}) is disabled: {secret.hint}")
            continue
        keys.append(
            ApiKey(
                secret=secret,
                name=chk.string(item.get("name"), f"keys.{i}.name", f"key-{i}") or f"key-{i}",
                team=chk.string(item.get("team"), f"keys.{i}.team"),
                metadata=chk.mapping(item.get("metadata"), f"keys.{i}.metadata"),
            )
        )
    if raw_keys and not keys:
        warnings.append("no gateway key resolved: every request will be refused (401) until you "
                        + " or ".join(key_problems))

    models: list[ModelRoute] = []
    by_id: dict[str, tuple[Any, Deployment]] = {}
    m = chk.mapping(data.get("models"), "models")
    for pattern, deps in m.items():
        path = f"models.{pattern}"
        settings: dict[str, Any] = {}
        if isinstance(deps, dict):
            settings = {k: v for k, v in deps.items() if k != "deployments"}
            deps = deps.get("deployments")
        if isinstance(deps, dict):
            deps = [deps]
        if not isinstance(deps, list) or not deps:
            chk.fail(path, "expected a list of deployments (each with `model: provider/name`)")
            continue
        chain: list[Deployment] = []
        for i, raw_dep in enumerate(deps):
            dep = _deployment(chk, raw_dep, f"{path}.{i}", str(pattern), i)
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

    if chk.problems:
        raise ConfigError(source, chk.problems)
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
    )


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load clasp.yaml from ``path``, ``$CLASP_CONFIG`` or ``./clasp.yaml``."""
    chosen = Path(path or os.environ.get("CLASP_CONFIG") or "clasp.yaml")
    try:
        text = chosen.read_text()
    except FileNotFoundError:
        raise ConfigError(str(chosen), ["file not found (pass --config or set CLASP_CONFIG)"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(str(chosen), [f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    return parse_config(data, str(chosen))

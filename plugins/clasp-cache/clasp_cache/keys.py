"""The exact key and the semantic scope of a request: canonical hashes.

Two requests share an exact key only when they would get the same answer from the same
route for the same tenant. What does not change the answer is left out: key order
(serialised sorted), ``cache_control`` breakpoints (anywhere), ``stream`` and
``stream_options``, ``metadata`` (``user_id``) and ``user``, betas and other headers.
Everything else is in: the namespace (a hash of the configuration, so a changed route
never serves entries an older configuration produced), the tenant (``team:<name>`` or
``key:<id>``, per ``cache.scope``), the API, the resolved route, every message,
system prompt, tool, sampling parameter, stop sequence, response format and the
request hints (reasoning effort, thinking budget, ``top_k``).

For the Anthropic API the client's own body (``clasp_claude`` keeps it in
``ctx.state``, see :data:`RAW_REQUEST_KEY`) is hashed rather than the canonical
translation: it carries what the translation keeps out of the canonical body (stop
sequences, ``output_config``, thinking) and it is what an Anthropic deployment is sent.

The scope (what the semantic layer compares within, and what an admin can purge by)
hashes the same things except the last user turn: tenant, route, system prompt, tool
set, every parameter, and the conversation before that turn, tool results included.

Cost: one ``orjson`` dump with sorted keys, one regular expression over the bytes (a
JSON string never holds an unescaped quote, so ``"cache_control":`` only matches a real
key) and a BLAKE2b hash; about 0.1 ms for a 20 KB Claude Code request (``bench/cache_bench.py``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson

from clasp_gateway import CanonicalRequest, RequestContext

__all__ = ["IGNORED_FIELDS", "RAW_REQUEST_KEY", "RequestKey", "config_namespace", "request_key", "tenant_of"]

RAW_REQUEST_KEY = "clasp_claude.raw_request"
"""Where clasp-claude keeps an Anthropic client's parsed body (an object with ``.body``)."""

IGNORED_FIELDS = frozenset({"stream", "stream_options", "metadata", "user", "store", "service_tier", "betas"})
"""Top-level request fields that never change the answer."""

_CACHE_CONTROL = re.compile(
    rb',"cache_control":(?:\{[^{}]*\}|null)(?=[}])|"cache_control":(?:\{[^{}]*\}|null),?'
)
_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def _canonical_bytes(value: Any) -> bytes:
    """``value`` serialised canonically (sorted keys), ``cache_control`` removed."""
    data = orjson.dumps(value, option=_OPTS, default=str)
    if b'"cache_control":' in data:
        data = _CACHE_CONTROL.sub(b"", data)
    return data


def _digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=20)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def config_namespace(raw_config: dict[str, Any]) -> str:
    """A hash of the configuration sections that shape answers (``models``, ``context``,
    ``server_tools``, ``classes``, ``cache``): part of every key, so entries an older
    configuration produced are never served (they age out)."""
    relevant = {k: raw_config.get(k) for k in ("models", "context", "context_fallback", "server_tools",
                                                "classes", "cache")}
    return _digest(_canonical_bytes(relevant))[:16]


def tenant_of(ctx: RequestContext, scope: str) -> str:
    """``team:<team>`` (``scope: team``, when the key has a team), else ``key:<key id>``;
    ``anonymous`` for a gateway without keys. A hit never crosses tenants."""
    principal = ctx.principal
    if principal is None:
        return "anonymous"
    if scope == "team" and principal.team:
        return "team:" + principal.team
    return "key:" + principal.key_id


@dataclass(slots=True, frozen=True)
class RequestKey:
    """The hashes of one request."""

    id: str
    """The exact key (entry id)."""
    scope: str
    """The semantic scope: everything but the last user turn."""
    tenant: str


def _last_user_turn(messages: list[Any]) -> int:
    """Index of the last user message whose content is not only tool results (the
    turn the semantic layer matches); ``len(messages)`` when there is none."""
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list) and content and all(
                isinstance(p, dict) and p.get("type") == "tool_result" for p in content
            ):
                return len(messages)  # the turn is a tool result: no user turn to match
            return i
        if isinstance(message, dict) and message.get("role") == "tool":
            return len(messages)
    return len(messages)


def request_key(
    ctx: RequestContext, request: CanonicalRequest, *, route: str, namespace: str, scope_by: str
) -> RequestKey:
    """The exact key and scope of ``request`` (see the module docstring)."""
    raw = ctx.state.get(RAW_REQUEST_KEY)
    body = getattr(raw, "body", None) if ctx.api == "anthropic" else None
    source: dict[str, Any] = body if isinstance(body, dict) else request
    params = {k: v for k, v in source.items() if k not in IGNORED_FIELDS and k not in ("messages", "model")}
    hints = ctx.hints
    hint_bytes = orjson.dumps([hints.reasoning_effort, hints.thinking_budget, hints.top_k, hints.structured_output])
    tenant = tenant_of(ctx, scope_by)
    messages = source.get("messages")
    messages = messages if isinstance(messages, list) else []
    cut = _last_user_turn(messages)
    head = (namespace.encode(), tenant.encode(), ctx.api.encode(), route.encode(), _canonical_bytes(params), hint_bytes)
    scope = _digest(*head, _canonical_bytes(messages[:cut]))
    entry_id = _digest(scope.encode(), _canonical_bytes(messages[cut:]))
    return RequestKey(entry_id, scope, tenant)

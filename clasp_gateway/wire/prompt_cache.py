"""Provider prompt caches: the client's cache breakpoints on the way up, per provider.

**The canonical representation** (LiteLLM's convention, which its Anthropic, Bedrock
Converse, Vertex and OpenRouter transforms read): a ``cache_control`` object
(``{"type": "ephemeral"}``, optionally with ``"ttl"``) marks a cache breakpoint, "the
prompt up to and including this element may be cached", on

- a tool entry (``{"type": "function", "function": {...}, "cache_control": {...}}``);
- a message (``{"role": "system", "content": "...", "cache_control": {...}}``): the
  breakpoint is the end of that message (string content; any role);
- a content part of a message whose content is a list (``{"type": "text", ...,
  "cache_control": {...}}``).

clasp-claude sets them from an Anthropic request's blocks (system, tools, the last
messages: what Claude Code marks); an OpenAI-format client may send them as LiteLLM
documents. What each provider gets is decided by :attr:`ProviderProfile.cache_control
<clasp_gateway.wire.catalog.ProviderProfile.cache_control>` in
:func:`~clasp_gateway.wire.quirks.prepare_body`:

- ``"strip"``: every marker removed (OpenAI, Azure, vLLM, Ollama, DeepSeek, Gemini...:
  they reject unknown fields, or cache by prefix on their own);
- ``"keep"``: passed on for the provider's transform to map (Anthropic: breakpoints;
  Bedrock and Claude on Vertex: cache points, through LiteLLM);
- ``"parts"``: markers moved onto content parts (OpenRouter, for the models it caches).

Automatic prefix caches (OpenAI, Azure, DeepSeek, Gemini 2.5+, vLLM) need nothing sent,
only a byte-stable prefix, which the gateway keeps: tools in the client's order, the
same schema cleaning every turn, no per-request text in the system prompt (Claude
Code's billing line is dropped), and these markers stripped, so the bytes of turn N's
prompt begin turn N+1's. OpenAI also takes a ``prompt_cache_key`` routing hint:
:func:`prompt_cache_key` derives one from the tenant and the stable prefix (tools and
leading system messages), never from text a client chooses to send as a key.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

from ..types import CanonicalRequest

__all__ = ["MARK", "has_marks", "marks_on_parts", "prompt_cache_key", "stable_prefix", "strip_marks"]

MARK = "cache_control"
"""The key of a cache breakpoint in the canonical request."""

PROMPT_CACHE_KEY_MIN_CHARS = 4096
"""A system prompt under about 1,024 tokens (OpenAI's minimum cached prefix) gets no key."""


def _part_marked(content: Any) -> bool:
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and MARK in part:
                return True
    return False


def has_marks(body: CanonicalRequest) -> bool:
    """Whether any message, content part or tool of ``body`` carries a breakpoint."""
    for msg in body.get("messages") or ():
        if isinstance(msg, dict) and (MARK in msg or _part_marked(msg.get("content"))):
            return True
    for tool in body.get("tools") or ():
        if isinstance(tool, dict) and (MARK in tool or MARK in (tool.get("function") or {})):
            return True
    return False


def _unmarked_message(msg: dict[str, Any]) -> dict[str, Any]:
    content = msg.get("content")
    if MARK not in msg and not _part_marked(content):
        return msg
    out = {k: v for k, v in msg.items() if k != MARK}
    if isinstance(content, list):
        out["content"] = [
            {k: v for k, v in part.items() if k != MARK} if isinstance(part, dict) and MARK in part else part
            for part in content
        ]
    return out


def _unmarked_tool(tool: Any) -> Any:
    if not isinstance(tool, dict):
        return tool
    fn = tool.get("function")
    if MARK not in tool and not (isinstance(fn, dict) and MARK in fn):
        return tool
    out = {k: v for k, v in tool.items() if k != MARK}
    if isinstance(fn, dict) and MARK in fn:
        out["function"] = {k: v for k, v in fn.items() if k != MARK}
    return out


def strip_marks(body: CanonicalRequest) -> CanonicalRequest:
    """``body`` without breakpoints (``body`` itself when it has none; otherwise a
    new dict whose changed messages and tools are copies: the canonical request is
    reused by fallback attempts and must not be edited). Key order is kept, so the
    bytes are those of the same request sent without markers."""
    if not has_marks(body):
        return body
    out = dict(body)
    messages = body.get("messages")
    if isinstance(messages, list):
        out["messages"] = [_unmarked_message(m) if isinstance(m, dict) else m for m in messages]
    tools = body.get("tools")
    if isinstance(tools, list):
        out["tools"] = [_unmarked_tool(t) for t in tools]
    return out


def marks_on_parts(body: CanonicalRequest) -> CanonicalRequest:
    """``body`` with message-level breakpoints moved onto the message's last content
    part (a string content becomes one text part), as OpenRouter requires; tools lose
    theirs (OpenRouter takes breakpoints in content only)."""
    tools = body.get("tools")
    if isinstance(tools, list) and any(_unmarked_tool(t) is not t for t in tools):
        body = {**body, "tools": [_unmarked_tool(t) for t in tools]}
    messages = body.get("messages")
    if not isinstance(messages, list) or not any(isinstance(m, dict) and MARK in m for m in messages):
        return body
    out_messages = []
    for msg in messages:
        if isinstance(msg, dict) and MARK in msg:
            mark = msg[MARK]
            msg = {k: v for k, v in msg.items() if k != MARK}
            content = msg.get("content")
            if isinstance(content, str) and content:
                msg["content"] = [{"type": "text", "text": content, MARK: mark}]
            elif isinstance(content, list) and content and isinstance(content[-1], dict):
                msg["content"] = [*content[:-1], {**content[-1], MARK: mark}]
        out_messages.append(msg)
    return {**body, "messages": out_messages}


def stable_prefix(body: CanonicalRequest) -> str:
    """What identifies the part of a request that stays the same across a
    conversation's turns: the leading system messages and the tools' names. (The
    tools' schemas are left out: hashing them costs ~60 µs a request for a routing
    hint that the system prompt already makes specific.)"""
    parts: list[str] = []
    for msg in body.get("messages") or ():
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "developer"):
            break
        content = msg.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    for tool in body.get("tools") or ():
        fn = tool.get("function") if isinstance(tool, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        parts.append(f"tool:{name}" if isinstance(name, str) else "tool")
    return "\x00".join(parts)


@lru_cache(maxsize=1024)
def _digest(tenant: str, prefix: str) -> str:
    # Memoised: a session sends the same prefix every turn, and Python's string hash
    # and equality (what the cache costs) are far cheaper than SHA-256 over ~15 KB.
    digest = hashlib.sha256()
    digest.update(tenant.encode("utf-8", "surrogatepass"))
    digest.update(b"\0")
    digest.update(prefix.encode("utf-8", "surrogatepass"))
    return "clasp-" + digest.hexdigest()[:32]


def prompt_cache_key(tenant: str, body: CanonicalRequest) -> str | None:
    """OpenAI's ``prompt_cache_key`` for ``body``: a digest of the tenant (team or key)
    and :func:`stable_prefix`, so requests that share a long prefix land on the same
    cache, and two tenants never share a key. ``None`` when the prefix is too short to
    be cached."""
    prefix = stable_prefix(body)
    if len(prefix) < PROMPT_CACHE_KEY_MIN_CHARS:
        return None
    return _digest(tenant, prefix)

"""Per-provider adaptation of a canonical request: the one place provider quirks live.

The format plugins produce a provider-neutral OpenAI body plus
:class:`~clasp_gateway.types.RequestHints`; :func:`prepare_body` turns it into what
one deployment accepts (model name, output limit, schema dialect, reasoning and
sampling parameters, usage reporting in streams, history the provider would refuse).
:func:`response_fixer` is the other direction: what a provider's chunks need before
the rest of the gateway reads them. Which quirk applies is decided by the fields of
:class:`~clasp_gateway.wire.catalog.ProviderProfile`, never by provider name here.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from typing import Any

from ..types import CanonicalRequest, Chunk, Deployment, RequestHints
from .catalog import ProviderProfile, provider_profile
from .prompt_cache import marks_on_parts, strip_marks

# OpenAI reasoning models take max_completion_tokens and refuse temperature/top_p.
_OPENAI_REASONING = re.compile(r"^(o\d|gpt-5)")


def _clean_tools(tools: list[dict[str, Any]], dialect: str) -> list[dict[str, Any]]:
    if dialect == "openai":
        out = []
        for tool in tools:
            fn = tool.get("function")
            params = fn.get("parameters") if isinstance(fn, dict) else None
            if isinstance(fn, dict) and isinstance(params, dict) and "$schema" in params:
                params = {k: v for k, v in params.items() if k != "$schema"}
                tool = {**tool, "function": {**fn, "parameters": params}}
            out.append(tool)
        return out
    from ..shaping.schema import clean_schema

    cleaned = []
    for tool in tools:
        fn = tool.get("function") or {}
        params = fn.get("parameters")
        if isinstance(params, dict):
            fn = {**fn, "parameters": clean_schema(params, dialect)}
        cleaned.append({**tool, "function": fn})
    return cleaned


def prepare_body(
    body: CanonicalRequest, deployment: Deployment, hints: RequestHints, *, stream: bool
) -> CanonicalRequest:
    """The request body for ``deployment`` (a new dict; ``body`` is not changed)."""
    profile = provider_profile(deployment.provider)
    out = dict(body)
    out["model"] = deployment.model
    if stream:
        out["stream"] = True
        if profile.supports_stream_usage:
            out["stream_options"] = {"include_usage": True}
        else:
            out.pop("stream_options", None)
    else:
        out.pop("stream", None)
        out.pop("stream_options", None)

    limit = deployment.info.max_output_tokens
    requested = out.get("max_tokens") or out.get("max_completion_tokens")
    if limit and isinstance(requested, int) and requested > limit:
        # Claude Code asks for 32k-128k; most models cap lower and reject more.
        requested = limit
    reasoning_model = (
        profile.reasoning_param is not None
        and deployment.provider in ("openai", "azure")
        and bool(_OPENAI_REASONING.match(deployment.model))
    )
    if requested is not None:
        if reasoning_model:
            out.pop("max_tokens", None)
            out["max_completion_tokens"] = requested
        else:
            out.pop("max_completion_tokens", None)
            out["max_tokens"] = requested
    if reasoning_model:
        out.pop("temperature", None)
        out.pop("top_p", None)

    tools = out.get("tools")
    if tools:
        out["tools"] = _clean_tools(tools, deployment.settings.get("schema_dialect") or profile.schema_dialect)
        if not deployment.info.supports_parallel_tool_calls:
            out.pop("parallel_tool_calls", None)
    else:
        out.pop("tools", None)
        out.pop("tool_choice", None)
        out.pop("parallel_tool_calls", None)

    if hints.reasoning_effort and profile.reasoning_param and (
        deployment.info.supports_reasoning or reasoning_model
    ):
        out[profile.reasoning_param] = hints.reasoning_effort
    if hints.top_k is not None and profile.accepts_top_k:
        out["top_k"] = hints.top_k
    for key in profile.unsupported_params:
        out.pop(key, None)
    if profile.tool_call_ids != "any" or not profile.accepts_reasoning_history or profile.thought_signatures_in_ids:
        out["messages"] = _history_for(out.get("messages") or [], profile)
    if profile.tool_names_start_with_letter and out.get("tools"):
        _letter_led_names(out)
    out = _breakpoints_for(out, profile, deployment.model)
    if deployment.extra_body:
        out.update(deployment.extra_body)
    return out


# OpenRouter caches (and accepts cache_control on content parts) for these model families.
_OPENROUTER_CACHING = ("claude", "gemini", "minimax", "glm", "z-ai")


def _breakpoints_for(out: CanonicalRequest, profile: ProviderProfile, model: str) -> CanonicalRequest:
    """The request's cache breakpoints as the provider takes them (see
    :mod:`.prompt_cache`): kept, moved onto content parts, or removed."""
    mode = profile.cache_control
    if mode == "keep":
        return out
    if mode == "parts" and any(family in model.lower() for family in _OPENROUTER_CACHING):
        return marks_on_parts(out)
    return strip_marks(out)


# --- history the provider would refuse ---------------------------------------------------

_ALNUM = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ALNUM9 = re.compile(r"^[a-zA-Z0-9]{9}$")
THOUGHT_SEPARATOR = "__thought__"
"""LiteLLM's separator between a tool-call id and the Gemini thought signature it carries."""


def alnum9_id(call_id: str) -> str:
    """A Mistral-valid tool-call id (exactly 9 of ``[a-zA-Z0-9]``) for any id.

    Valid ids are kept (Mistral's own come back unchanged); others are a base-62
    digest, so the same client id maps to the same upstream id on every turn and the
    call and its result always agree.
    """
    if _ALNUM9.match(call_id):
        return call_id
    n = int.from_bytes(hashlib.sha256(call_id.encode("utf-8")).digest()[:8], "big")
    chars = []
    for _ in range(9):
        n, r = divmod(n, 62)
        chars.append(_ALNUM[r])
    return "".join(chars)


def signature_id_down(call_id: str) -> str:
    """A Gemini tool-call id carrying a base64 thought signature, made URL-safe
    (``+/`` -> ``-_``, no padding) so it matches Anthropic's ``^[a-zA-Z0-9_-]+$``."""
    head, sep, sig = call_id.partition(THOUGHT_SEPARATOR)
    if not sep:
        return call_id
    return head + sep + sig.replace("+", "-").replace("/", "_").rstrip("=")


def signature_id_up(call_id: str) -> str:
    """The inverse of :func:`signature_id_down`: the id as LiteLLM made it."""
    head, sep, sig = call_id.partition(THOUGHT_SEPARATOR)
    if not sep or not sig:
        return call_id
    raw = sig.replace("-", "+").replace("_", "/")
    raw += "=" * (-len(raw) % 4)
    try:
        base64.b64decode(raw, validate=True)
    except ValueError:
        return call_id  # not one of ours: leave it alone
    return head + sep + raw


def _history_for(messages: list[dict[str, Any]], profile: ProviderProfile) -> list[dict[str, Any]]:
    """Messages rewritten for a provider's rules on tool-call ids and echoed reasoning
    (new dicts where something changes; the canonical request is not edited)."""
    if profile.tool_call_ids == "alnum9":
        map_id: Callable[[str], str] | None = alnum9_id
    elif profile.thought_signatures_in_ids:
        map_id = signature_id_up
    else:
        map_id = None
    strip_reasoning = not profile.accepts_reasoning_history
    out = []
    for msg in messages:
        role = msg.get("role")
        if role == "assistant":
            calls = msg.get("tool_calls")
            if (calls and map_id is not None) or (strip_reasoning and ("reasoning_content" in msg or "reasoning" in msg)):
                msg = dict(msg)
                if strip_reasoning:
                    msg.pop("reasoning_content", None)
                    msg.pop("reasoning", None)
                if calls and map_id is not None:
                    msg["tool_calls"] = [
                        {**c, "id": map_id(c["id"])} if isinstance(c.get("id"), str) else c for c in calls
                    ]
        elif role == "tool" and map_id is not None and isinstance(msg.get("tool_call_id"), str):
            msg = {**msg, "tool_call_id": map_id(msg["tool_call_id"])}
        out.append(msg)
    return out


_LETTER_LED = re.compile(r"^[a-zA-Z_]")
NAME_PREFIX = "t."
"""Prefix of a tool name that had to start with a letter (reversible: client tool
names never contain a dot, OpenAI's and Anthropic's rules exclude it)."""


def letter_led_name(name: str) -> str:
    """``name`` as a provider that wants a leading letter accepts it."""
    return name if _LETTER_LED.match(name) else (NAME_PREFIX + name)[:64]


def _letter_led_names(out: CanonicalRequest) -> None:
    """Rename tools (definitions, tool_choice, calls in history) in ``out`` (a fresh
    body; nested objects are copied, never edited)."""
    if all(_LETTER_LED.match(str((t.get("function") or {}).get("name") or "_")) for t in out["tools"]):
        return
    out["tools"] = [
        {**t, "function": {**t["function"], "name": letter_led_name(t["function"]["name"])}}
        if isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str) else t
        for t in out["tools"]
    ]
    choice = out.get("tool_choice")
    if isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        out["tool_choice"] = {**choice, "function": {**choice["function"],
                                                     "name": letter_led_name(choice["function"]["name"])}}
    messages = []
    for msg in out.get("messages") or ():
        calls = msg.get("tool_calls") if msg.get("role") == "assistant" else None
        if calls:
            msg = {**msg, "tool_calls": [
                {**c, "function": {**c["function"], "name": letter_led_name(c["function"]["name"])}}
                if isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str) else c
                for c in calls]}
        messages.append(msg)
    out["messages"] = messages


# --- answers the rest of the gateway cannot read as they are ----------------------------


def _usage_from(field: str) -> Callable[[Chunk], Chunk]:
    def fix(chunk: Chunk) -> Chunk:
        extra = chunk.get(field)
        if isinstance(extra, dict) and isinstance(extra.get("usage"), dict) and not chunk.get("usage"):
            chunk["usage"] = extra["usage"]
        return chunk

    return fix


def _signature_ids(chunk: Chunk) -> Chunk:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        for call in (delta.get("tool_calls") if isinstance(delta, dict) else None) or ():
            ident = call.get("id")
            if isinstance(ident, str) and THOUGHT_SEPARATOR in ident:
                call["id"] = signature_id_down(ident)
    return chunk


def _client_names(chunk: Chunk) -> Chunk:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        for call in (delta.get("tool_calls") if isinstance(delta, dict) else None) or ():
            fn = call.get("function")
            name = fn.get("name") if isinstance(fn, dict) else None
            if isinstance(name, str) and name.startswith(NAME_PREFIX):
                fn["name"] = name[len(NAME_PREFIX):]
    return chunk


def response_fixer(deployment: Deployment) -> Callable[[Chunk], Chunk] | None:
    """A function applied to every chunk of ``deployment``'s answers (may edit the
    chunk in place), or ``None`` when the provider needs none (the common case)."""
    profile = provider_profile(deployment.provider)
    fixes: list[Callable[[Chunk], Chunk]] = []
    if profile.usage_field:
        fixes.append(_usage_from(profile.usage_field))
    if profile.thought_signatures_in_ids:
        fixes.append(_signature_ids)
    if profile.tool_names_start_with_letter:
        fixes.append(_client_names)
    if not fixes:
        return None
    if len(fixes) == 1:
        return fixes[0]

    def all_fixes(chunk: Chunk) -> Chunk:
        for fix in fixes:
            chunk = fix(chunk)
        return chunk

    return all_fixes

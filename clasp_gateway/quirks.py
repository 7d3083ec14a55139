"""Per-provider adaptation of a canonical request: the one place provider quirks live.

The format plugins produce a provider-neutral OpenAI body plus
:class:`~clasp_gateway.types.RequestHints`; :func:`prepare_body` turns it into what
one deployment accepts (model name, output limit, schema dialect, reasoning and
sampling parameters, usage reporting in streams).
"""

from __future__ import annotations

import re
from typing import Any

from .catalog import provider_profile
from .types import CanonicalRequest, Deployment, RequestHints

# OpenAI reasoning models take max_completion_tokens and refuse temperature/top_p.
_OPENAI_REASONING = re.compile(r"^(o\d|gpt-5)")


def _clean_tools(tools: list[dict[str, Any]], dialect: str) -> list[dict[str, Any]]:
    if dialect == "openai":
        out = []
        for tool in tools:
            fn = tool.get("function")
            params = fn.get("parameters") if isinstance(fn, dict) else None
            if isinstance(params, dict) and "$schema" in params:
                params = {k: v for k, v in params.items() if k != "$schema"}
                tool = {**tool, "function": {**fn, "parameters": params}}
            out.append(tool)
        return out
    from .schema import clean_schema

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
    if deployment.extra_body:
        out.update(deployment.extra_body)
    return out

"""Which request fields may travel upstream: an allowlist, not a denylist.

A client's body is data, never configuration. ``litellm.acompletion`` reads dozens
of keyword arguments that steer a call (``api_base``/``base_url``: where the
deployment's key is sent; ``api_key``, ``extra_headers``, ``headers``,
``organization``: what it carries; ``num_retries``, ``fallbacks``,
``mock_response``, ``deployment_id``, ``model_list``...), and LiteLLM adds more in
every release, so removing the dangerous ones can never be complete. Only the
OpenAI chat parameters the canonical format defines go upstream, on every path
(:meth:`clasp_gateway.wire.providers.Providers.open` applies :func:`upstream_params` to
every attempt); the deployment's own ``extra_body`` (written by the operator in
clasp.yaml) is added after, and the gateway's own settings (URL, key, headers,
timeouts, retries) are set by each adapter after that, so nothing a client sends
can replace them.

:func:`check_params` validates the types of those parameters once, at the OpenAI
edge, so a wrong type is a clean 400 rather than a provider library's crash.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import InvalidRequestError
from ..types import CanonicalRequest, Deployment

__all__ = ["EXTRA_PARAMS", "MODEL_PARAMS", "OPENAI_PARAMS", "UPSTREAM_PARAMS", "check_params", "upstream_params"]

OPENAI_PARAMS: tuple[str, ...] = (
    "temperature", "top_p", "n", "stop", "max_tokens", "max_completion_tokens", "presence_penalty",
    "frequency_penalty", "logit_bias", "user", "response_format", "seed", "tools", "tool_choice",
    "parallel_tool_calls", "reasoning_effort", "logprobs", "top_logprobs",
)
"""OpenAI chat parameters the canonical format defines (what a format plugin may set
and what ``litellm.get_optional_params`` maps to each provider's names)."""

EXTRA_PARAMS: tuple[str, ...] = ("top_k",)
"""Canonical parameters that are not OpenAI's (``quirks.prepare_body`` sets ``top_k``
for providers that accept it)."""

MODEL_PARAMS: tuple[str, ...] = (*OPENAI_PARAMS, *EXTRA_PARAMS)
"""The sampling and tool parameters of a canonical request (all but model, messages
and streaming)."""

UPSTREAM_PARAMS: frozenset[str] = frozenset({"model", "messages", "stream", "stream_options", *MODEL_PARAMS})
"""Every top-level key a canonical request may carry upstream."""


def upstream_params(body: CanonicalRequest, deployment: Deployment) -> CanonicalRequest:
    """``body`` reduced to :data:`UPSTREAM_PARAMS`, then the deployment's ``extra_body``
    (the operator's, trusted) on top. A new dict; ``body`` is not changed."""
    out = {key: value for key, value in body.items() if key in UPSTREAM_PARAMS}
    tools = out.get("tools")
    if isinstance(tools, list) and not all(_function_tool(t) for t in tools):
        # Only function tools are canonical; LiteLLM acts on others itself (an
        # ``mcp`` tool's ``server_url`` would make the gateway connect to it).
        out["tools"] = [t for t in tools if _function_tool(t)]
    if deployment.extra_body:
        out.update(deployment.extra_body)
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _stop(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(s, str) for s in value))


def _function_tool(tool: Any) -> bool:
    return isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict)


def _tools(value: Any) -> bool:
    return isinstance(value, list) and all(_function_tool(t) for t in value)


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "temperature": (_number, "a number"),
    "top_p": (_number, "a number"),
    "top_k": (_integer, "an integer"),
    "presence_penalty": (_number, "a number"),
    "frequency_penalty": (_number, "a number"),
    "seed": (_integer, "an integer"),
    "top_logprobs": (_integer, "an integer"),
    "logprobs": (lambda v: isinstance(v, bool), "true or false"),
    "parallel_tool_calls": (lambda v: isinstance(v, bool), "true or false"),
    "stop": (_stop, "a string or an array of strings"),
    "user": (lambda v: isinstance(v, str), "a string"),
    "reasoning_effort": (lambda v: isinstance(v, str), "a string"),
    "logit_bias": (lambda v: isinstance(v, dict), "an object"),
    "response_format": (lambda v: isinstance(v, dict), "an object"),
    "stream_options": (lambda v: isinstance(v, dict), "an object"),
    "tools": (_tools, 'an array of function tools ({"type": "function", "function": {...}})'),
    "tool_choice": (lambda v: isinstance(v, (str, dict)), "a string or an object"),
}


def check_params(body: dict[str, Any]) -> None:
    """Raise :class:`InvalidRequestError` (400) when an OpenAI parameter the gateway
    forwards has the wrong type (``null`` means "not set" and is accepted). Keys the
    gateway does not forward are not checked: they are dropped."""
    for key, (valid, expected) in _CHECKS.items():
        value = body.get(key)
        if value is not None and not valid(value):
            raise InvalidRequestError(f"{key}: expected {expected}")

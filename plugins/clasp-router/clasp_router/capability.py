"""What a request needs (tools, vision, context and output room, reasoning) and
which deployments can give it.

The filter runs before any strategy: a deployment that cannot serve the request is
never ordered first by cost or latency. It uses the core's cheap request features
(computed once per request, the same pass the request classifier uses).
"""

from __future__ import annotations

from dataclasses import dataclass

from clasp_gateway import CanonicalRequest, Deployment, RequestFeatures, RequestHints, request_features

DEFAULT_OUTPUT_TOKENS = 1000
"""Output tokens assumed when the request sets no ``max_tokens`` (for cost, not filtering)."""


@dataclass(slots=True, frozen=True)
class Needs:
    """What one request asks of a deployment."""

    tools: bool = False
    vision: bool = False
    reasoning: bool = False
    input_tokens: int = 0
    max_tokens: int | None = None

    @property
    def output_tokens(self) -> int:
        """The output budget for cost estimates."""
        return self.max_tokens if self.max_tokens and self.max_tokens > 0 else DEFAULT_OUTPUT_TOKENS


def needs_of(request: CanonicalRequest, hints: RequestHints | None) -> Needs:
    """The request's needs, from the core's request features."""
    return needs_from(request_features(request, hints))


def needs_from(f: RequestFeatures) -> Needs:
    """The needs of a request whose features are already gathered."""
    return Needs(tools=f.tools > 0, vision=f.images > 0, reasoning=f.thinking,
                 input_tokens=f.input_tokens, max_tokens=f.max_tokens)


def missing(deployment: Deployment, needs: Needs) -> str | None:
    """Why ``deployment`` cannot serve a request with these needs (``None``: it can).

    Context room (``"context"``): the estimated input exceeds the window; the router
    keeps such a candidate and leaves it to the core's context fitting, which counts
    exactly and reroutes, trims or summarises. Output room (``"output"``): ``max_tokens``
    above the deployment's output limit removes it.
    """
    info = deployment.info
    if needs.tools and not info.supports_tools:
        return "tools"
    if needs.vision and not info.supports_vision:
        return "vision"
    if needs.reasoning and not info.supports_reasoning:
        return "reasoning"
    if info.max_input_tokens and needs.input_tokens > info.max_input_tokens:
        return "context"
    if needs.max_tokens and info.max_output_tokens and needs.max_tokens > info.max_output_tokens:
        return "output"
    return None


def capability_score(deployment: Deployment) -> float:
    """A rough capability rank for ``balanced`` and similar-capability fallbacks: one
    point per capability, plus the context and output windows on a log-ish scale."""
    info = deployment.info
    score = float(info.supports_tools) + float(info.supports_vision) + float(info.supports_reasoning)
    score += (info.max_input_tokens or 8192).bit_length() / 8 + (info.max_output_tokens or 4096).bit_length() / 8
    return score


def same_capabilities(primary: Deployment, other: Deployment) -> bool:
    """``strict``: ``other`` can do everything ``primary`` can (tools, vision, reasoning,
    at least its context and output windows)."""
    a, b = primary.info, other.info
    if (a.supports_tools and not b.supports_tools) or (a.supports_vision and not b.supports_vision):
        return False
    if a.supports_reasoning and not b.supports_reasoning:
        return False
    if a.max_input_tokens and (b.max_input_tokens or 0) < a.max_input_tokens and b.max_input_tokens is not None:
        return False
    return not (a.max_output_tokens and b.max_output_tokens is not None and b.max_output_tokens < a.max_output_tokens)


def estimated_cost(deployment: Deployment, needs: Needs) -> float:
    """Dollars this request would cost on ``deployment`` (at least one token each way)."""
    info = deployment.info
    return max(1, needs.input_tokens) * info.input_cost_per_token + needs.output_tokens * info.output_cost_per_token

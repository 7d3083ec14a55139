"""The catalogue: per deployment, what it can do, what it costs, where it runs, and
what it has shown (moving averages of time to first byte and tokens per second).

Capabilities and prices are the core's :class:`~clasp_gateway.ModelInfo` (LiteLLM's
map, with the per-deployment overrides clasp.yaml already declares:
``max_input_tokens``, ``supports_vision``, ``input_cost_per_token``...); the region is
the deployment's ``region:``. Measurements are this replica's (O(1) per attempt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clasp_gateway import Deployment

ALPHA = 0.2
"""Weight of the newest observation in the moving averages (~ the last 10 attempts)."""


def region_of(deployment: Deployment) -> str | None:
    """The deployment's ``region:`` (``None`` when clasp.yaml gives none)."""
    region = deployment.settings.get("region")
    return region if isinstance(region, str) and region else None


@dataclass(slots=True)
class Measured:
    """Moving averages of one deployment's successful attempts."""

    ttfb_ms: float | None = None
    tokens_per_s: float | None = None
    samples: int = 0

    def add(self, ttfb_ms: float | None, tokens_per_s: float | None) -> None:
        """Fold one attempt in (``None``: not measured this time)."""
        self.samples += 1
        if ttfb_ms is not None:
            self.ttfb_ms = ttfb_ms if self.ttfb_ms is None else self.ttfb_ms + ALPHA * (ttfb_ms - self.ttfb_ms)
        if tokens_per_s is not None:
            prev = self.tokens_per_s
            self.tokens_per_s = tokens_per_s if prev is None else prev + ALPHA * (tokens_per_s - prev)


@dataclass(slots=True)
class Measurements:
    """Measured latency per deployment id (bounded by the number of deployments)."""

    by_id: dict[str, Measured] = field(default_factory=dict)

    def of(self, deployment_id: str) -> Measured:
        found = self.by_id.get(deployment_id)
        if found is None:
            found = self.by_id[deployment_id] = Measured()
        return found

    def ttfb(self, deployment_id: str) -> float | None:
        found = self.by_id.get(deployment_id)
        return found.ttfb_ms if found is not None else None


def entry(
    deployment: Deployment, measured: Measured | None, available: bool | None, headroom: float | None = None,
    *, ttfb_p99_s: float | None = None, limits: dict[str, int | None] | None = None,
) -> dict[str, Any]:
    """One catalogue row, safe to show: no keys, no headers, no api_base.

    ``ttfb_p99_s``: the learned p99 time to first byte (clasp-fallback's hedging
    estimate); ``limits``: the deployment's own ``limits:`` (rpm, tpm, rpd,
    max_concurrency), whose headroom is folded into ``headroom``."""
    info = deployment.info
    return {
        "id": deployment.id,
        "provider": deployment.provider,
        "model": deployment.model,
        "region": region_of(deployment),
        "context_window": info.max_input_tokens,
        "max_output_tokens": info.max_output_tokens,
        "tools": info.supports_tools,
        "vision": info.supports_vision,
        "reasoning": info.supports_reasoning,
        "input_cost_per_mtok": round(info.input_cost_per_token * 1e6, 6),
        "output_cost_per_mtok": round(info.output_cost_per_token * 1e6, 6),
        "ttfb_ms": None if measured is None or measured.ttfb_ms is None else round(measured.ttfb_ms, 1),
        "tokens_per_s": None if measured is None or measured.tokens_per_s is None else round(measured.tokens_per_s, 1),
        "ttfb_p99_ms": None if ttfb_p99_s is None else round(ttfb_p99_s * 1000, 1),
        "limits": {k: v for k, v in limits.items() if v is not None} if limits else None,
        "available": available,
        "headroom": None if headroom is None else round(headroom, 3),
    }

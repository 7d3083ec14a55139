"""What the client gets when every candidate failed or was skipped.

In order of preference:

1. **Stale-if-error.** A cache plugin that, during ``before_call``, found an entry
   too old to serve but young enough to serve in an outage puts its canonical chunks
   in ``ctx.state[STALE_KEY]``. It is served with ``x-clasp-degraded: stale``
   (clasp-cache fills it, within ``cache.stale_if_error_max_age``, and marks the answer
   ``x-clasp-cache: stale``).
2. **A configured default response** (``fallback.default_response``), streamed as an
   ordinary answer with ``x-clasp-degraded: default-response``.
3. **A clear 529** ``overloaded_error`` naming every deployment and why it failed or was
   skipped, with ``retry-after`` and ``x-clasp-degraded: unavailable``.

Errors that are the request's fault (context too long for every candidate, a
content-policy refusal, an invalid request) are never degraded: the client must see
them. Without a stale or default answer, some errors are also kept as they are: the
provider's 429 (with its ``retry-after``) when every candidate was rate limited; the
message of a misconfigured deployment (bad key, missing secret), which tells the
operator what to fix; and the mapped upstream error when the chain had a single
deployment (a 529 would say less than its own 500 or 503).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from clasp_gateway import (
    UNAVAILABLE_KEY,
    Chunk,
    Deployment,
    GatewayError,
    OverloadedError,
    RateLimitError,
    RequestContext,
)

from .classify import classify
from .stats import safe_error_text

STALE_KEY = "stale_if_error"
"""``ctx.state`` key where a cache plugin leaves a stale answer (a list of canonical
chunks) that may be served if every deployment fails."""

DEGRADED_HEADER = "x-clasp-degraded"


@dataclass(slots=True, frozen=True)
class Skip:
    """A candidate that was not tried, and why (for the 529 message)."""

    deployment: str
    reason: str
    retry_in: float | None = None
    """Seconds until it may be tried again (an open breaker), if known."""
    limit: bool = False
    """Skipped because one of its own ``limits:`` was reached (deployment_limits.py)."""


def canned_chunks(text: str, ctx: RequestContext) -> list[Chunk]:
    """``text`` as a complete canonical answer (content, then ``finish_reason: stop``)."""
    ident = "chatcmpl-degraded-" + ctx.request_id.removeprefix("req_")
    base: dict[str, Any] = {"id": ident, "object": "chat.completion.chunk", "model": ctx.public_model}
    return [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]},
        {
            **base,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        },
    ]


def _failure_lines(ctx: RequestContext, chain: list[Deployment], skipped: list[Skip]) -> list[str]:
    """One line per deployment, in the order they were considered."""
    skips = {s.deployment: s for s in skipped}
    order = [d.id for d in chain]
    order += [a.deployment.id for a in ctx.attempts if a.deployment.id not in order]
    order += [s.deployment for s in skipped if s.deployment not in order]
    lines: list[str] = []
    for ident in order:
        errors: list[str] = []
        for attempt in ctx.attempts:
            if attempt.deployment.id != ident or attempt.error is None:
                continue
            text = safe_error_text(getattr(attempt.error, "message", str(attempt.error)))
            errors.append(text.removeprefix(f"{ident}: "))
        if errors:
            last = errors[-1]
            count = sum(1 for e in errors if e == last)
            lines.append(f"{ident}: {last}" + (f" (x{count})" if count > 1 else ""))
        elif ident in skips:
            lines.append(f"{ident}: skipped ({skips[ident].reason})")
    return lines


def exhausted_answer(
    ctx: RequestContext,
    error: Exception,
    chain: list[Deployment],
    skipped: list[Skip],
    default_response: str | None,
) -> list[Chunk] | GatewayError | None:
    """The ``on_exhausted`` decision: chunks to answer with, an error to raise, or None."""
    failures = [f for f in (classify(a.error) for a in ctx.attempts) if f is not None]
    last = classify(error) if ctx.attempts else None
    if last is not None and last.is_client_error:
        return None
    stale = ctx.state.get(STALE_KEY)
    if isinstance(stale, list) and stale:
        ctx.response_headers[DEGRADED_HEADER] = "stale"
        return list(stale)
    if default_response:
        ctx.response_headers[DEGRADED_HEADER] = "default-response"
        return canned_chunks(default_response, ctx)
    if skipped and not ctx.attempts and all(s.limit for s in skipped):
        # Every candidate is at its own limit: the client should slow down (429).
        wait = max(1, math.ceil(min(s.retry_in or 1.0 for s in skipped)))
        return RateLimitError(
            f"every deployment of {ctx.public_model!r} is at its configured limit ("
            + "; ".join(f"{s.deployment}: {s.reason}" for s in skipped) + f"); retry in {wait}s",
            headers={"retry-after": str(wait)},
        )
    if failures and all(f.kind == "rate_limited" for f in failures):
        return None  # keep the 429 and its retry-after: the client should slow down
    if last is not None and last.kind == "misconfigured":
        return None  # the deployment's own message says what to fix
    # Candidates the core skipped: none of their credentials has access (permission checks).
    unavailable = ctx.state.get(UNAVAILABLE_KEY) or {}
    skipped = [*skipped, *(Skip(d, why) for d, why in unavailable.items())]
    if not skipped and len({a.deployment.id for a in ctx.attempts}) == 1:
        return None  # one deployment, nothing else to try: its own (mapped) error says most
    parts = _failure_lines(ctx, chain, skipped)
    waits = [s.retry_in for s in skipped if s.retry_in]
    retry_after = max(1, math.ceil(min(waits))) if waits else 1
    detail = "; ".join(parts) if parts else "no deployment is configured for it"
    return OverloadedError(
        f"no deployment could serve {ctx.public_model!r} right now ({detail}); retry in {retry_after}s",
        headers={"retry-after": str(retry_after), DEGRADED_HEADER: "unavailable"},
    )

"""One app's tracing: the request span (an ASGI wrapper) and a span per attempt (hooks).

- The **request span** (``SERVER``, ``POST /v1/messages``) wraps the whole request,
  continuing the client's W3C ``traceparent`` when it sends one (``continue_incoming``);
  when the request ends it gets the request event's facts: public model, deployment,
  status, tokens, cost, retries, fallbacks, cache hit, attempts.
- An **attempt span** (``CLIENT``, ``attempt openai/gpt-4o``) per upstream attempt
  (retries, fallbacks and hedges each have one), from ``before_attempt`` to
  ``after_attempt``: deployment, provider, model, attempt number, outcome, tokens,
  time to first byte. Its ``traceparent`` is sent to the provider (``propagate``) via
  :func:`clasp_gateway.set_upstream_headers`.

Hooks do little: a span start or end and a few attributes, no I/O (the batch
processor exports from its own thread).
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from clasp_gateway import Attempt, Deployment, RequestContext, hookimpl, set_upstream_headers

PROPAGATOR = TraceContextTextMapPropagator()
_GETTER = DefaultGetter()
ATTEMPTS = "otel.attempts"
"""``ctx.state`` key: the open attempt spans of a request, in order."""


class OtelRuntime:
    """One app's tracer and hooks (registered in the app's plugin manager at start-up)."""

    def __init__(self, provider: TracerProvider, settings: dict[str, Any]) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("clasp_otel")
        self.continue_incoming: bool = settings["continue_incoming"]
        self.propagate: bool = settings["propagate"]

    # --- the request span (ASGI) --------------------------------------------------------------

    def wrap(self, app: Any) -> Any:
        """``app`` inside a request span per HTTP request."""

        async def traced(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            parent = otel_context.Context()
            if self.continue_incoming:
                carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or ()
                           if k in (b"traceparent", b"tracestate")}
                if carrier:
                    parent = PROPAGATOR.extract(carrier, context=parent, getter=_GETTER)
            method, path = scope.get("method", "-"), scope.get("path", "")
            status = 0

            async def send_status(message: Any) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            with self.tracer.start_as_current_span(
                f"{method} {path}", context=parent, kind=SpanKind.SERVER, record_exception=True,
                attributes={"http.request.method": method, "url.path": path,
                            "clasp.request_id": (scope.get("state") or {}).get("request_id") or ""},
            ) as span:
                try:
                    await app(scope, receive, send_status)
                finally:
                    span.set_attribute("http.response.status_code", status or 499)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))

        return traced

    # --- per request and attempt (hooks) ------------------------------------------------------

    @hookimpl
    def before_attempt(self, ctx: RequestContext, deployment: Deployment, attempt_number: int) -> None:
        """Open the attempt span, and send its traceparent upstream."""
        span = self.tracer.start_span(
            f"attempt {deployment.id}", kind=SpanKind.CLIENT,
            attributes={"clasp.deployment": deployment.id, "gen_ai.system": deployment.provider,
                        "gen_ai.request.model": deployment.model, "clasp.attempt": attempt_number,
                        "clasp.attempt_index": len(ctx.attempts) + 1, "clasp.public_model": ctx.public_model},
        )
        ctx.state.setdefault(ATTEMPTS, []).append((deployment.id, span))
        if self.propagate:
            carrier: dict[str, str] = {}
            PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
            set_upstream_headers(carrier)

    @hookimpl
    def after_attempt(self, ctx: RequestContext, attempt: Attempt) -> None:
        """Close the attempt's span with its outcome."""
        spans: list[tuple[str, Any]] = ctx.state.get(ATTEMPTS) or []
        found = next((i for i, (dep, _) in enumerate(spans) if dep == attempt.deployment.id), None)
        if found is None:
            return
        _, span = spans.pop(found)
        if attempt.usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", attempt.usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", attempt.usage.output_tokens)
        if attempt.first_byte is not None:
            span.set_attribute("clasp.ttfb_ms", round((attempt.first_byte - attempt.started) * 1000, 1))
        if attempt.error is not None:
            error = attempt.error
            span.set_attribute("error.type", str(getattr(error, "kind", None) or type(error).__name__))
            upstream = getattr(error, "upstream_status", None)
            if isinstance(upstream, int) and upstream:
                span.set_attribute("http.response.status_code", upstream)
            span.set_status(Status(StatusCode.ERROR, getattr(error, "message", "")[:200]))
        if not spans:
            set_upstream_headers(None)
        span.end()

    @hookimpl
    def record(self, ctx: RequestContext, event: dict[str, Any]) -> None:
        """The request's facts on its span (the ``kind: "request"`` event)."""
        if event.get("kind") != "request":
            return
        for _, span in ctx.state.pop(ATTEMPTS, None) or ():  # attempts never closed (skipped, cut)
            span.end(end_time=time.time_ns())
        span = trace.get_current_span()
        if not span.is_recording():
            return
        usage = event.get("usage") or {}
        values = {
            "clasp.public_model": event.get("public_model"), "clasp.deployment": event.get("deployment"),
            "gen_ai.system": event.get("provider"), "gen_ai.response.model": event.get("model"),
            "clasp.status": event.get("status"), "gen_ai.usage.input_tokens": usage.get("input_tokens"),
            "gen_ai.usage.output_tokens": usage.get("output_tokens"), "clasp.cost_usd": event.get("cost_usd"),
            "clasp.retries": event.get("retries"), "clasp.fallbacks": event.get("fallbacks"),
            "clasp.attempts": len(event.get("attempts") or ()), "clasp.cache_hit": event.get("cache_hit"),
            "clasp.request_class": event.get("request_class"), "clasp.team": event.get("team"),
            "clasp.key": event.get("key_name"), "clasp.cut": event.get("cut"),
            "clasp.hedges": event.get("hedges"),
        }
        span.set_attributes({k: v for k, v in values.items() if v is not None})
        if (event.get("status") or 0) >= 500:
            span.set_status(Status(StatusCode.ERROR))

"""The request lifecycle, each step a hook.

``authenticate`` → resolve the public model name → ``resolve_route`` (order the
candidates) → ``before_call`` (cache hit or refusal) → per candidate:
``before_attempt`` → prepare the body for that provider → call → first chunk →
(on failure ``on_error`` decides: retry, degrade or next candidate) → the caller
streams the rest → :meth:`Gateway.finish` → ``after_attempt`` and ``record``.

A failure can switch deployments only until the first chunk is in hand; after
that the choice is final and a failure becomes an in-stream error.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from .config import Config, ModelRoute
from .context import ContextManager, is_context_overflow, overflow_error
from .errors import GatewayError, NotFoundError, OverloadedError, UpstreamError
from .plugins import PluginManager, await_me_maybe
from .providers import Providers
from .quirks import prepare_body
from .server_tools import ServerTools
from .state import StateBackend, state_from_config
from .textcalls import check_config as check_text_calls
from .textcalls import filter_text_calls, text_call_names
from .types import (
    KEEPALIVE,
    Attempt,
    CanonicalRequest,
    Chunk,
    Deployment,
    Principal,
    RequestContext,
    UpstreamStream,
    Usage,
)

log = logging.getLogger("clasp.pipeline")
access_log = logging.getLogger("clasp.access")


async def _iterate(chunks: list[Chunk]) -> AsyncIterator[Chunk]:
    for chunk in chunks:
        yield chunk


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex[:24]


class Gateway:
    """One configured gateway: config, plugins, providers and the call pipeline."""

    def __init__(self, config: Config, pm: PluginManager) -> None:
        self.config = config
        self.pm = pm
        extra = {args[0]: args[1] for args, _ in pm.collect("register_providers")}
        self.providers = Providers(extra)
        self.strategies = {args[0]: args[1] for args, _ in pm.collect("register_routing_strategies")}
        self._exact: dict[str, ModelRoute] = {}
        self._globs: list[ModelRoute] = []
        for route in config.models:
            if any(ch in route.pattern for ch in "*?["):
                self._globs.append(route)
            else:
                self._exact.setdefault(route.pattern, route)
        self._resolved: dict[str, ModelRoute | None] = {}
        self.chunk_hook = pm.has_impls("on_stream_chunk")
        # Context windows (context.py) and text-written tool calls (textcalls.py):
        # settings validated here, at start-up.
        self.context = ContextManager(config, self.resolve_model, open_upstream=self.providers.open, record=self._record)
        check_text_calls(config)
        # None unless some key, team or default enables a server tool: then no cost.
        self.server_tools = ServerTools.build(pm.collect("register_tools"), config)
        # Shared state (breakers, limits, caches): no I/O until start(); see state/.
        self.state: StateBackend = state_from_config(config)
        self.ready = False

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.state.open()
        await self.providers.start(self.config.deployments())
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        await self.providers.close()
        await self.state.close()

    # --- steps -------------------------------------------------------------------------------

    async def authenticate(self, headers: dict[str, str]) -> Principal:
        """Who is calling, from ``x-api-key`` or ``Authorization: Bearer``."""
        key = headers.get("x-api-key")
        if not key:
            auth = headers.get("authorization", "")
            if auth[:7].lower() == "bearer ":
                key = auth[7:].strip()
        result = self.pm.hook.authenticate(api_key=key or None, headers=headers, config=self.config)
        principal: Principal = await await_me_maybe(result)
        return principal

    def resolve_model(self, name: str) -> ModelRoute:
        """The configured route for a public model name (exact match, then globs)."""
        if name in self._resolved:
            route = self._resolved[name]
        else:
            route = self._exact.get(name)
            if route is None:
                route = next((r for r in self._globs if fnmatch.fnmatchcase(name, r.pattern)), None)
            if len(self._resolved) < 10_000:
                self._resolved[name] = route
        if route is None:
            known = ", ".join(sorted(r.pattern for r in self.config.models)) or "none configured"
            raise NotFoundError(f"model {name!r} is not served by this gateway (models: {known})")
        return route

    def public_models(self) -> list[str]:
        """Public model names for ``/v1/models`` (exact names, then patterns)."""
        return [r.pattern for r in self.config.models]

    async def open(self, ctx: RequestContext, request: CanonicalRequest, *, stream: bool) -> UpstreamStream:
        """Find a deployment that answers and return its stream, first chunk in hand
        (with server tools: the stream of the tool loop, see ``server_tools.py``)."""
        if self.server_tools is not None:
            tools = self.server_tools.for_request(ctx, request)
            if tools:
                return await self.server_tools.open(self, ctx, request, tools, stream=stream)
        return await self._open(ctx, request, stream=stream)

    async def _open(
        self, ctx: RequestContext, request: CanonicalRequest, *, stream: bool, continuation: bool = False
    ) -> UpstreamStream:
        """One upstream round. ``continuation``: a later round of a server-tool loop,
        for which ``before_call`` (called once per request) is not called again."""
        route = self.resolve_model(ctx.public_model)
        candidates = list(route.deployments)
        ordered = await await_me_maybe(
            self.pm.hook.resolve_route(ctx=ctx, request=request, candidates=candidates)
        )
        if ordered is not None:
            candidates = list(ordered)
        for result in () if continuation else self.pm.hook.before_call(ctx=ctx, request=request):
            chunks = await await_me_maybe(result)
            if chunks:
                return self._canned(candidates[0] if candidates else None, chunks)

        # Fit the context window: maybe reorder for a larger window; bodies per candidate.
        plan = await self.context.plan(ctx, request, route, candidates, as_received=not continuation)
        candidates = plan.candidates
        overflow_retried = False
        last_error: GatewayError | None = None
        for position, deployment in enumerate(candidates):
            number = 0
            while True:
                number += 1
                fitted = await plan.fit(deployment)
                verdicts = [await await_me_maybe(v) for v in self.pm.hook.before_attempt(
                    ctx=ctx, deployment=deployment, attempt_number=number)]
                if False in verdicts:
                    break
                attempt = Attempt(deployment)
                ctx.attempts.append(attempt)
                try:
                    # Some deployments cannot stream (the answer is then replayed as one
                    # chunk) or can only stream (the route aggregates): honour both.
                    streaming = deployment.settings.get("streaming", "auto")
                    upstream_stream = stream if streaming == "auto" else streaming == "always"
                    body = prepare_body(fitted, deployment, ctx.hints, stream=upstream_stream)
                    chunks = self.providers.open(deployment, body, stream=upstream_stream, ctx=ctx)
                    try:
                        async with asyncio.timeout(deployment.timeouts.first_byte):
                            first = await anext(chunks)
                            while first is KEEPALIVE:
                                first = await anext(chunks)
                    except StopAsyncIteration:
                        raise UpstreamError(
                            f"{deployment.id}: the provider answered nothing",
                            upstream_status=502, deployment=deployment.id, kind="protocol",
                        ) from None
                    except TimeoutError:
                        aclose = getattr(chunks, "aclose", None)
                        if aclose is not None:
                            await aclose()
                        raise UpstreamError(
                            f"{deployment.id}: no answer within {deployment.timeouts.first_byte:.0f}s",
                            upstream_status=0, deployment=deployment.id, kind="timeout",
                        ) from None
                except GatewayError as exc:
                    error = exc
                else:
                    attempt.first_byte = time.perf_counter()
                    ctx.response_headers["x-clasp-deployment"] = deployment.id
                    names = text_call_names(deployment, request)
                    if names is not None:  # a local model may write its tool calls as text
                        return UpstreamStream(
                            deployment, attempt, [], filter_text_calls(first, chunks, names),
                            closer=getattr(chunks, "aclose", None),
                        )
                    return UpstreamStream(deployment, attempt, [first], chunks)
                attempt.error = error
                attempt.ended = time.perf_counter()
                last_error = error
                log.warning("%s attempt %d on %s failed: %s", ctx.request_id, number, deployment.id, error.message)
                await self._after_attempt(ctx, attempt)
                if isinstance(error, UpstreamError) and is_context_overflow(error):
                    error = last_error = overflow_error(error)
                    if not overflow_retried:  # one more go: a larger window, or trimmed harder
                        overflow_retried = True
                        if await plan.after_overflow(deployment, error, candidates[position + 1 :]) == "retry":
                            continue
                        break
                decision = await await_me_maybe(
                    self.pm.hook.on_error(ctx=ctx, deployment=deployment, error=error, attempt_number=number)
                )
                if isinstance(decision, list):
                    ctx.response_headers.setdefault("x-clasp-degraded", "fallback-response")
                    return self._canned(deployment, decision)
                if isinstance(decision, (int, float)) and not isinstance(decision, bool):
                    await asyncio.sleep(float(decision))
                    continue
                if decision == "fail" or (decision != "next" and not error.retryable):
                    raise error
                break
        error = last_error or OverloadedError(f"no deployment of {ctx.public_model!r} is available right now")
        # Every candidate failed or was skipped: a plugin may still answer (stale
        # cache, canned reply) or replace the error with a clearer one.
        answer = await await_me_maybe(self.pm.hook.on_exhausted(ctx=ctx, request=request, error=error))
        if isinstance(answer, GatewayError):
            raise answer
        if answer:
            ctx.response_headers.setdefault("x-clasp-degraded", "fallback-response")
            return self._canned(None, answer)
        raise error

    def _canned(self, deployment: Deployment | None, chunks: list[Chunk]) -> UpstreamStream:
        dep = deployment or Deployment(id="gateway", provider="gateway", model="gateway", api_base="")
        attempt = Attempt(dep, first_byte=time.perf_counter())
        return UpstreamStream(dep, attempt, list(chunks[:1]), _iterate(list(chunks[1:])))

    async def _after_attempt(self, ctx: RequestContext, attempt: Attempt) -> None:
        for result in self.pm.hook.after_attempt(ctx=ctx, attempt=attempt):
            await await_me_maybe(result)
        dep = attempt.deployment
        event = {
            "kind": "attempt",
            "request_id": ctx.request_id,
            "public_model": ctx.public_model,
            "deployment": dep.id,
            "provider": dep.provider,
            "model": dep.model,
            "ok": attempt.ok,
            "error": getattr(attempt.error, "message", None) if attempt.error else None,
            "upstream_status": getattr(attempt.error, "upstream_status", None) if attempt.error else 200,
            "ms": ((attempt.ended or time.perf_counter()) - attempt.started) * 1000,
            "ttfb_ms": (attempt.first_byte - attempt.started) * 1000 if attempt.first_byte else None,
            "time": time.time(),
        }
        await self._record(ctx, event)

    async def _record(self, ctx: RequestContext, event: dict[str, Any]) -> None:
        for result in self.pm.hook.record(ctx=ctx, event=event):
            try:
                await await_me_maybe(result)
            except Exception:  # a broken recorder must not break the answer
                log.exception("record hook failed for %s", ctx.request_id)

    async def finish(
        self,
        ctx: RequestContext,
        stream: UpstreamStream | None,
        *,
        usage: Usage | None,
        status: int,
        error: Exception | None = None,
        cut: bool = False,
    ) -> None:
        """Close the request: end the attempt, then the ``record`` event (always)."""
        ended = time.perf_counter()
        if stream is not None and stream.attempt.ended is None:
            # (A server-tool loop closes each round's attempt itself when the round ends.)
            attempt = stream.attempt
            attempt.ended = ended
            attempt.usage = usage
            if error is not None:
                attempt.error = error
            if attempt in ctx.attempts:
                await self._after_attempt(ctx, attempt)
        event = self.build_event(ctx, stream.deployment if stream else None, usage, status, error, cut, ended)
        await self._record(ctx, event)
        access_log.info(
            "%s %s model=%s deployment=%s status=%s in=%s out=%s ms=%.1f%s",
            ctx.request_id, ctx.api, ctx.public_model, event["deployment"], status,
            event["usage"]["input_tokens"], event["usage"]["output_tokens"], event["latency_ms"],
            " cut" if cut else "",
        )

    @staticmethod
    def build_event(
        ctx: RequestContext,
        deployment: Deployment | None,
        usage: Usage | None,
        status: int,
        error: Exception | None,
        cut: bool,
        ended: float,
    ) -> dict[str, Any]:
        usage = usage or Usage()
        cost = 0.0
        if deployment is not None:
            info = deployment.info
            cached_rate = info.cache_read_input_token_cost
            cost = (
                usage.input_tokens * info.input_cost_per_token
                + usage.output_tokens * info.output_cost_per_token
                + usage.cache_read_input_tokens * (cached_rate if cached_rate is not None else info.input_cost_per_token)
            )
        first_byte = next((a.first_byte for a in reversed(ctx.attempts) if a.first_byte), None)
        return {
            "kind": "request",
            "request_id": ctx.request_id,
            "api": ctx.api,
            "public_model": ctx.public_model,
            "deployment": deployment.id if deployment else None,
            "provider": deployment.provider if deployment else None,
            "model": deployment.model if deployment else None,
            "key_id": ctx.principal.key_id if ctx.principal else None,
            "team": ctx.principal.team if ctx.principal else None,
            "stream": ctx.client_stream,
            "status": status,
            "error": f"{type(error).__name__}: {getattr(error, 'message', error)}" if error else None,
            "cut": cut,
            "usage": {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cache_read_input_tokens": usage.cache_read_input_tokens,
                "reasoning_tokens": usage.reasoning_tokens,
            },
            "cost_usd": cost,
            "latency_ms": (ended - ctx.started) * 1000,
            "ttfb_ms": (first_byte - ctx.started) * 1000 if first_byte else None,
            "attempts": [
                {
                    "deployment": a.deployment.id,
                    "ok": a.ok,
                    "error": getattr(a.error, "message", None) if a.error else None,
                    "ms": ((a.ended or ended) - a.started) * 1000,
                }
                for a in ctx.attempts
            ],
            "task": ctx.hints.task,
            "time": time.time(),
        }

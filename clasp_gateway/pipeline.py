"""The request lifecycle, each step a hook.

``authenticate`` → classify the request (once: ``ctx.request_class``, ``ctx.traits``)
→ resolve the public model name → ``resolve_route`` (order the candidates) →
``before_call`` (cache hit or refusal) → per candidate:
``before_attempt`` → prepare the body for that provider → call → first chunk →
(on failure ``on_error`` decides: retry, degrade or next candidate) → the caller
streams the rest → :meth:`Gateway.finish` → ``after_attempt`` and ``record``.

A failure can switch deployments only until the stream commits: at the first chunk
that carries something (text, reasoning, a tool call, a finish or usage, see
:func:`commits`), or at a keep-alive after such a preamble (see
:meth:`Gateway._until_commit`). Chunks before it (a role-only preamble) are held and
replayed; after it the choice is final and a failure becomes an in-stream error.

"First answer wins" hooks are called as :func:`~clasp_gateway.plugins.call_first` does
(each implementation awaited in turn), through the hook's
:class:`~clasp_gateway.plugins.HookPlan` (``PluginManager.plan``: implementations
resolved once, not per request). Bookkeeping after an answer (pricing,
``after_attempt``, ``record``, ``on_stream_chunk``) can never fail that answer: a
failure is logged once per request with its id and counted in
:attr:`Gateway.hook_failures`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import logging
import math
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from . import registrations
from .classes import features
from .config import Config, ModelRoute
from .errors import AuthenticationError, GatewayError, NotFoundError, OverloadedError, UpstreamError
from .handover import Handover
from .hedging import HEDGED, Launch, close_stream, launch_of, race
from .plugins import PluginManager
from .policy import admit, check_expiry, inside_regions
from .shaping.context import ContextManager, ContextPlan, is_context_overflow, overflow_error
from .shaping.long_answers import CONTINUED_KEY, PRICED_BY_ATTEMPTS, LongAnswers, with_room
from .shaping.server_tools import RoundServices, ServerTools
from .shaping.textcalls import check_config as check_text_calls
from .shaping.textcalls import filter_text_calls, text_call_names
from .shell.access import REQUEST_EVENT
from .shell.guard import AuthThrottle
from .shell.served import served_models
from .state import StateBackend, state_from_config
from .storage import Database, StorageSettings, parse_storage_settings
from .storage.migrations import check_registrations
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
from .wire.permissions import PermissionChecker
from .wire.providers import Providers
from .wire.quirks import prepare_body
from .wire.reads import ReadLimits

log = logging.getLogger("clasp.pipeline")

_FAILED_HOOKS = "clasp.failed_hooks"
"""``ctx.state`` key: the (hook, plugin) failures already logged for this request."""

_EMPTY: tuple[Any, ...] = (None, "", [], {})

# The order in which the core passes each hook's arguments (its HookPlan's argnames).
_AUTHENTICATE = ("api_key", "headers", "config", "path")
_RESOLVE_ROUTE = ("ctx", "request", "candidates")
_BEFORE_CALL = ("ctx", "request")
_PER_ATTEMPT = ("ctx", "deployment", "attempt_number")
_ON_ERROR = ("ctx", "deployment", "error", "attempt_number")
_ON_EXHAUSTED = ("ctx", "request", "error")
_ON_STREAM_CHUNK = ("ctx", "chunk")
_SIDE_CALL = ("ctx", "deployment", "purpose")
_AFTER_ATTEMPT = ("ctx", "attempt")
_RECORD = ("ctx", "event")


async def _iterate(chunks: list[Chunk]) -> AsyncIterator[Chunk]:
    for chunk in chunks:
        yield chunk


async def _replay(held: list[Chunk], rest: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    """``held`` chunks, then the rest of the upstream stream (closed with this one)."""
    try:
        for chunk in held:
            yield chunk
        async for chunk in rest:
            yield chunk
    finally:
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()


def commits(chunk: Chunk) -> bool:
    """Whether ``chunk`` commits the stream to its deployment.

    It does when it carries anything a client would see or keep: text, reasoning, a
    tool call (any non-empty delta field but ``role``), a ``finish_reason``, or usage.
    A role-only (or empty) preamble does not: a provider that sends one and then
    breaks has said nothing yet, so the request may still go to the next candidate.
    A chunk without ``choices`` that is not canonical (a provider adapter's own
    events, e.g. an Anthropic pass-through) commits at once."""
    if chunk.get("usage"):
        return True
    choices = chunk.get("choices")
    if choices is None:
        return "usage" not in chunk  # ``{"usage": null}`` alone is an empty canonical chunk
    for choice in choices:
        if not isinstance(choice, dict):
            return True
        if choice.get("finish_reason"):
            return True
        delta = choice.get("delta")
        if delta is None:
            delta = choice.get("message")
        if not isinstance(delta, dict):
            if delta is not None:
                return True
            continue
        for key, value in delta.items():
            if key != "role" and value not in _EMPTY:
                return True
    return False


def request_cost(deployment: Deployment, usage: Usage) -> float:
    """What ``usage`` cost on ``deployment``, in USD.

    A cost the provider reported (:attr:`Usage.cost_usd`: OpenRouter's ``usage.cost``,
    LiteLLM's ``response_cost``) wins. Otherwise the deployment's prices
    (:class:`ModelInfo`: LiteLLM's price map, overridden per deployment in clasp.yaml):
    input and output tokens at their rates, cache reads at the cache-read rate and
    cache writes (``cache_creation_input_tokens``) at the cache-write rate, each
    falling back to the input rate when the map has none.

    Raises (``TypeError``, ``ValueError``) when a price is not a finite number: the
    caller records the request without a cost rather than a wrong one."""
    if usage.cost_usd is not None:
        reported = usage.cost_usd
        if isinstance(reported, (int, float)) and not isinstance(reported, bool) and math.isfinite(reported):
            return float(reported)
    info = deployment.info
    read_rate = info.cache_read_input_token_cost
    write_rate = info.cache_creation_input_token_cost
    cost = (
        usage.input_tokens * info.input_cost_per_token
        + usage.output_tokens * info.output_cost_per_token
        + usage.cache_read_input_tokens * (read_rate if read_rate is not None else info.input_cost_per_token)
        + usage.cache_creation_input_tokens * (write_rate if write_rate is not None else info.input_cost_per_token)
    )
    if isinstance(cost, bool) or not isinstance(cost, (int, float)):
        raise TypeError(f"prices of {deployment.id} give a {type(cost).__name__}, not a number")
    if not math.isfinite(cost):
        raise ValueError(f"prices of {deployment.id} give {cost}")
    return float(cost)


def retries_and_fallbacks(attempts: list[Attempt]) -> tuple[int, int]:
    """``(retries, fallbacks)`` of a request: an attempt on the same deployment as the
    one before it is a retry, one on another deployment a fallback."""
    retries = fallbacks = 0
    previous: str | None = None
    for attempt in attempts:
        current = attempt.deployment.id
        if previous is not None:
            if current == previous:
                retries += 1
            else:
                fallbacks += 1
        previous = current
    return retries, fallbacks


def new_request_id() -> str:
    """A request's id: ``req_``, the milliseconds since the epoch (12 hex digits), then
    64 random bits (16 hex digits). Ids made later sort after earlier ones (to the
    millisecond), like UUIDv7's: the ledger's and analytics' tables are keyed by the
    request id, and an ordered key is appended to the end of its B-tree instead of
    landing on a random page of it. With random ids, each row of a batch dirtied its own
    page of each key index (on SQLite a page written to the WAL and again at the
    checkpoint): on a ledger of 300,000 requests the SQLite writer spent 34 µs of CPU
    per row, against 11 µs with ordered ids (``bench/ledger_bench.py --existing
    300000``, ``--random-ids``). The random part keeps ids from any number of
    processes distinct (two ids of the same millisecond collide with probability
    2^-64); an id is not a secret (what it names is checked against the caller's key
    wherever it is used)."""
    return f"req_{time.time_ns() // 1_000_000:012x}{os.urandom(8).hex()}"


_CHAIN_LIMIT = 8
"""Exceptions followed down a failure's ``__cause__``/``__context__`` chain."""


def _drop_tracebacks(ctx: RequestContext, error: Exception | None) -> None:
    """Once a request is over, the tracebacks of its gateway errors (the failed
    attempts' and the request's own, with the exceptions they came from). A
    traceback holds the frames the error passed through, which hold the request's
    context, which holds the attempt, which holds the error: a reference cycle that
    kept the whole request (its parsed body, its state) alive until the cyclic
    collector found it. They are no longer needed: gateway errors are logged by
    their message when they happen. An unexpected exception (a bug) keeps its
    traceback for the error boundary's log."""
    for attempt in ctx.attempts:
        _drop_traceback(attempt.error)
    _drop_traceback(error)


def _drop_traceback(error: BaseException | None) -> None:
    if not isinstance(error, GatewayError):
        return
    link: BaseException | None = error
    for _ in range(_CHAIN_LIMIT):
        if link is None:
            break
        link.__traceback__ = None
        link = link.__cause__ or link.__context__


class Gateway:
    """One configured gateway: config, plugins, providers and the call pipeline."""

    def __init__(self, config: Config, pm: PluginManager) -> None:
        self.config = config
        self.pm = pm
        extra = {r.name: r.adapter for r in registrations.providers(pm)}
        self.providers = Providers(extra, limits=ReadLimits.of(config.server))
        self.strategies = {r.name: r.strategy for r in registrations.routing_strategies(pm)}
        self.cache_backends = {r.name: r for r in registrations.cache_backends(pm)}
        """Response-cache backends by name (``register_cache_backends``), for a cache plugin."""
        # Request classes (classes.py): built-in ones with ``classes:``, plus plugins'.
        self.classifier = registrations.request_classifier(pm, dataclasses.asdict(config.classes))
        self._exact: dict[str, ModelRoute] = {}
        self._globs: list[ModelRoute] = []
        for route in config.models:
            if any(ch in route.pattern for ch in "*?["):
                self._globs.append(route)
            else:
                self._exact.setdefault(route.pattern, route)
        self._resolved: dict[str, ModelRoute | None] = {}
        self._patterns = tuple(route.pattern for route in config.models)
        self.chunk_hook = pm.has_impls("on_stream_chunk")
        self.hook_failures: Counter[str] = Counter()
        """Failures of bookkeeping steps that were isolated from the answer, by hook
        name (``after_attempt``, ``record``, ``on_stream_chunk``, ``pricing``,
        ``build_event``, ``finish``): for a metrics plugin to export."""
        # Context windows (context.py) and text-written tool calls (textcalls.py):
        # settings validated here, at start-up.
        self.context = ContextManager(config, self.resolve_model, open_upstream=self.providers.open, record=self.record,
                                      may_send=lambda ctx, dep: self.may_side_call(ctx, dep, "context_summary"))
        check_text_calls(config)
        # None unless some key, team or default enables a server tool: then no cost.
        self.server_tools = ServerTools.build(registrations.tools(pm), config)
        # None unless ``long_answers.max_continuations`` > 0 (long_answers.py): then no cost.
        self.long_answers = LongAnswers.build(config)
        # Failed key attempts per client address (guard.py).
        self.guard = AuthThrottle(config.server, source=config.source)
        # Shared state (breakers, limits, caches): no I/O until start(); see state/.
        self.state: StateBackend = state_from_config(config)
        self.owns_state = True
        """Whether :meth:`close` closes ``state``: a reloaded configuration adopts the
        running backend (``shell/reload.py``) and the replaced one leaves it open."""
        self.handover = Handover()
        """Objects plugins keep across reloads (``handover.py``): a reloaded configuration
        is given the running one's (``shell/reload.py``)."""
        # Credentials without access to their model, found by probes off the hot path
        # (permissions.py): such keys leave rotation, such deployments are skipped.
        self.permissions = PermissionChecker(config, self.providers)
        # Records (ledger, keys, analytics): a database only when a plugin registered
        # migrations or asks for one (``database``); SQLAlchemy is not imported otherwise.
        self.storage: StorageSettings = parse_storage_settings(config)
        self.migrations = registrations.migrations(pm)
        check_registrations(self.migrations)
        self._database: Database | None = Database(self.storage, self.migrations) if self.migrations else None
        self.clock: Callable[[], float] = time.time
        """Wall-clock seconds: when keys expire (tests move a ``FakeClock`` instead)."""
        self.ready = False

    @property
    def database(self) -> Database:
        """The gateway's :class:`~clasp_gateway.storage.Database` (``storage:``),
        created on first use when no plugin registered migrations: a plugin asks for
        it in its ``startup`` hook and the gateway opens it in :meth:`start` (asked
        later, it connects on first use). Disposed of in :meth:`close`."""
        if self._database is None:
            self._database = Database(self.storage, self.migrations)
        return self._database

    @property
    def has_database(self) -> bool:
        """Whether a database was registered or asked for (without creating one)."""
        return self._database is not None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.state.open()
        if self._database is not None:  # connect, and upgrade every branch (storage.auto_migrate)
            try:
                await self._database.open()
            except BaseException:  # the app will not serve: release what start() opened
                await self._database.dispose()
                if self.owns_state:
                    await self.state.close()
                raise
        await self.providers.start(self.config.deployments())
        self.permissions.start()  # in the background: serving does not wait for the probes
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        await self.permissions.close()
        await self.providers.close()
        if self._database is not None:
            await self._database.dispose()
        if self.owns_state:
            await self.state.close()

    # --- steps -------------------------------------------------------------------------------

    async def authenticate(self, headers: dict[str, str], *, client: str | None = None, path: str = "") -> Principal:
        """Who is calling. ``client``: the connection's peer address; with it, an
        address that keeps failing is slowed down (429) before its key is looked at
        (``guard.py``). Routes pass it; without it nothing is throttled. ``path``: the
        request's path, for plugins that accept a credential on some routes only."""
        address = self.guard.address(client, headers)
        self.guard.admit(address)
        try:
            principal = await self._identify(headers, path)
            check_expiry(principal, self.clock())  # whichever plugin authenticated it
            return principal
        except AuthenticationError:
            self.guard.failed(address)
            raise

    async def _identify(self, headers: dict[str, str], path: str = "") -> Principal:
        """The principal for ``x-api-key`` or ``Authorization: Bearer`` (the
        ``authenticate`` hook decides)."""
        key = headers.get("x-api-key")
        if not key:
            auth = headers.get("authorization", "")
            if auth[:7].lower() == "bearer ":
                key = auth[7:].strip()
        principal = await self.pm.plan("authenticate", _AUTHENTICATE).first(key or None, headers, self.config, path)
        if isinstance(principal, Principal):
            return principal
        if principal is not None:
            log.warning("an authenticate hook answered a %s, not a Principal: request refused", type(principal).__name__)
        raise AuthenticationError(
            "invalid API key for this gateway" if key
            else "missing API key: send it in the x-api-key header or as Authorization: Bearer <key>"
        )

    def resolve_model(self, name: str) -> ModelRoute:
        """The configured route for a public model name (exact match, then globs)."""
        if name in self._resolved:
            route = self._resolved[name]
        else:
            route = self._exact.get(name)
            if route is None:
                route = next((r for r in self._globs if fnmatch.fnmatchcase(name, r.pattern)), None)
            if len(self._resolved) < 10_000 and len(name) <= 256:  # bounded: names come from clients
                self._resolved[name] = route
        if route is None:
            known = ", ".join(sorted(r.pattern for r in self.config.models)) or "none configured"
            raise NotFoundError(f"model {name!r} is not served by this gateway (models: {known})")
        return route

    def public_models(self) -> list[str]:
        """The concrete names ``/v1/models`` lists: exact route names and, for glob
        routes, the Claude Code names they serve (``served.py``); never a glob."""
        return [m.id for m in served_models(self.config)]

    def classify(self, ctx: RequestContext, request: CanonicalRequest) -> None:
        """Set ``ctx.request_class`` and ``ctx.traits`` from the canonical request and
        ``ctx.hints``, unless they are set already: a request is classified once, so
        later rounds (server tools) and side calls (context summaries) never change
        what analytics, cache policy and routing read. Never raises (a plugin
        predicate that fails counts as no match)."""
        if not ctx.request_class:
            ctx.request_class, ctx.traits = self.classifier.classify(features(request, ctx.hints))

    async def open(self, ctx: RequestContext, request: CanonicalRequest, *, stream: bool) -> UpstreamStream:
        """Find a deployment that answers and return its stream, first chunk in hand
        (with server tools: the stream of the tool loop, see ``server_tools.py``).

        Both APIs come here with the canonical request, so this is where the core
        checks the key may use the model and sets ``ctx.user``/``ctx.tags``
        (``policy.admit``: before any plugin's ``resolve_route`` or ``before_call``, so
        no cache can answer a refused request), then classifies it (:meth:`classify`)."""
        admit(ctx, request, lambda name: self.resolve_model(name).pattern, self._patterns)
        self.classify(ctx, request)
        tools = self.server_tools.for_request(ctx, request) if self.server_tools is not None else None
        if tools:
            assert self.server_tools is not None
            services = RoundServices(self._open, self.after_attempt, self.record)
            upstream = await self.server_tools.open(services, ctx, request, tools, stream=stream)
        else:
            upstream = await self._open(ctx, request, stream=stream)
        if self.long_answers is not None:  # a text answer cut short is continued (long_answers.py)
            services = RoundServices(self._open, self.after_attempt, self.record)
            upstream = self.long_answers.wrap(services, ctx, request, upstream, stream=stream)
        return upstream

    async def _open(
        self, ctx: RequestContext, request: CanonicalRequest, *, stream: bool, continuation: bool = False
    ) -> UpstreamStream:
        """One upstream round. ``continuation``: a later round of a server-tool loop,
        for which ``before_call`` (called once per request) is not called again, and
        ``before_round`` is."""
        route = self.resolve_model(ctx.public_model)
        candidates = list(route.deployments)
        ordered = await self.pm.plan("resolve_route", _RESOLVE_ROUTE).first(ctx, request, candidates)
        if ordered is not None:
            candidates = list(ordered)
        # Residency, whatever ordered the candidates: never outside the key's regions.
        # (A cut tool call retried for a long answer: only deployments with room.)
        candidates = with_room(ctx, inside_regions(ctx, candidates))
        if not continuation:
            chunks = await self.pm.plan("before_call", _BEFORE_CALL).first(ctx, request)
            if chunks:
                return self._canned(candidates[0] if candidates else None, chunks)
        else:  # what the gateway added to the conversation (server tools' results) is seen too
            await self.pm.plan("before_round", _BEFORE_CALL).each(ctx, request)

        # Fit the context window: maybe reorder for a larger window; bodies per candidate.
        plan = await self.context.plan(ctx, request, route, candidates, as_received=not continuation)
        candidates = inside_regions(ctx, plan.candidates)  # context fallbacks are candidates too
        overflow_retried = False
        last_error: GatewayError | None = None
        ctx.state.pop(HEDGED, None)  # hedges are per round (a server-tool loop has several)
        for position, deployment in enumerate(candidates):
            if deployment.id in ctx.state.get(HEDGED, ()):
                continue  # already tried beside an earlier candidate (a hedge)
            if self.permissions.blocked:  # empty unless no credential of some deployment has access
                skipped = self.permissions.unavailable(deployment)
                if skipped is not None:  # skipped like an open breaker: no upstream call
                    last_error = skipped
                    await self.record(ctx, self.permissions.skip_event(ctx, deployment, skipped))
                    continue
            number = 0
            while True:
                number += 1
                fitted = await plan.fit(deployment)
                verdicts = await self.pm.plan("before_attempt", _PER_ATTEMPT).each(ctx, deployment, number)
                if False in verdicts:
                    break
                attempt = Attempt(deployment)
                ctx.attempts.append(attempt)
                try:
                    launch = self._launch(ctx, deployment, attempt, fitted, stream)
                    chunks = launch.chunks
                    delay = await self.pm.plan("hedge_delay", _PER_ATTEMPT).first(ctx, deployment, number
                                                                              ) if number == 1 and position + 1 < len(candidates) else None
                    if delay is None:
                        held = await self._commit(deployment, chunks)
                    else:  # hedged first byte (hedging.py): the first of two attempts to commit
                        won = await race(self, ctx, launch, float(delay), candidates[position + 1 :],
                                         lambda dep: self._hedge_launch(ctx, plan, dep, stream), self._commit)
                        deployment, attempt, chunks, held = won.deployment, won.attempt, won.chunks, won.held or []
                except GatewayError as exc:
                    error = exc
                else:
                    attempt.first_byte = time.perf_counter()
                    ctx.response_headers["x-clasp-deployment"] = deployment.id
                    names = text_call_names(deployment, request)
                    if names is not None:  # a local model may write its tool calls as text
                        return UpstreamStream(
                            deployment, attempt, [], filter_text_calls(held[0], _replay(held[1:], chunks), names),
                            closer=getattr(chunks, "aclose", None),
                        )
                    return UpstreamStream(deployment, attempt, held, chunks)
                attempt.error = error
                attempt.ended = time.perf_counter()
                last_error = error
                log.warning("%s attempt %d on %s failed: %s", ctx.request_id, number, deployment.id, error.message)
                await self.after_attempt(ctx, attempt)
                if isinstance(error, UpstreamError) and is_context_overflow(error):
                    error = last_error = overflow_error(error)
                    if not overflow_retried:  # one more go: a larger window, or trimmed harder
                        overflow_retried = True
                        if await plan.after_overflow(deployment, error, candidates[position + 1 :]) == "retry":
                            continue
                        break
                decision = await self.pm.plan("on_error", _ON_ERROR).first(ctx, deployment, error, number)
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
        answer = await self.pm.plan("on_exhausted", _ON_EXHAUSTED).first(ctx, request, error)
        if isinstance(answer, GatewayError):
            raise answer
        if answer:
            ctx.response_headers.setdefault("x-clasp-degraded", "fallback-response")
            return self._canned(None, answer)
        raise error

    def _launch(
        self, ctx: RequestContext, deployment: Deployment, attempt: Attempt, fitted: CanonicalRequest, stream: bool
    ) -> Launch:
        """Open the upstream stream of ``attempt`` (nothing is read yet)."""
        # Some deployments cannot stream (the answer is then replayed as one
        # chunk) or can only stream (the route aggregates): honour both.
        streaming = deployment.settings.get("streaming", "auto")
        upstream_stream = stream if streaming == "auto" else streaming == "always"
        body = prepare_body(fitted, deployment, ctx.hints, stream=upstream_stream)
        return launch_of(deployment, attempt, body, self.providers.open(deployment, body, stream=upstream_stream, ctx=ctx))

    async def _hedge_launch(
        self, ctx: RequestContext, plan: ContextPlan, deployment: Deployment, stream: bool
    ) -> Launch | None:
        """Open a hedge attempt on ``deployment`` (its checks passed: hedging.py);
        ``None`` when it cannot even be opened (its failure is recorded)."""
        attempt = Attempt(deployment)
        ctx.attempts.append(attempt)
        try:
            return self._launch(ctx, deployment, attempt, await plan.fit(deployment), stream)
        except GatewayError as exc:
            attempt.error, attempt.ended = exc, time.perf_counter()
            await self.after_attempt(ctx, attempt)
            return None

    async def _commit(self, deployment: Deployment, chunks: AsyncIterator[Chunk]) -> list[Chunk]:
        """:meth:`_until_commit` within the deployment's first-byte timeout (which
        covers reaching the commit point); on timeout the stream is closed."""
        try:
            async with asyncio.timeout(deployment.timeouts.first_byte):
                return await self._until_commit(deployment, chunks)
        except TimeoutError:
            await close_stream(chunks)
            raise UpstreamError(
                f"{deployment.id}: no answer within {deployment.timeouts.first_byte:.0f}s",
                upstream_status=0, deployment=deployment.id, kind="timeout",
            ) from None

    async def _until_commit(self, deployment: Deployment, chunks: AsyncIterator[Chunk]) -> list[Chunk]:
        """Read ``chunks`` up to the one that commits the stream (:func:`commits`) and
        return it with the preamble before it. A stream that ends or breaks before
        that has said nothing: the caller may fail over.

        A keep-alive commits too once a preamble is held: the upstream started its
        answer and is silent but alive (a model thinking), and the client must hear
        from the gateway (pings) rather than nothing for minutes, which proxies and
        load balancers cut. Garbage, a cut or an error right after a role chunk
        comes long before the first keep-alive. Keep-alives with nothing held are
        skipped, as before any answer."""
        held: list[Chunk] = []
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                raise UpstreamError(
                    f"{deployment.id}: the provider answered nothing"
                    + (f" (the stream ended after {len(held)} empty chunk(s))" if held else ""),
                    upstream_status=502, deployment=deployment.id, kind="protocol",
                ) from None
            if chunk is KEEPALIVE:
                if held:
                    held.append(chunk)
                    return held
                continue
            held.append(chunk)
            if commits(chunk):
                return held

    def _canned(self, deployment: Deployment | None, chunks: list[Chunk]) -> UpstreamStream:
        dep = deployment or Deployment(id="gateway", provider="gateway", model="gateway", api_base="")
        attempt = Attempt(dep, first_byte=time.perf_counter())
        return UpstreamStream(dep, attempt, list(chunks[:1]), _iterate(list(chunks[1:])))

    # --- bookkeeping: never fails an answer --------------------------------------------------

    def hook_failed(self, hook: str, ctx: RequestContext | None, plugin: str, error: Exception) -> None:
        """Count a bookkeeping failure under ``hook`` and log it, once per request and
        plugin, with the request id and the traceback (the log only: never the client)."""
        self.hook_failures[hook] += 1
        request_id = ctx.request_id if ctx is not None else "-"
        if ctx is not None:
            seen: set[tuple[str, str]] = ctx.state.setdefault(_FAILED_HOOKS, set())
            if (hook, plugin) in seen:
                return
            seen.add((hook, plugin))
        log.error(
            "%s: %s failed in %s (the answer goes on; counted in hook_failures): %s: %s",
            request_id, hook, plugin, type(error).__name__, error, exc_info=error,
        )

    def _reporter(self, hook: str, ctx: RequestContext) -> Any:
        def report(plugin: str, error: Exception) -> None:
            self.hook_failed(hook, ctx, plugin, error)

        return report

    def on_stream_chunk(self, ctx: RequestContext, chunk: Chunk) -> None:
        """Hand ``chunk`` to every ``on_stream_chunk`` implementation; one that raises is
        counted and logged, and the stream goes on. Call it only when
        :attr:`chunk_hook` is true (no cost per chunk otherwise)."""
        self.pm.plan("on_stream_chunk", _ON_STREAM_CHUNK).notify(self._reporter("on_stream_chunk", ctx), ctx, chunk)

    def chunk_notifier(self, ctx: RequestContext) -> Callable[[RequestContext, Chunk], None]:
        """:meth:`on_stream_chunk` for one stream, with the implementations resolved
        once (:func:`~clasp_gateway.plugins.notifier`): a route calls it per chunk for
        a fraction of the dispatch cost. Same isolation: a failure is counted, logged,
        and the stream goes on."""
        return self.pm.plan("on_stream_chunk", _ON_STREAM_CHUNK).notifier(self._reporter("on_stream_chunk", ctx))

    async def may_side_call(self, ctx: RequestContext, deployment: Deployment, purpose: str) -> bool:
        """Whether this request's conversation may go to ``deployment`` on the gateway's
        (or a plugin's) own account, not as an attempt: ``purpose`` ``"context_summary"``,
        ``"shadow"`` (an experiment's copy)... No ``before_side_call`` said ``False``."""
        verdicts = await self.pm.plan("before_side_call", _SIDE_CALL).each(ctx, deployment, purpose)
        return False not in verdicts

    async def after_attempt(self, ctx: RequestContext, attempt: Attempt) -> None:
        """An attempt ended: the ``after_attempt`` hook, then its ``kind: "attempt"``
        event. Never raises (failures are counted in :attr:`hook_failures`)."""
        plan = self.pm.plan("after_attempt", _AFTER_ATTEMPT)
        if plan:
            await plan.each(ctx, attempt, on_failure=self._reporter("after_attempt", ctx))
        try:
            dep = attempt.deployment
            usage = attempt.usage or Usage()
            cost: float | None = 0.0
            if attempt.usage is not None:
                try:
                    cost = request_cost(dep, attempt.usage)
                except Exception:  # counted once, by the request event's pricing (finish)
                    cost = None
            now, wall = time.perf_counter(), time.time()
            event = {
                "kind": "attempt",
                "request_id": ctx.request_id,
                "attempt": next((i for i, a in enumerate(ctx.attempts, 1) if a is attempt), len(ctx.attempts) + 1),
                "public_model": ctx.public_model,
                "request_class": ctx.request_class,
                "deployment": dep.id,
                "provider": dep.provider,
                "model": dep.model,
                "region": dep.settings.get("region"),
                "ok": attempt.ok,
                "error": getattr(attempt.error, "message", None) if attempt.error else None,
                "upstream_status": getattr(attempt.error, "upstream_status", None) if attempt.error else 200,
                "ms": ((attempt.ended or now) - attempt.started) * 1000,
                "ttfb_ms": (attempt.first_byte - attempt.started) * 1000 if attempt.first_byte else None,
                "usage": {
                    "input_tokens": usage.input_tokens,
                    "output_tokens": usage.output_tokens,
                    "cache_read_input_tokens": usage.cache_read_input_tokens,
                    "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                },
                "cost_usd": cost,
                "started_at": wall - (now - attempt.started),
                "time": wall,
            }
        except Exception as exc:
            self.hook_failed("build_event", ctx, "clasp_gateway", exc)
            return
        await self.record(ctx, event)

    async def record(self, ctx: RequestContext, event: dict[str, Any]) -> None:
        """Send ``event`` to every ``record`` implementation; one that raises is counted
        and logged, the others still get it. Never raises."""
        plan = self.pm.plan("record", _RECORD)
        if plan:
            await plan.each(ctx, event, on_failure=self._reporter("record", ctx))

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
        """Close the request: end the attempt (``after_attempt``), then the request's
        ``record`` event, once. Routes call it for every request that reached the
        pipeline (``stream`` is ``None`` when no deployment answered).

        Never raises: it runs after the answer was served (or while its last bytes
        go out), and bookkeeping must not turn a served answer into an error."""
        if REQUEST_EVENT in ctx.state:
            return  # already closed (one request event per request)
        try:
            ended = time.perf_counter()
            if stream is not None and stream.attempt.ended is None:
                # (A server-tool loop closes each round's attempt itself when the round ends.)
                attempt = stream.attempt
                attempt.ended = ended
                attempt.usage = usage
                if error is not None:
                    attempt.error = error
                if attempt in ctx.attempts:
                    await self.after_attempt(ctx, attempt)
            deployment = stream.deployment if stream is not None else None
            if ctx.cache_hit is not None:
                usage = Usage()  # a cached answer spent nothing upstream (saved: ctx.saved_usd)
            cost: float | None = 0.0
            if deployment is not None and usage is not None:
                try:
                    if PRICED_BY_ATTEMPTS in ctx.state:  # parts on several deployments (long_answers.py)
                        cost = sum(request_cost(a.deployment, a.usage) for a in ctx.attempts if a.usage is not None)
                    else:
                        cost = request_cost(deployment, usage)
                except Exception as exc:
                    self.hook_failed("pricing", ctx, "clasp_gateway", exc)
                    cost = None
            try:
                event = self.build_event(ctx, deployment, usage, status, error, cut, ended, cost=cost)
            except Exception as exc:
                self.hook_failed("build_event", ctx, "clasp_gateway", exc)
                event = {"kind": "request", "request_id": ctx.request_id, "api": ctx.api,
                         "public_model": ctx.public_model, "request_class": ctx.request_class,
                         "status": status, "cut": cut, "cost_usd": None}
            ctx.state[REQUEST_EVENT] = event
            await self.record(ctx, event)
        except Exception as exc:  # a bug here must not fail a served answer either
            self.hook_failed("finish", ctx, "clasp_gateway", exc)
        finally:
            _drop_tracebacks(ctx, error)

    @staticmethod
    def build_event(
        ctx: RequestContext,
        deployment: Deployment | None,
        usage: Usage | None,
        status: int,
        error: Exception | None,
        cut: bool,
        ended: float,
        *,
        cost: float | None,
    ) -> dict[str, Any]:
        """The ``kind: "request"`` event (its fields: the ``record`` hook's docstring).
        ``cost``: from :func:`request_cost`, ``None`` when the deployment's prices could
        not be applied."""
        usage = usage or Usage()
        first_byte = next((a.first_byte for a in reversed(ctx.attempts) if a.first_byte), None)
        principal = ctx.principal
        retries, fallbacks = retries_and_fallbacks(ctx.attempts)
        wall = time.time()
        return {
            "kind": "request",
            "request_id": ctx.request_id,
            "api": ctx.api,
            "public_model": ctx.public_model,
            "deployment": deployment.id if deployment else None,
            "provider": deployment.provider if deployment else None,
            "model": deployment.model if deployment else None,
            "region": deployment.settings.get("region") if deployment else None,
            "key_id": principal.key_id if principal else None,
            "key_name": principal.name if principal else None,
            "team": principal.team if principal else None,
            "project": principal.project if principal else None,
            "user": ctx.user,
            "tags": dict(ctx.tags),
            "stream": ctx.client_stream,
            "status": status,
            "error": f"{type(error).__name__}: {getattr(error, 'message', error)}" if error else None,
            "cut": cut,
            "usage": {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cache_read_input_tokens": usage.cache_read_input_tokens,
                "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                "reasoning_tokens": usage.reasoning_tokens,
            },
            "cost_usd": cost,
            "cache_hit": ctx.cache_hit,
            "saved_usd": ctx.saved_usd,
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
            "retries": retries,
            "fallbacks": fallbacks,
            "request_class": ctx.request_class,
            "traits": sorted(ctx.traits),
            "continued": ctx.state.get(CONTINUED_KEY, 0),
            "started_at": wall - (time.perf_counter() - ctx.started),
            "time": wall,
        }

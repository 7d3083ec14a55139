"""The plan for one request: which candidate first, and the body each one gets.

:class:`ContextManager` (one per gateway: settings, token and trim caches, the
summariser) makes a :class:`ContextPlan` per request; the pipeline asks the plan
for each candidate's body (:meth:`ContextPlan.fit`) and, after an upstream
overflow, for the one extra go (:meth:`ContextPlan.after_overflow`)."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from ...config import Config, ModelRoute
from ...errors import UpstreamError
from ...policy import region_allowed
from ...types import CanonicalRequest, Deployment, RequestContext
from ..tokens import encoding_for_model, message_tokens
from .groups import INSTRUCTION_ROLES, MAX_RUNS, Boundary, keep_messages, plan_trim, role
from .measure import (
    CHARS_PER_TOKEN,
    DEFAULT_RESERVE,
    Measure,
    TokenCache,
    answer_reserve,
    encoding_or_estimate,
    estimate_tokens,
    input_budget,
    measure,
)
from .overflow import overflow_numbers
from .settings import ContextSettings, load_settings
from .summary import SUMMARY_HEADER, MaySend, Opener, Recorder, Summarizer

log = logging.getLogger("clasp.context")

EXACT_FROM = 0.7
"""Count exactly once the estimate reaches this fraction of a budget."""

OVERFLOW_SHRINK = 0.75
"""After an upstream overflow with nothing to learn from the message: aim this low."""

THREAD_FROM = 1_000
"""Messages from which the estimate and the trim run in a worker thread (a few ms of
CPU each, growing with the count), so other requests are not stalled meanwhile."""
_BOUNDARY_CACHE_SIZE = 2_048


async def _work(size: int, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``, in a worker thread when ``size`` (messages) is large."""
    if size > THREAD_FROM:
        return await asyncio.to_thread(function, *args)
    return function(*args)


class ContextManager:
    """Context-window fitting for one gateway: settings, caches, the summariser."""

    def __init__(
        self,
        config: Config,
        resolve: Callable[[str], ModelRoute],
        *,
        open_upstream: Opener,
        record: Recorder,
        may_send: MaySend | None = None,
    ) -> None:
        self._settings = load_settings(config, resolve)
        self._default = ContextSettings()
        self.summarizer = Summarizer(open_upstream, record, may_send)
        self.tokens = TokenCache()
        self._boundaries: OrderedDict[bytes, Boundary] = OrderedDict()

    def settings_for(self, route: ModelRoute) -> ContextSettings:
        return self._settings.get(route.pattern, self._default)

    async def plan(
        self,
        ctx: RequestContext,
        request: CanonicalRequest,
        route: ModelRoute,
        candidates: list[Deployment],
        *,
        as_received: bool = True,
    ) -> ContextPlan:
        """The plan for one request; ``plan.candidates`` is the order to try.

        ``as_received``: ``request`` is what the client sent (not a later round that
        grew it), so the client's ``content-length`` bounds its size.
        """
        raw_size = None
        if as_received and "content-encoding" not in ctx.headers:
            length = ctx.headers.get("content-length")
            raw_size = int(length) if length and length.isdigit() else None
        plan = ContextPlan(self, self.settings_for(route), ctx, request, candidates, raw_size=raw_size)
        await plan.arrange()
        return plan

    # -- boundary cache (event loop only) --

    def remembered(self, chain: list[bytes]) -> tuple[int, Boundary] | None:
        """The latest remembered trim whose conversation prefix this one shares."""
        boundaries = self._boundaries
        for i in range(len(chain) - 1, -1, -1):
            found = boundaries.get(chain[i])
            if found is not None:
                boundaries.move_to_end(chain[i])
                return i, found
        return None

    def remember(self, key: bytes, boundary: Boundary) -> None:
        if len(boundary.runs) > MAX_RUNS:
            return
        self._boundaries[key] = boundary
        self._boundaries.move_to_end(key)
        while len(self._boundaries) > _BOUNDARY_CACHE_SIZE:
            self._boundaries.popitem(last=False)


class ContextPlan:
    """Fitting one request: the order of candidates and the body for each."""

    __slots__ = (
        "manager", "settings", "ctx", "request", "candidates",
        "_bound", "_estimate", "_first", "_rerouted", "_measures", "_bodies", "_overrides", "_sent",
        "_budgets", "_fits",
    )

    def __init__(
        self,
        manager: ContextManager,
        settings: ContextSettings,
        ctx: RequestContext,
        request: CanonicalRequest,
        candidates: list[Deployment],
        *,
        raw_size: int | None = None,
    ) -> None:
        self.manager = manager
        self.settings = settings
        self.ctx = ctx
        self.request = request
        self.candidates = candidates
        self._first = candidates[0] if candidates else None
        self._rerouted: Deployment | None = None
        self._measures: dict[str, Measure] = {}
        self._bodies: dict[str, tuple[CanonicalRequest, str]] = {}
        self._overrides: dict[str, int] = {}
        self._sent: dict[str, int] = {}  # deployment id -> tokens of the body sent, when counted
        # The client's body size bounds the text it carries: far below a window, that
        # one division is the whole cost of this module.
        self._bound = int(raw_size / CHARS_PER_TOKEN) if raw_size else None
        self._budgets: dict[str, tuple[int, int, int] | None] = {}
        self._fits: dict[str, bool | None] = {}
        self._estimate: int | None = None

    @property
    def estimate(self) -> int:
        """:func:`estimate_tokens` of the request (computed on first use)."""
        if self._estimate is None:
            self._estimate = estimate_tokens(self.request)
        return self._estimate

    # -- budgets --

    def _requested(self) -> int | None:
        value = self.request.get("max_tokens") or self.request.get("max_completion_tokens")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def budget(self, deployment: Deployment) -> tuple[int, int, int] | None:
        """(input budget in our tokens, answer reserve, window) or None if unknown."""
        try:
            return self._budgets[deployment.id]
        except KeyError:
            found = self._budgets[deployment.id] = self._compute_budget(deployment)
            return found

    def _compute_budget(self, deployment: Deployment) -> tuple[int, int, int] | None:
        override = self._overrides.get(deployment.id)
        requested = self._requested()
        found = input_budget(deployment, requested)
        if found is None:
            if override is None:
                return None
            reserve = answer_reserve(deployment, requested)
            return override, reserve, override + reserve  # learnt from an overflow error
        budget, reserve, window = found
        if override is not None:
            budget = min(budget, override)
        return budget, reserve, window

    async def _measure(self, deployment: Deployment) -> Measure:
        name = encoding_for_model(deployment.model)
        found = self._measures.get(name)
        if found is None:
            principal = self.ctx.principal
            seed = f"{principal.key_id if principal else ''}\x00{principal.team if principal else ''}".encode()
            found = await asyncio.to_thread(measure, self.request, name, self.manager.tokens, seed)
            self._measures[name] = found
        return found

    async def _fits_whole(self, deployment: Deployment) -> bool | None:
        """Whether the untouched request fits (None: the window is unknown)."""
        try:
            return self._fits[deployment.id]
        except KeyError:
            found = self._fits[deployment.id] = await self._decide_fit(deployment)
            return found

    async def _decide_fit(self, deployment: Deployment) -> bool | None:
        budget = self.budget(deployment)
        if budget is None:
            return None
        if deployment.id not in self._overrides:
            cheap_enough = EXACT_FROM * budget[0]
            if self._bound is not None and self._bound <= cheap_enough:
                return True
            if self._estimate is None:
                self._estimate = await _work(len(self.request.get("messages") or ()), estimate_tokens, self.request)
            if self._estimate <= cheap_enough:
                return True
        return (await self._measure(deployment)).total <= budget[0]

    # -- ordering --

    async def arrange(self) -> None:
        """Put first a candidate that takes the request whole, if the first cannot."""
        first = self._first
        if first is None or not self.settings.enabled:
            return
        if await self._fits_whole(first) is not False:
            return
        alternatives = [d for d in self.candidates[1:]] + [
            d for d in self.settings.fallback if d not in self.candidates and region_allowed(self.ctx, d)]
        for deployment in alternatives:
            if await self._fits_whole(deployment):
                self._rerouted = deployment
                self.candidates = [deployment] + [d for d in self.candidates if d is not deployment]
                return

    # -- fitting --

    def _say(self, value: str) -> None:
        self.ctx.response_headers["x-clasp-context"] = value

    async def fit(self, deployment: Deployment) -> CanonicalRequest:
        """The body to send to ``deployment``: the request itself when it fits, else
        trimmed (and maybe summarised); sets the ``x-clasp-context`` header."""
        if not self.settings.enabled:
            return self.request
        cached = self._bodies.get(deployment.id)
        if cached is not None:  # a retry of the same deployment
            self._say(cached[1])
            return cached[0]
        fits = await self._fits_whole(deployment)
        if fits is None:
            self._say("unknown")
            return self.request
        if fits:
            if self._rerouted is deployment and deployment is not self._first:
                self._say(f"rerouted; to={deployment.id}")
            else:
                self._say("fit")
            measured = self._measures.get(encoding_for_model(deployment.model))
            if measured is not None:
                self._sent[deployment.id] = measured.total
            return self._limit_answer(self.request, deployment, measured.total if measured else None)
        body, header, sent = await self._trim(deployment)
        self._sent[deployment.id] = sent
        self._bodies[deployment.id] = (body, header)
        self._say(header)
        return body

    def _limit_answer(self, body: CanonicalRequest, deployment: Deployment, need: int | None) -> CanonicalRequest:
        """Lower ``max_tokens`` to the reserve when the input (``need``, else the
        estimate) and the requested answer together would overflow the window (the
        reserve was cut to half the window)."""
        budget = self.budget(deployment)
        requested = self._requested()
        if budget is None or requested is None:
            return body
        _, reserve, window = budget
        limit = deployment.info.max_output_tokens
        clamped = min(requested, limit) if limit else requested
        if clamped <= reserve:
            return body
        if (self.estimate if need is None else need) + clamped <= window:
            return body
        key = "max_completion_tokens" if "max_completion_tokens" in body and "max_tokens" not in body else "max_tokens"
        return {**body, key: reserve}

    async def _trim(self, deployment: Deployment) -> tuple[CanonicalRequest, str, int]:
        """The trimmed (maybe summarised) body, its header value and its tokens."""
        budget_info = self.budget(deployment)
        assert budget_info is not None
        budget = budget_info[0]
        m = await self._measure(deployment)
        messages: list[dict[str, Any]] = list(self.request.get("messages") or [])
        settings = self.settings
        summarizing = bool(settings.summarizers)
        summary_room = settings.summary_max_tokens + 60 if summarizing else 0
        manager = self.manager

        dropped: list[int] | None = None
        over: int | None = None
        summary: str | None = None
        summarizer: str | None = None
        previous: tuple[int, Boundary] | None = manager.remembered(m.chain)
        if previous is not None:
            _, old = previous
            old_dropped = old.dropped
            kept_total = m.total - sum(m.counts[i] for i in old_dropped)
            if kept_total + summary_room <= budget and (old.summary or not summarizing):
                dropped = old_dropped
                summary, summarizer = (old.summary, old.summarizer) if summarizing else (None, None)
        if dropped is None:
            target = int(budget * settings.trim_to) - summary_room
            dropped, total = await _work(
                len(messages), plan_trim, messages, m.counts, m.total, target, budget - summary_room
            )
            if total + summary_room > budget:
                summarizing = False  # no room left for a summary: plain trim
            if total > budget:
                # The system prompt, tools and latest turn alone exceed what we believe
                # the window is. Send the most trimmed form anyway: catalogue windows of
                # local models are often wrong, and a real overflow comes back as
                # "prompt is too long" from the upstream.
                over = budget
            if summarizing and dropped:
                dropped_messages = [messages[i] for i in dropped]
                prior: str | None = None
                if previous is not None and previous[1].summary and set(previous[1].dropped) <= set(dropped):
                    old_set = set(previous[1].dropped)
                    prior = previous[1].summary
                    dropped_messages = [messages[i] for i in dropped if i not in old_set]
                made = await manager.summarizer.summarize(self.ctx, settings, dropped_messages, prior)
                if made is not None:
                    summary, summarizer = made[0], made[1].id
        if dropped:
            manager.remember(m.chain[dropped[-1]], Boundary.of(dropped, summary, summarizer))

        kept, after = await _work(len(messages), keep_messages, messages, dropped, m.counts, m.total)
        if summary:
            position = next((i for i, msg in enumerate(kept) if role(msg) not in INSTRUCTION_ROLES), len(kept))
            note = {"role": "user", "content": SUMMARY_HEADER.format(n=len(dropped)) + summary}
            kept.insert(position, note)
            after += message_tokens(note, encoding_or_estimate(encoding_for_model(deployment.model)))
        body = self._limit_answer({**self.request, "messages": kept}, deployment, after)
        detail = f"dropped={len(dropped)} messages; tokens={m.total}->{after}"
        if self._rerouted is deployment and deployment is not self._first:
            detail += f"; to={deployment.id}"
        if over is not None:
            detail += f"; over={over}"
            log.warning("%s: %s does not fit %s even trimmed (%s)", self.ctx.request_id, self.ctx.public_model,
                        deployment.id, detail)
        if summary:
            return body, f"summarized; {detail}; by={summarizer}", after
        return body, f"trimmed; {detail}", after

    # -- after an upstream overflow --

    async def after_overflow(self, deployment: Deployment, error: UpstreamError, later: Sequence[Deployment]) -> str:
        """Decide the one extra go after an upstream "context length exceeded":
        ``"next"`` (a later candidate has a larger window) or ``"retry"`` (the same
        deployment, trimmed to what the error says fits)."""
        own = self.budget(deployment)
        own_window = own[2] if own else 0
        if any((d.info.max_input_tokens or 0) > own_window for d in later):
            return "next"
        text = error.message
        limit, in_messages, their_need = overflow_numbers(text)
        sent = self._sent.get(deployment.id)
        if sent is None:
            sent = (await self._measure(deployment)).total
        reserve = own[1] if own else (self._requested() or DEFAULT_RESERVE)
        ratio = 1 / OVERFLOW_SHRINK  # nothing to learn from: assume we count a third low
        if their_need and sent:
            # "you requested N tokens (... in the completion)": N counts the answer too.
            with_answer = in_messages is None and "completion" in text.lower()
            ratio = max(1.0, their_need / (sent + (reserve if with_answer else 0)))
        window = limit or (own[2] if own else None)
        if window:
            target = int((window - min(reserve, window // 2)) / ratio * 0.95)
        else:
            target = int(sent / ratio * 0.95)
        target = min(target, int(sent * 0.95))
        self._overrides[deployment.id] = max(1, target)
        for memo in (self._bodies, self._budgets, self._fits):
            memo.pop(deployment.id, None)
        return "retry"

"""The router's learner: what ``cheapest-capable`` learns from, per request.

Before routing (:meth:`Learner.prepare`, only for requests a learned strategy routes):
the request's class and difficulty bucket (:mod:`.difficulty`), a fingerprint of the
turn, and whether the same turn was answered recently (a **retry**: the client did
not take that answer, so it failed silently, and this try goes a tier up).

Outcomes, all after the answer (never on the hot path):

- a failed attempt (``after_attempt``): an error, a timeout, a cut stream; a fallback
  to the next candidate is therefore a failure of the one before (once per deployment
  and request: retrying it is the same failure). Rate limits (429) and overload (529)
  say nothing about ability and are not counted;
- the answer itself (``record``, the request event): a success, unless it stopped at
  its token limit (``finish_reason: length``, outside background calls) or a tool
  call's arguments were not a JSON object (both read from the stream by
  :func:`watch_chunk`);
- a **retry** of the turn: the earlier answer's success becomes a failure;
- ``POST /v1/feedback`` (clasp-analytics sends a ``kind: "feedback"`` event): a score
  under ``feedback_fail_below``, or a listed metric that is ``false``
  (``tests_passed``...), turns the answer's success into a failure.

Turn and request records live in a bounded local memory and, when the state is
shared (Redis, SQLite), in the state too (with TTLs), so a retry or a feedback that
another replica receives still finds the answer it is about: with a shared state,
a learned request whose turn this replica has not seen costs one state read before
routing (async, within the state's timeout; an outage skips it), and two writes after
the answer. One-token probes (``max_tokens: 1``, Claude Code's quota check) are
never taken for retries: Claude Code sends the same probe at every start. A cached answer (clasp-cache) says
nothing about a model and is not counted. The estimates themselves: :mod:`.estimates`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from clasp_gateway import (
    Attempt,
    CanonicalRequest,
    Chunk,
    Deployment,
    RequestContext,
    RequestFeatures,
    StateBackend,
    StateUnavailable,
    collect_tool_arguments,
    invalid_tool_arguments,
    request_features,
)

from .difficulty import bucket_of
from .estimates import Estimates
from .learn_settings import LearnSettings
from .learned import LearnView, price_tiers

log = logging.getLogger("clasp.router")

TICKET = "router.learn"
"""``ctx.state`` key of the request's :class:`Ticket`."""
TURN_PREFIX = "router:turn:"
REQUEST_PREFIX = "router:req:"
LOCAL_RECORDS = 10_000
"""Turn and request records kept in memory (each; oldest first out)."""
NOT_ABILITY = frozenset({429, 529})
"""Upstream statuses that say the deployment was busy, not that it could not do the task."""
SLICE = 2048


@dataclass(slots=True)
class Ticket:
    """What the learner knows about one request while it is served."""

    request_class: str
    bucket: int
    fingerprint: str
    retry_of: dict[str, Any] | None = None
    """The record of the earlier answer to this turn (a retry), if any."""
    finish_reason: str | None = None
    tool_args: dict[int, list[str]] = field(default_factory=dict)
    prefix: str = ""
    """The arm prefix (``team@`` with ``learn.scope: team``)."""
    failed: set[str] = field(default_factory=set)
    """Deployments already counted as failed in this request (a retry of the same
    deployment after an error is one failure, not two)."""


def turn_fingerprint(ctx: RequestContext, request: CanonicalRequest, f: RequestFeatures) -> str:
    """The same turn of the same conversation from the same key (and user) hashes the
    same. Bounded cost: the message count and sizes, plus at most the first and last
    ``SLICE`` characters of the first and last messages' content."""
    principal = ctx.principal
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{principal.key_id if principal else ''}\x00{ctx.user or ''}\x00{ctx.public_model}\x00"
                  f"{ctx.request_class}\x00{f.messages}\x00{f.input_tokens}\x00{f.tools}\x00{f.tool_results}".encode())
    messages = request.get("messages")
    if isinstance(messages, list) and messages:
        for message in (messages[0], messages[-1]):
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                text = content
            else:
                text = orjson.dumps(content if not isinstance(content, list) else content[-4:], default=str).decode()
            digest.update(b"\x01" + text[:SLICE].encode() + b"\x02" + text[-SLICE:].encode())
    return digest.hexdigest()


def watch_chunk(ctx: RequestContext, chunk: Chunk) -> None:
    """``on_stream_chunk``: the finish reason and tool-call arguments of an answer the
    learner follows (a dict lookup for every other request)."""
    ticket = ctx.state.get(TICKET)
    if ticket is None:
        return
    reason = collect_tool_arguments(chunk, ticket.tool_args)
    if reason:
        ticket.finish_reason = reason


def invalid_tool_json(ticket: Ticket) -> bool:
    """Whether a tool call's arguments, put together, are not a JSON object."""
    return invalid_tool_arguments(ticket.tool_args)


class _Records:
    """A bounded map of recent records (oldest out first)."""

    def __init__(self, limit: int = LOCAL_RECORDS) -> None:
        self.limit = limit
        self.items: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def get(self, key: str) -> dict[str, Any] | None:
        return self.items.get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        self.items[key] = record
        self.items.move_to_end(key)
        while len(self.items) > self.limit:
            self.items.popitem(last=False)


class Learner:
    """One app's learning: estimates, recent turns and requests, and their sharing."""

    def __init__(self, settings: LearnSettings, catalogue: list[Deployment], state: StateBackend,
                 clock: Callable[[], float], *, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.state = state
        self.clock = clock
        self.rng = rng or random.Random()
        self.estimates = Estimates(half_life=settings.half_life, prior=settings.prior, clock=clock, rng=self.rng)
        self.tiers = price_tiers(catalogue, settings.tiers)
        self.turns = _Records()
        self.requests = _Records()
        self._sync: asyncio.Task[bool] | None = None

    # --- before routing ------------------------------------------------------------------------

    async def prepare(self, ctx: RequestContext, request: CanonicalRequest,
                      budget_left: float | None = None) -> LearnView:
        """The request's :class:`LearnView` (and its :class:`Ticket` in ``ctx.state``)."""
        f = request_features(request, ctx.hints)
        request_class = ctx.request_class or "question"
        team = ctx.principal.team if ctx.principal is not None else None
        prefix = f"{team or '-'}@" if self.settings.scope == "team" else ""
        ticket = Ticket(request_class, bucket_of(f), turn_fingerprint(ctx, request, f), prefix=prefix)
        if f.max_tokens is None or f.max_tokens > 1:
            ticket.retry_of = await self._turn(ticket.fingerprint)
        ctx.state[TICKET] = ticket
        retry_tier = ticket.retry_of.get("t") if ticket.retry_of else None
        self.maybe_sync()
        return LearnView(self.estimates, self.settings.policy_for(team), self.tiers, request_class, ticket.bucket,
                         retry_tier=retry_tier if isinstance(retry_tier, int) else None,
                         budget_left=budget_left, rng=self.rng, features=f, arm_prefix=prefix)

    async def _turn(self, fingerprint: str) -> dict[str, Any] | None:
        found = self.turns.get(fingerprint)
        if found is not None or not self.state.shared or self.settings.retry_window <= 0:
            return found
        return await self._read(TURN_PREFIX + fingerprint)

    async def _read(self, key: str) -> dict[str, Any] | None:
        try:
            raw = await self.state.get(key)
            value = orjson.loads(raw) if raw else None
        except (StateUnavailable, orjson.JSONDecodeError):
            return None
        return value if isinstance(value, dict) else None

    async def _write(self, key: str, record: dict[str, Any], ttl: float) -> None:
        if not self.state.shared or ttl <= 0:
            return
        try:
            await self.state.set(key, orjson.dumps(record), ttl=ttl)
        except StateUnavailable:
            pass  # this replica still remembers it

    # --- outcomes ------------------------------------------------------------------------------

    def attempt_ended(self, ctx: RequestContext, attempt: Attempt) -> None:
        """A failed attempt is a failure of its deployment (busy statuses aside)."""
        ticket: Ticket | None = ctx.state.get(TICKET)
        if ticket is None or attempt.ok:
            return
        status = getattr(attempt.error, "upstream_status", None) or getattr(attempt.error, "status", None)
        if status in NOT_ABILITY or attempt.deployment.id in ticket.failed:
            return
        ticket.failed.add(attempt.deployment.id)
        self.estimates.observe(ticket.prefix + attempt.deployment.id, ticket.request_class, ticket.bucket, 0.0, 1.0)

    async def finished(self, ctx: RequestContext, event: dict[str, Any]) -> None:
        """The request event: the answer's outcome, a retry's correction, the records."""
        ticket: Ticket | None = ctx.state.pop(TICKET, None)
        if ticket is None or event.get("cache_hit"):
            return
        answered = event.get("deployment")
        success = False
        if answered and (event.get("status") or 0) < 400 and not event.get("cut"):
            truncated = ticket.finish_reason == "length" and ticket.request_class != "background"
            success = not truncated and not invalid_tool_json(ticket)
            self.estimates.observe(ticket.prefix + answered, ticket.request_class, ticket.bucket,
                                   1.0 if success else 0.0, 0.0 if success else 1.0)
        previous = ticket.retry_of
        if previous is not None and isinstance(previous.get("r"), str):
            await self._correct_request(previous["r"])  # the earlier answer did not do
        if answered:
            record = {"d": ticket.prefix + answered, "c": ticket.request_class, "b": ticket.bucket,
                      "t": self.tiers.get(answered, 0), "ok": success, "r": ctx.request_id}
            self.turns.put(ticket.fingerprint, {"r": ctx.request_id, "t": record["t"]})
            self.requests.put(ctx.request_id, record)
            await self._write(TURN_PREFIX + ticket.fingerprint, {"r": ctx.request_id, "t": record["t"]},
                              self.settings.retry_window)
            await self._write(REQUEST_PREFIX + ctx.request_id, record, self.settings.feedback_window)
        self.maybe_sync()

    async def _correct_request(self, request_id: str) -> None:
        """A request's answer turned out wrong (a retry of its turn, a failed feedback):
        its counted success becomes a failure, once, wherever it was served (the
        request's record, local or in the state, says whether it still counts as one)."""
        record = self.requests.get(request_id)
        if record is None and self.state.shared:
            record = await self._read(REQUEST_PREFIX + request_id)
        if record is None or not record.get("ok"):
            return
        deployment, request_class, bucket = record.get("d"), record.get("c"), record.get("b")
        if isinstance(deployment, str) and isinstance(request_class, str) and isinstance(bucket, int):
            self.estimates.observe(deployment, request_class, bucket, -1.0, 1.0)
        record["ok"] = False
        self.requests.put(request_id, record)
        await self._write(REQUEST_PREFIX + request_id, record, self.settings.feedback_window)

    def failed_feedback(self, event: dict[str, Any]) -> bool:
        """Whether a feedback says the answer failed (a low score or a false metric)."""
        score = event.get("score")
        if isinstance(score, (int, float)) and not isinstance(score, bool) and score < self.settings.feedback_fail_below:
            return True
        metrics = event.get("metrics")
        if isinstance(metrics, dict):
            return any(metrics.get(name) is False for name in self.settings.feedback_fail_metrics)
        return False

    async def feedback(self, event: dict[str, Any]) -> None:
        """A ``feedback`` event: a failed answer's success is corrected (once)."""
        request_id = event.get("request_id")
        if not isinstance(request_id, str) or not self.failed_feedback(event):
            return
        await self._correct_request(request_id)
        self.maybe_sync()

    # --- sharing ---------------------------------------------------------------------------------

    def maybe_sync(self) -> None:
        """Start a background sync of the estimates when one is due (never awaited here)."""
        if not self.estimates.due() or (self._sync is not None and not self._sync.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._sync = loop.create_task(self.estimates.sync(self.state))

    async def close(self) -> None:
        """Send what is queued (best effort) and stop."""
        if self._sync is not None and not self._sync.done():
            try:
                await self._sync
            except Exception:  # noqa: BLE001 (closing: nothing to report)
                pass
        if self.estimates.pending:
            try:
                await self.estimates.sync(self.state)
            except Exception:  # noqa: BLE001 (closing)
                pass

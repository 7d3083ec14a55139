"""Long answers: continue a text answer the deployment cut short, up to the client's
``max_tokens`` (``long_answers:`` in clasp.yaml).

Claude Code asks for 32k-128k output tokens; many models stop at 4k-16k (the core
clamps ``max_tokens`` to the deployment's output limit, ``wire/quirks.py``). The
router prefers a candidate with room (its capability filter); when none has, the
answer ends with ``finish_reason: "length"`` long before the client's limit. With
``long_answers.max_continuations`` above 0 the gateway then asks again:

- **Text** cut by ``length`` below the client's ``max_tokens``: the conversation plus
  the partial answer (``style: prompt``: an assistant message with it, then a user
  message asking to continue exactly where it stopped, which any OpenAI-style API
  serves; ``style: prefix``: the partial answer as a trailing assistant message, which
  Anthropic-family upstreams continue natively), with ``max_tokens`` = what is left.
  The client sees one message, one stream: the parts' text in order, the usage summed,
  the finish reason of the last part; a non-streamed answer carries
  ``x-clasp-continued: N`` (a stream's headers are gone before the answer is known to
  be long: the count is in the request event, ``continued``).
- **A tool call** cut by ``length``: its JSON is incomplete and an OpenAI-style API
  cannot continue it. When the deployment's output limit was below what the client
  asked, the call's chunks are held until the part ends (so a broken call never
  reaches the client); a cut call is then retried on a deployment with room for the
  remaining tokens (:data:`ROOM_KEY`, honoured by the pipeline's candidate list; the
  key's regions still apply). None with room: the honest ``length`` stop.

Every extra call is an attempt (``after_attempt``, ``record``: the ledger prices it)
and the request's cost is the sum of its attempts' costs
(:data:`PRICED_BY_ATTEMPTS`), which budgets settle. Only configuration makes the
gateway ask again: the count is bounded by ``max_continuations``, nothing a client
sends raises it, and each part is routed like the first (regions, breakers).
Streams whose chunks are not canonical (an Anthropic pass-through) are served as they
come, never continued; so are answers whose deployment has room for the client's whole
``max_tokens`` (no cost per chunk for them). What the wrapper costs otherwise:
``bench/long_answers_cpu.py`` (~1 us per chunk).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..config import Config, ConfigError
from ..errors import GatewayError
from ..types import KEEPALIVE, PING_INTERVAL, CanonicalRequest, Chunk, Deployment, RequestContext, UpstreamStream, Usage
from ..validation import Boolean, Choice, Field, Integer, Section, String
from .server_tools import RoundServices

log = logging.getLogger("clasp.long_answers")

__all__ = [
    "CONTINUED_HEADER",
    "CONTINUED_KEY",
    "PRICED_BY_ATTEMPTS",
    "REWRITTEN_KEY",
    "ROOM_KEY",
    "LongAnswers",
    "LongAnswerSettings",
    "Room",
    "parse_settings",
    "with_room",
]

CONTINUED_HEADER = "x-clasp-continued"
"""Response header: how many extra upstream calls made this answer (non-streamed answers)."""
CONTINUED_KEY = "clasp.continued"
"""``ctx.state`` key: the number of extra calls (continuations and tool-call retries)."""
PRICED_BY_ATTEMPTS = "clasp.priced_by_attempts"
"""``ctx.state`` key: the request's cost is the sum of its attempts' (parts on several deployments)."""
ROOM_KEY = "clasp.long_answers.room"
"""``ctx.state`` key of a :class:`Room` while a cut tool call is retried."""
REWRITTEN_KEY = "clasp.body_rewritten"
"""``ctx.state`` key set when the gateway sends a body of its own making for this
request (a continuation): a provider that would resend the client's original request
(clasp-claude's Anthropic pass-through) must use the canonical body instead."""

DEFAULT_PROMPT = (
    "Your previous answer was cut off by the output limit. Continue it exactly where it stopped, "
    "without repeating anything and without any preamble."
)
MAX_CONTINUATIONS = 20
"""Highest ``max_continuations`` clasp.yaml may set."""
CHARS_PER_TOKEN = 4
"""Output estimate when an upstream reports no usage."""


@dataclass(slots=True, frozen=True)
class LongAnswerSettings:
    """The ``long_answers:`` section."""

    max_continuations: int = 0
    """Extra upstream calls one answer may take (0: never continue; the default)."""
    style: str = "prompt"
    """``prompt`` (assistant partial + a user message asking to continue) or ``prefix``."""
    prompt: str = DEFAULT_PROMPT
    retry_tool_calls: bool = True
    """Retry a cut tool call on a deployment with room (it counts as a continuation)."""


SECTION = Section({
    "max_continuations": Field(Integer(0, MAX_CONTINUATIONS), 0),
    "style": Field(Choice("prompt", "prefix"), "prompt"),
    "prompt": Field(String(non_empty=True), DEFAULT_PROMPT),
    "retry_tool_calls": Field(Boolean(), True),
}, into=LongAnswerSettings)


def parse_settings(config: Config) -> LongAnswerSettings:
    """Validate ``long_answers:``; :class:`ConfigError` lists every problem."""
    problems: list[str] = []
    settings = SECTION.parse(config.raw.get("long_answers"), "long_answers", problems)
    if problems:
        raise ConfigError(config.source, problems)
    assert isinstance(settings, LongAnswerSettings)
    return settings


@dataclass(slots=True, frozen=True)
class Room:
    """Who may serve a retried tool call: at least ``min_output`` tokens of output room
    (or an unknown limit), and not one of ``exclude`` (the deployments that cut it)."""

    min_output: int
    exclude: frozenset[str]


def with_room(ctx: RequestContext, candidates: list[Deployment]) -> list[Deployment]:
    """``candidates`` unless a tool call is being retried: then those with room
    (possibly none; the caller ends the answer honestly)."""
    room = ctx.state.get(ROOM_KEY)
    if not isinstance(room, Room):
        return candidates
    return [d for d in candidates if d.id not in room.exclude
            and (d.info.max_output_tokens is None or d.info.max_output_tokens >= room.min_output)]


def requested_tokens(request: CanonicalRequest) -> int | None:
    """The client's output limit (``max_tokens`` or ``max_completion_tokens``)."""
    value = request.get("max_tokens") or request.get("max_completion_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _canonical(chunks: list[Chunk]) -> bool:
    return all(c is KEEPALIVE or "choices" in c or "usage" in c for c in chunks)


def _add(total: dict[str, Any] | None, usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Sum two OpenAI ``usage`` objects field by field (nested details included)."""
    if not usage:
        return total
    out = dict(total or {})
    for key, value in usage.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            current = out.get(key)
            out[key] = (current if isinstance(current, (int, float)) and not isinstance(current, bool) else 0) + value
        elif isinstance(value, dict):
            inner = out.get(key)
            out[key] = _add(inner if isinstance(inner, dict) else {}, value)
    return out


class LongAnswers:
    """The configured behaviour (one per gateway; ``None`` when off, at no cost)."""

    def __init__(self, settings: LongAnswerSettings) -> None:
        self.settings = settings

    @classmethod
    def build(cls, config: Config) -> LongAnswers | None:
        settings = parse_settings(config)
        return cls(settings) if settings.max_continuations > 0 else None

    def wrap(self, services: RoundServices, ctx: RequestContext, request: CanonicalRequest,
             first: UpstreamStream, *, stream: bool) -> UpstreamStream:
        """The stream the client reads: ``first`` itself when nothing can be continued
        (no ``max_tokens``, not canonical), else a :class:`_Continuation` over it."""
        requested = requested_tokens(request)
        if requested is None or not _canonical(first.first_chunks):
            return first
        limit = first.deployment.info.max_output_tokens
        if limit is not None and limit >= requested:
            return first  # this answer has room: nothing to continue, nothing to pay per chunk
        return _Continuation(self.settings, services, ctx, request, first, requested, stream=stream).outer


class _Part:
    """What one upstream part said, beyond the chunks passed on."""

    __slots__ = ("usage", "length", "tools", "chars", "chunk_id", "finish_chunk")

    def __init__(self) -> None:
        self.usage: dict[str, Any] | None = None
        self.finish_chunk: Chunk | None = None
        """A later part's finish, held to carry the summed usage (a translator ends
        the answer once it has a finish and a usage: they must come together)."""
        self.length = False
        self.tools = False
        self.chars = 0
        self.chunk_id = ""

    def produced(self) -> int:
        out = self.usage.get("completion_tokens") if self.usage else None
        if isinstance(out, int) and not isinstance(out, bool) and out >= 0:
            return out
        return max(1, self.chars // CHARS_PER_TOKEN) if self.chars else 0


def _finishes(chunk: Chunk) -> bool:
    choices = chunk.get("choices")
    return isinstance(choices, list) and bool(choices) and isinstance(choices[0], dict) \
        and bool(choices[0].get("finish_reason"))


def _without_finish(chunk: Chunk) -> Chunk | None:
    """A ``length``-finish chunk's visible content without its finish and usage (``None``: nothing left)."""
    choice = chunk["choices"][0]
    delta = choice.get("delta")
    key = "delta"
    if delta is None:
        delta, key = choice.get("message"), "message"
    if not isinstance(delta, dict) or not any(v not in (None, "", [], {}) for k, v in delta.items() if k != "role"):
        return None
    out = {k: v for k, v in chunk.items() if k not in ("usage", "choices")}
    out["choices"] = [{**choice, key: delta, "finish_reason": None}]
    return out


class _Continuation:
    """One answer's parts: the first upstream stream, then each continuation."""

    def __init__(self, settings: LongAnswerSettings, services: RoundServices, ctx: RequestContext,
                 request: CanonicalRequest, first: UpstreamStream, requested: int, *, stream: bool) -> None:
        self.settings = settings
        self.services = services
        self.ctx = ctx
        self.request = request
        self.requested = requested
        self.stream = stream
        self.current: UpstreamStream | None = first
        self.extra = 0
        self._produced = 0
        self.text: list[str] = []
        self.outer = UpstreamStream(first.deployment, first.attempt, [], self._run(), closer=self._close)
        self._opening: asyncio.Future[UpstreamStream] | None = None

    async def _close(self) -> None:
        opening, self._opening = self._opening, None
        if opening is not None:
            if not opening.done():
                opening.cancel()  # the client left while the next part was opening
            elif not opening.cancelled() and opening.exception() is None:
                await opening.result().aclose()
        current, self.current = self.current, None
        if current is not None:
            await current.aclose()

    def _holds_tools(self, deployment: Deployment) -> bool:
        """Hold tool-call chunks when this part may cut a call below the client's ask."""
        if not self.settings.retry_tool_calls or self.extra >= self.settings.max_continuations:
            return False
        limit = deployment.info.max_output_tokens
        return limit is not None and limit < self.requested - self._produced

    async def _end_part(self, part: _Part, *, final: bool) -> None:
        """Close the part's attempt (unless it is the only one: ``finish`` does that)."""
        assert self.current is not None
        attempt = self.current.attempt
        if attempt.ended is None and (self.extra > 0 or not final):
            attempt.ended = time.perf_counter()
            attempt.usage = Usage.from_openai(part.usage)
            if attempt in self.ctx.attempts:
                await self.services.attempt_ended(self.ctx, attempt)
        await self.current.aclose()

    async def _run(self) -> AsyncIterator[Chunk]:
        total: dict[str, Any] | None = None
        try:
            while True:
                assert self.current is not None
                part = _Part()
                held: list[Chunk] = []
                hold = self._holds_tools(self.current.deployment)
                later = self.extra > 0
                fast = not (hold or later)
                text = self.text
                async for chunk in self.current:
                    if chunk is KEEPALIVE:
                        yield chunk
                        continue
                    if fast and not part.length and "usage" not in chunk:
                        # The common chunk of a first part: text passed on as it is (and kept).
                        choices = chunk.get("choices")
                        if choices and type(choices) is list and type(choices[0]) is dict \
                                and not choices[0].get("finish_reason"):
                            delta = choices[0].get("delta") or choices[0].get("message")
                            if type(delta) is dict:
                                content = delta.get("content")
                                if content and type(content) is str:
                                    text.append(content)
                                    part.chars += len(content)
                                if delta.get("tool_calls"):
                                    part.tools = True
                            yield chunk
                            continue
                    if not part.chunk_id and chunk.get("id"):
                        part.chunk_id = chunk["id"]
                    usage = chunk.get("usage")
                    if usage and isinstance(usage, dict):
                        part.usage = {**(part.usage or {}), **usage}
                        if later:
                            chunk = {k: v for k, v in chunk.items() if k != "usage"}
                    if part.length:
                        continue  # after a length finish: only its usage matters
                    choices = chunk.get("choices")
                    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
                    if choice is None:
                        if not later:  # (a later part's usage is summed at the end)
                            yield chunk
                        continue
                    delta = choice.get("delta")
                    if delta is None:
                        delta = choice.get("message")
                    calls = False
                    if isinstance(delta, dict):
                        content = delta.get("content")
                        if isinstance(content, str):
                            self.text.append(content)
                            part.chars += len(content)
                        if delta.get("tool_calls"):
                            calls = part.tools = True
                        if later and "role" in delta:
                            delta = {k: v for k, v in delta.items() if k != "role"}
                            chunk = {**chunk, "choices": [{**choice, ("delta" if "delta" in choice else "message"): delta}]}
                    finish = choice.get("finish_reason")
                    if finish == "length":
                        part.length = True
                        visible = _without_finish(chunk)
                        if visible is not None:
                            if hold and calls:
                                held.append(visible)
                            else:
                                yield visible
                        continue
                    if finish:
                        for h in held:
                            yield h
                        held = []
                        if later:
                            part.finish_chunk = chunk
                            continue
                    elif hold and calls:
                        held.append(chunk)
                        continue
                    yield chunk
                after = await self._after(part, held)
                total = _add(total, part.usage)
                if isinstance(after, asyncio.Future):  # the next part is opening: keep the client posted
                    while not after.done():
                        await asyncio.wait({after}, timeout=PING_INTERVAL)
                        if not after.done():
                            yield KEEPALIVE
                    done = self._opened(after, part, held)
                else:
                    done = after
                if done is None:
                    continue  # the next part is open
                if self.extra > 0:  # the last chunk: the last part's finish with the usage of all parts
                    self.ctx.response_headers[CONTINUED_HEADER] = str(self.extra)
                    self.ctx.state[CONTINUED_KEY] = self.extra
                    self.ctx.state[PRICED_BY_ATTEMPTS] = True
                    end = part.finish_chunk
                    if end is None and done and _finishes(done[-1]):
                        end = done.pop()
                    end = dict(end) if end is not None else {
                        "id": part.chunk_id or "chatcmpl-clasp", "object": "chat.completion.chunk",
                        "model": self.ctx.public_model, "choices": []}
                    if total:
                        end["usage"] = total
                    done.append(end)
                for h in done:
                    yield h
                return
        finally:
            await self._close()

    async def _after(self, part: _Part, held: list[Chunk]) -> list[Chunk] | asyncio.Future[UpstreamStream]:
        """After a part: the chunks that end the answer, or the next part opening."""
        cut_call = part.length and part.tools
        produced = self._produced + (0 if cut_call else part.produced())
        may = self.extra < self.settings.max_continuations
        retry = cut_call and may and bool(held)
        more = part.length and not part.tools and may and produced < self.requested
        if not (retry or more):
            await self._end_part(part, final=True)
            if not part.length:
                return held
            return [*held, self._length_end(part, with_usage=self.extra == 0)]
        assert self.current is not None
        cut_by = self.current.deployment.id
        await self._end_part(part, final=False)
        self.current = None
        self._produced = produced
        left = self.requested - produced
        room = Room(left, frozenset({cut_by})) if retry else None
        self._opening = asyncio.ensure_future(self._open(self._body(left), room))
        return self._opening

    def _opened(self, opening: asyncio.Future[UpstreamStream], part: _Part, held: list[Chunk]) -> list[Chunk] | None:
        """The next part is open (``None``), or it failed: the answer ends as it was cut."""
        self._opening = None
        error = opening.exception()
        if error is not None:
            if not isinstance(error, GatewayError):
                raise error
            log.warning("%s: %s after %d part(s) failed (%s); the answer ends here", self.ctx.request_id,
                        "retrying a cut tool call" if part.tools else "continuing the answer", self.extra + 1,
                        error.message)
            return [*held, self._length_end(part, with_usage=self.extra == 0)]
        opened = opening.result()
        self.extra += 1
        self.current = opened
        self.outer.deployment = opened.deployment
        self.outer.attempt = opened.attempt
        return None

    def _length_end(self, part: _Part, *, with_usage: bool) -> Chunk:
        end: Chunk = {"id": part.chunk_id or "chatcmpl-clasp", "object": "chat.completion.chunk",
                      "model": self.ctx.public_model, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
        if with_usage and part.usage:
            end["usage"] = part.usage
        return end

    async def _open(self, body: CanonicalRequest, room: Room | None) -> UpstreamStream:
        """The next part through the pipeline (routing, regions, retries, fallback).
        The body is no longer the client's: a pass-through provider must not resend it
        (:data:`REWRITTEN_KEY`)."""
        self.ctx.state[REWRITTEN_KEY] = True
        if room is not None:
            self.ctx.state[ROOM_KEY] = room
        try:
            return await self.services.open_round(self.ctx, body, stream=self.stream, continuation=True)
        finally:
            self.ctx.state.pop(ROOM_KEY, None)

    def _body(self, left: int) -> CanonicalRequest:
        """The request for the next part: the conversation, the answer so far, what is left."""
        messages: list[Any] = list(self.request.get("messages") or [])
        so_far = "".join(self.text)
        if self.settings.style == "prefix":
            so_far = so_far.rstrip()  # (Anthropic refuses a prefill ending in whitespace)
            if so_far:
                messages.append({"role": "assistant", "content": so_far})
        elif so_far:
            messages += [{"role": "assistant", "content": so_far}, {"role": "user", "content": self.settings.prompt}]
        key = "max_completion_tokens" if "max_completion_tokens" in self.request and "max_tokens" not in self.request \
            else "max_tokens"
        return {**self.request, "messages": messages, key: left}


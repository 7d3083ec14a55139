"""Fitting a request into the context window of the deployment about to serve it.

For every request, :meth:`ContextManager.plan` looks at the candidates the router
chose; per candidate, :meth:`ContextPlan.fit` returns the body to send. What was done
is said in the ``x-clasp-context`` response header:

- ``fit``: sent unchanged (``unknown`` when no candidate's window is known).
- ``rerouted; to=<deployment>``: the first candidate's window is too small, a later
  candidate of the route (or one of the route's ``context_fallback:`` deployments)
  takes the request whole, so it goes there first.
- ``trimmed; dropped=12 messages; tokens=180000->120000``: no candidate takes it whole,
  so the oldest turns were dropped for this one.
- ``summarized; dropped=...; tokens=...; by=<deployment>``: as trimmed, and the dropped
  part was summarised by a cheap model (``context: {summarize_with: ...}``) into one
  user message placed where the dropped messages were.

Cost. A request far below every window costs one walk over its messages (a
character count, no tokenizer). Only when that estimate reaches :data:`EXACT_FROM`
of a window are tokens counted exactly, with the deployment's tiktoken encoding, off
the event loop, and cached per message, so a growing conversation only tokenizes
its new messages. A request with more than :data:`THREAD_FROM` messages also has
its estimate and its trim computed off the event loop, and nothing of a request is
kept after it ends but token counts (bounded) and, per trimmed conversation, the
ranges of messages dropped (a few integers).

Window. ``info.max_input_tokens`` (LiteLLM's catalogue, or ``max_input_tokens:`` on
the deployment) is the window; the answer's room, ``max_tokens`` clamped to the
model's output limit and to half the window, is reserved out of it. Models that
tiktoken only approximates (all but OpenAI's) get 10% more margin.

Trimming rules (:func:`drop_groups`):
- The leading system messages, the last user message and the most recent unit are
  never dropped.
- A unit is an assistant message with ``tool_calls`` together with the ``role:
  tool`` messages answering it (they go or stay together: a call is never orphaned
  from its result), or any other single message.
- Oldest first: the units of older turns (a turn starts at a user message) go
  before their turn's user message, which goes together with the turn's last unit
  (so no two user messages end up side by side); then the units of the last turn.
- The trim aims at ``trim_to`` (80%) of the budget, not at the budget itself, and
  the choice is remembered per conversation prefix: the next turn of the same
  conversation reuses it (and its summary) while it still fits, so the upstream's
  prompt cache and the summary survive across turns instead of changing every turn.

An upstream that still answers "context length exceeded" (tokenizers differ) gets
one more go: the next candidate if it has a larger window, else the same one trimmed
harder, using the limit the error message states when it states one. Errors about
an overlong prompt leave the gateway as ``prompt is too long: ...``, the phrase
Claude Code recognises.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..canonical import chunks_to_completion
from ..config import Config, ConfigError, ModelRoute
from ..errors import GatewayError, UpstreamError
from ..types import KEEPALIVE, CanonicalRequest, Deployment, RequestContext, RequestHints, Usage
from ..validation import Boolean, Integer, ListOf, Number, Section, String
from ..wire.quirks import prepare_body
from .tokens import PER_REPLY, encoding_for_model, get_encoding, media_tokens_estimate, message_tokens, tools_tokens

__all__ = [
    "ContextManager",
    "ContextPlan",
    "ContextSettings",
    "answer_reserve",
    "drop_groups",
    "estimate_tokens",
    "input_budget",
    "is_context_overflow",
]

log = logging.getLogger("clasp.context")

CHARS_PER_TOKEN = 3.0
"""Divisor of the cheap estimate (UTF-8 bytes per token). Real o200k ratios on Claude
Code traffic are 3.8-4.8, so the estimate runs high: erring high only costs an exact
count, erring low could send an overlong request."""

EXACT_FROM = 0.7
"""Count exactly once the estimate reaches this fraction of a budget."""

TRIM_TO = 0.8
"""A trim aims at this fraction of the budget, leaving room for the next turns."""

DEFAULT_RESERVE = 4096
"""Answer room reserved when the request sets no ``max_tokens``."""

APPROXIMATE_MARGIN = 0.9
"""Budget factor for models whose tokenizer tiktoken only approximates."""

OVERFLOW_SHRINK = 0.75
"""After an upstream overflow with nothing to learn from the message: aim this low."""

SUMMARY_MAX_TOKENS = 1024
SUMMARIZER_WINDOW = 16_000
"""Input assumed for a summariser whose window is unknown."""

THREAD_FROM = 1_000
"""Messages from which the estimate and the trim run in a worker thread (a few ms of
CPU each, growing with the count), so other requests are not stalled meanwhile."""

_EXACT_PROVIDERS = frozenset({"openai", "azure"})
_TOKEN_CACHE_SIZE = 200_000
_BOUNDARY_CACHE_SIZE = 2_048

_OVERFLOW_MARKERS = (
    "maximum context length",
    "context_length_exceeded",
    "context length exceeded",
    "context window exceeded",
    "exceeds the context window",
    "exceeds the model's context window",
    "prompt is too long",
    "input is too long",
    "exceeds the available context size",
    "exceeds the maximum number of tokens allowed",
    "longer than the maximum model length",
    "is longer than the model's context length",
    "model's maximum context limit",
    "exceed context limit",
    "context length of only",
    "maximum input length is",
)
_NOT_OVERFLOW = ("per minute", "string_above_max_length", "rate limit")
_NUM = r"(\d[\d,]*)"
_LIMIT_PATTERNS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        rf"maximum context length is {_NUM}",
        rf"> {_NUM} maximum",
        rf"{_NUM} maximum context length",
        rf"maximum model length (?:is |of )?{_NUM}",
        rf"context length of only {_NUM}",
        rf"tokens allowed \({_NUM}\)",
        r"n_ctx[\s=:]+(\d+)",
        rf"context (?:window|size|length) (?:is |of ){_NUM}",
    )
]
_IN_MESSAGES = re.compile(rf"{_NUM} in the messages", re.IGNORECASE)
_NEED_PATTERNS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        rf"resulted in {_NUM} tokens",
        rf"requested {_NUM} tokens",
        rf"prompt is too long: {_NUM} tokens",
        rf"prompt contains {_NUM} tokens",
        rf"input token count \({_NUM}\)",
        r"n_prompt_tokens[\s=:]+(\d+)",
        rf"\(length {_NUM}\)",
    )
]

SUMMARY_PROMPT = (
    "You condense the earlier part of a conversation between a user and an AI coding "
    "assistant, so that the assistant can carry on without it. Keep what the rest of the "
    "conversation may depend on: the user's goals, instructions and preferences; decisions "
    "made; files, functions, commands and their results; errors met and how they were "
    "solved; what is still to do. Write plain sentences or terse bullet points, at most "
    "{words} words, and nothing but the summary."
)
SUMMARY_HEADER = "[Summary of {n} earlier messages, left out by the gateway to fit the model's context window]\n"


# --- settings ----------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class ContextSettings:
    """How one model route fits requests into windows.

    From the top-level ``context:`` section, overridden by the route's own
    ``context:`` mapping; ``context_fallback:`` is the route's list of larger-window
    deployments (deployment ids or public model names).
    """

    enabled: bool = True
    trim_to: float = TRIM_TO
    fallback: tuple[Deployment, ...] = ()
    summarize_with: str | None = None
    summarizers: tuple[Deployment, ...] = ()
    summary_max_tokens: int = SUMMARY_MAX_TOKENS


CONTEXT = Section({
    "enabled": Boolean(),
    "trim_to": Number(0.1, 1, expected="a fraction of the budget between 0.1 and 1"),
    "summarize_with": String(non_empty=True, expected="a public model name or a deployment id"),
    "summary_max_tokens": Integer(16),
})
"""``context:`` at the top level, and a route's own ``context:`` (its keys override)."""

CONTEXT_FALLBACK = ListOf(String(non_empty=True, expected="a deployment id or a public model name"), single=True,
                          expected="a list of deployment ids or public model names")
"""A route's ``context_fallback:``."""


def load_settings(config: Config, resolve: Callable[[str], ModelRoute]) -> dict[str, ContextSettings]:
    """Every route's :class:`ContextSettings`; :class:`ConfigError` lists the problems."""
    problems: list[str] = []
    by_id = {d.id: d for d in config.deployments()}

    def deployments(name: str, path: str) -> tuple[Deployment, ...]:
        if name in by_id:
            return (by_id[name],)
        try:
            return tuple(resolve(name).deployments)
        except GatewayError:
            known = ", ".join(sorted(by_id)) or "none"
            problems.append(f"{path}: {name!r} is neither a deployment id ({known}) nor a served model name")
            return ()

    def merge(base: dict[str, Any], raw: Any, path: str) -> dict[str, Any]:
        return {**base, **CONTEXT.parse(raw, path, problems, defaults=False)}

    base = merge({}, config.raw.get("context"), "context")
    result: dict[str, ContextSettings] = {}
    for route in config.models:
        path = f"models.{route.pattern}"
        values = merge(base, route.settings.get("context"), f"{path}.context")
        fallback: list[Deployment] = []
        raw_fallback = route.settings.get("context_fallback")
        if raw_fallback is not None:
            for i, name in enumerate(CONTEXT_FALLBACK.parse(raw_fallback, f"{path}.context_fallback", problems)):
                fallback += [d for d in deployments(name, f"{path}.context_fallback.{i}") if d not in fallback]
        summarize_with = values.get("summarize_with")
        own = route.settings.get("context")
        where = f"{path}.context" if isinstance(own, dict) and "summarize_with" in own else "context"
        summarizers = deployments(summarize_with, f"{where}.summarize_with") if summarize_with else ()
        result[route.pattern] = ContextSettings(
            enabled=values.get("enabled", True),
            trim_to=float(values.get("trim_to", TRIM_TO)),
            fallback=tuple(fallback),
            summarize_with=summarize_with,
            summarizers=summarizers,
            summary_max_tokens=values.get("summary_max_tokens", SUMMARY_MAX_TOKENS),
        )
    if problems:
        raise ConfigError(config.source, sorted(set(problems)))
    return result


# --- estimating and measuring ------------------------------------------------------------------


def _text_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


def estimate_tokens(request: CanonicalRequest) -> int:
    """A cheap upper-leaning estimate of a request's input tokens (no tokenizer):
    UTF-8 bytes / :data:`CHARS_PER_TOKEN`, media at fixed estimates. ~10 µs per
    50 messages."""
    size = 0
    media = 0
    for message in request.get("messages") or ():
        if type(message) is not dict:
            continue
        size += 12
        content = message.get("content")
        if type(content) is str:
            size += _text_size(content)
        elif type(content) is list:
            for part in content:
                if type(part) is dict:
                    text = part.get("text")
                    if type(text) is str:
                        size += _text_size(text)
                    else:
                        media += media_tokens_estimate(part)
        calls = message.get("tool_calls")
        if calls:
            for call in calls:
                fn = call.get("function") if type(call) is dict else None
                if type(fn) is dict:
                    size += 12 + len(str(fn.get("name") or "")) + _text_size(str(fn.get("arguments") or ""))
    tools = request.get("tools")
    if tools:
        try:
            size += len(orjson.dumps(tools))
        except TypeError:
            size += 1000 * len(tools)
    return int(size / CHARS_PER_TOKEN) + media


@dataclass(slots=True)
class Measure:
    """Exact token counts of one request with one encoding."""

    counts: list[int]
    """Tokens of each message, framing included."""
    tools: int
    total: int
    chain: list[bytes]
    """``chain[i]`` identifies the conversation up to message ``i`` (tenant-seeded)."""


class _TokenCache:
    """Token counts per (encoding, message digest), shared by every request.

    A conversation grows by appending, so each turn tokenizes only its new messages.
    Used from worker threads: single dict operations are atomic; eviction takes a lock.
    """

    def __init__(self, size: int = _TOKEN_CACHE_SIZE) -> None:
        self.size = size
        self._data: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def get(self, key: bytes) -> int | None:
        return self._data.get(key)

    def put(self, key: bytes, value: int) -> None:
        data = self._data
        if len(data) >= self.size:
            with self._lock:
                for old in list(data)[: self.size // 10]:  # drop the oldest tenth
                    data.pop(old, None)
        data[key] = value


def _encoding(name: str) -> Any:
    """The tiktoken encoding, or :class:`_Estimator` when tiktoken cannot load."""
    try:
        return get_encoding(name)
    except Exception as exc:  # tiktoken raises several kinds when its files are missing
        log.warning("no %s tokenizer (%s): estimating token counts", name, exc)
        return _Estimator()


class _Estimator:
    """Stands in for a tiktoken encoding: one token per :data:`CHARS_PER_TOKEN` bytes."""

    @staticmethod
    def encode_ordinary(text: str) -> range:
        return range(int(_text_size(text) / CHARS_PER_TOKEN) + 1)


def measure(
    request: CanonicalRequest, encoding_name: str, cache: _TokenCache, seed: bytes = b""
) -> Measure:
    """Count every message and the tools exactly (blocking: run it in a thread).

    Without a tokenizer (tiktoken's files missing offline) the counts fall back to
    the estimate, so fitting degrades instead of failing the request."""
    enc = _encoding(encoding_name)
    tag = encoding_name.encode()
    counts: list[int] = []
    chain: list[bytes] = []
    link = hashlib.sha1(seed, usedforsecurity=False).digest()
    for message in request.get("messages") or ():
        if not isinstance(message, dict):
            counts.append(0)
            chain.append(link)
            continue
        try:
            digest = hashlib.sha1(orjson.dumps(message), usedforsecurity=False).digest()
        except TypeError:
            digest = None
        count = cache.get(tag + digest) if digest else None
        if count is None:
            count = message_tokens(message, enc)
            if digest:
                cache.put(tag + digest, count)
        counts.append(count)
        link = hashlib.sha1(link + (digest or b"?"), usedforsecurity=False).digest()
        chain.append(link)
    tools = request.get("tools")
    tool_count = 0
    if tools:
        try:
            key = tag + b"tools" + hashlib.sha1(orjson.dumps(tools), usedforsecurity=False).digest()
        except TypeError:
            key = None
        cached = cache.get(key) if key else None
        tool_count = cached if cached is not None else tools_tokens(tools, enc)
        if key and cached is None:
            cache.put(key, tool_count)
    return Measure(counts, tool_count, PER_REPLY + sum(counts) + tool_count, chain)


# --- trimming ------------------------------------------------------------------------------------


_INSTRUCTION_ROLES = frozenset({"system", "developer"})  # OpenAI's newer name for system


def _role(message: Any) -> str:
    return message.get("role", "") if isinstance(message, dict) else ""


def drop_groups(messages: Sequence[dict[str, Any]]) -> list[list[int]]:
    """Groups of message indexes that may be dropped, in the order to drop them.

    Each group goes as a whole. Never in any group: the leading system messages, the
    last user message and the most recent unit (see the module docstring).
    """
    n = len(messages)
    head = 0
    while head < n and _role(messages[head]) in _INSTRUCTION_ROLES:
        head += 1
    units: list[list[int]] = []
    i = head
    while i < n:
        message = messages[i]
        if _role(message) == "assistant" and message.get("tool_calls"):
            j = i + 1
            while j < n and _role(messages[j]) == "tool":
                j += 1
            units.append(list(range(i, j)))
            i = j
        else:
            units.append([i])
            i += 1
    turns: list[list[list[int]]] = []
    for unit in units:
        if not turns or _role(messages[unit[0]]) == "user":
            turns.append([unit])
        else:
            turns[-1].append(unit)
    groups: list[list[int]] = []
    for number, turn in enumerate(turns):
        last_turn = number == len(turns) - 1
        anchored = _role(messages[turn[0][0]]) == "user"
        rest = turn[1:] if anchored else turn
        if last_turn:
            groups.extend(rest[:-1])  # the final unit stays, and so does the user message
            break
        if not anchored:
            groups.extend(rest)
        elif not rest:
            groups.append(turn[0])
        else:
            # The user message leaves with its turn's last unit: never two user
            # messages side by side (strict chat templates refuse that).
            groups.extend(rest[:-1])
            groups.append(turn[0] + rest[-1])
    return groups


def choose_drops(groups: list[list[int]], counts: Sequence[int], total: int, target: int) -> tuple[list[int], int]:
    """Drop groups, oldest first, until ``total`` is at most ``target`` (or none is
    left). Returns the sorted dropped indexes and the new total."""
    dropped: list[int] = []
    for group in groups:
        if total <= target:
            break
        total -= sum(counts[i] for i in group)
        dropped.extend(group)
    return sorted(dropped), total


@dataclass(slots=True)
class _Boundary:
    """A trim chosen for a conversation prefix, kept so the next turn can reuse it.

    The dropped messages are kept as ``(start, stop)`` runs: a trim drops whole turns
    from the oldest, so a few runs describe it, where a tuple of indexes could hold
    thousands of integers per remembered conversation."""

    runs: tuple[tuple[int, int], ...]
    summary: str | None
    summarizer: str | None

    @classmethod
    def of(cls, dropped: Sequence[int], summary: str | None, summarizer: str | None) -> _Boundary:
        """The boundary for sorted indexes ``dropped``."""
        runs: list[tuple[int, int]] = []
        for i in dropped:
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
        return cls(tuple(runs), summary, summarizer)

    @property
    def dropped(self) -> list[int]:
        """The dropped indexes, sorted."""
        return [i for start, stop in self.runs for i in range(start, stop)]


_MAX_RUNS = 64
"""A trim with more runs than this (never seen: trims drop whole turns) is not remembered."""


def plan_trim(
    messages: Sequence[dict[str, Any]], counts: Sequence[int], total: int, target: int, floor: int
) -> tuple[list[int], int]:
    """The messages to drop (sorted) to bring ``total`` to ``target``, or, when that
    is out of reach, to ``floor``; and the total after. The CPU part of a trim (run
    in a worker thread for long requests)."""
    groups = drop_groups(messages)
    dropped, after = choose_drops(groups, counts, total, target)
    if after > target:
        # The target is out of reach: keep as much as the budget allows.
        dropped, after = choose_drops(groups, counts, total, floor)
    return dropped, after


def keep_messages(
    messages: Sequence[dict[str, Any]], dropped: Sequence[int], counts: Sequence[int], total: int
) -> tuple[list[dict[str, Any]], int]:
    """The messages left after dropping ``dropped``, and their tokens."""
    drop = set(dropped)
    kept = [msg for i, msg in enumerate(messages) if i not in drop]
    return kept, total - sum(counts[i] for i in drop)


async def _work(size: int, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``, in a worker thread when ``size`` (messages) is large."""
    if size > THREAD_FROM:
        return await asyncio.to_thread(function, *args)
    return function(*args)


# --- overflow errors -------------------------------------------------------------------------------


def is_context_overflow(error: BaseException) -> bool:
    """Whether an upstream error says the prompt did not fit the model's window."""
    if not isinstance(error, UpstreamError) or error.upstream_status in (0, 429):
        return False
    text = error.message.lower()
    if any(marker in text for marker in _NOT_OVERFLOW):
        return False
    return any(marker in text for marker in _OVERFLOW_MARKERS)


def _first_number(patterns: list[re.Pattern[str]], text: str) -> int | None:
    for pattern in patterns:
        match = pattern.search(text)
        if match:
            try:
                return int(match.group(1).replace(",", ""))
            except ValueError:
                continue
    return None


def overflow_error(error: UpstreamError) -> UpstreamError:
    """The same error, worded as Claude Code expects (``prompt is too long: ...``)."""
    if "prompt is too long" in error.message.lower():
        return error
    return UpstreamError(
        f"prompt is too long: {error.message}",
        upstream_status=error.upstream_status,
        deployment=error.deployment,
        headers=error.headers,
        retry_after=error.retry_after,
        kind=error.kind,
    )


# --- the manager and the per-request plan ----------------------------------------------------------

Recorder = Callable[[RequestContext, dict[str, Any]], Awaitable[None]]
Opener = Callable[..., Any]


class ContextManager:
    """Context-window fitting for one gateway: settings, caches, the summariser."""

    def __init__(
        self,
        config: Config,
        resolve: Callable[[str], ModelRoute],
        *,
        open_upstream: Opener,
        record: Recorder,
    ) -> None:
        self._settings = load_settings(config, resolve)
        self._default = ContextSettings()
        self._open = open_upstream
        self._record = record
        self.tokens = _TokenCache()
        self._boundaries: OrderedDict[bytes, _Boundary] = OrderedDict()

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

    def remembered(self, chain: list[bytes]) -> tuple[int, _Boundary] | None:
        """The latest remembered trim whose conversation prefix this one shares."""
        boundaries = self._boundaries
        for i in range(len(chain) - 1, -1, -1):
            found = boundaries.get(chain[i])
            if found is not None:
                boundaries.move_to_end(chain[i])
                return i, found
        return None

    def remember(self, key: bytes, boundary: _Boundary) -> None:
        if len(boundary.runs) > _MAX_RUNS:
            return
        self._boundaries[key] = boundary
        self._boundaries.move_to_end(key)
        while len(self._boundaries) > _BOUNDARY_CACHE_SIZE:
            self._boundaries.popitem(last=False)

    # -- the summariser --

    async def summarize(
        self,
        ctx: RequestContext,
        settings: ContextSettings,
        messages: list[dict[str, Any]],
        previous: str | None,
    ) -> tuple[str, Deployment] | None:
        """One short summary of ``messages`` (continuing ``previous``), or None if no
        summariser answered (the caller then trims without one)."""
        for deployment in settings.summarizers:
            window = deployment.info.max_input_tokens or SUMMARIZER_WINDOW
            limit_chars = max(2_000, int((window - settings.summary_max_tokens - 600) * CHARS_PER_TOKEN * 0.9))
            transcript = render_transcript(messages, limit_chars, previous)
            words = max(50, int(settings.summary_max_tokens * 0.6))
            body: CanonicalRequest = {
                "model": deployment.model,
                "messages": [
                    {"role": "system", "content": SUMMARY_PROMPT.format(words=words)},
                    {"role": "user", "content": transcript},
                ],
                "max_tokens": settings.summary_max_tokens,
                "temperature": 0,
            }
            prepared = prepare_body(body, deployment, RequestHints(), stream=False)
            started = time.perf_counter()
            try:
                async with asyncio.timeout(deployment.timeouts.total or 300):
                    chunks = [c async for c in self._open(deployment, prepared, stream=False) if c is not KEEPALIVE]
                completion = chunks_to_completion(chunks, deployment.model)
            except (GatewayError, TimeoutError) as exc:
                log.warning("%s: summariser %s failed: %s", ctx.request_id, deployment.id, getattr(exc, "message", exc))
                await self._record_summary(ctx, deployment, None, started, exc)
                continue
            text = (completion["choices"][0]["message"].get("content") or "").strip()
            usage = Usage.from_openai(completion.get("usage"))
            await self._record_summary(ctx, deployment, usage, started, None)
            if text:
                return text, deployment
        return None

    async def _record_summary(
        self, ctx: RequestContext, deployment: Deployment, usage: Usage | None, started: float, error: Any
    ) -> None:
        usage = usage or Usage()
        info = deployment.info
        await self._record(ctx, {
            "kind": "context_summary",
            "request_id": ctx.request_id,
            "public_model": ctx.public_model,
            "deployment": deployment.id,
            "provider": deployment.provider,
            "model": deployment.model,
            "ok": error is None,
            "error": getattr(error, "message", None) if error is not None else None,
            "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
            "cost_usd": usage.input_tokens * info.input_cost_per_token + usage.output_tokens * info.output_cost_per_token,
            "ms": (time.perf_counter() - started) * 1000,
            "time": time.time(),
        })


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif part.get("type") == "image_url":
                    parts.append("[image]")
                elif part.get("type") == "file":
                    parts.append("[document]")
        text = "\n".join(parts)
    else:
        text = ""
    for call in message.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            text += f"\n[calls tool {fn.get('name')}] {fn.get('arguments') or ''}"
    return text.strip()


def render_transcript(messages: list[dict[str, Any]], limit_chars: int, previous: str | None) -> str:
    """The dropped messages as a plain transcript for the summariser, each message
    shortened (its start and end kept) so the whole stays within ``limit_chars``."""
    labels = {"tool": "tool result", "assistant": "assistant", "user": "user", "system": "system note"}
    texts = [(labels.get(_role(m), _role(m) or "message"), _message_text(m)) for m in messages]
    head = f"Summary so far:\n{previous}\n\nWhat happened next:\n" if previous else "Conversation:\n"
    budget = max(200, limit_chars - len(head))
    total = sum(len(t) + len(label) + 4 for label, t in texts)
    cap = max(200, budget // max(1, len(texts))) if total > budget else None
    lines = []
    for label, text in texts:
        if cap is not None and len(text) > cap:
            half = cap // 2
            text = f"{text[:half]} [...] {text[-half:]}"
        lines.append(f"[{label}] {text}")
    return head + "\n\n".join(lines)


def answer_reserve(deployment: Deployment, max_tokens: int | None) -> int:
    """The room kept for the answer: ``max_tokens`` (:data:`DEFAULT_RESERVE` when
    unset) clamped to the model's output limit."""
    reserve = max_tokens if max_tokens is not None else DEFAULT_RESERVE
    limit = deployment.info.max_output_tokens
    return min(reserve, limit) if limit else reserve


def input_budget(deployment: Deployment, max_tokens: int | None) -> tuple[int, int, int] | None:
    """(input budget, answer reserve, window) of a request asking ``max_tokens``, or
    None when the deployment's window is unknown.

    The budget is the most input the gateway sends without trimming: the window minus
    the answer's room (:func:`answer_reserve`, at most half the window), less a margin
    for models tiktoken only approximates. ``clasp code`` sizes Claude Code's own
    compaction window with it, so Claude Code compacts before the gateway would trim.
    """
    window = deployment.info.max_input_tokens
    if not window:
        return None
    reserve = min(answer_reserve(deployment, max_tokens), window // 2)
    factor = 1.0 if deployment.provider in _EXACT_PROVIDERS else APPROXIMATE_MARGIN
    return int((window - reserve) * factor), reserve, window


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
        alternatives = [d for d in self.candidates[1:]] + [d for d in self.settings.fallback if d not in self.candidates]
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
        previous: tuple[int, _Boundary] | None = manager.remembered(m.chain)
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
                made = await manager.summarize(self.ctx, settings, dropped_messages, prior)
                if made is not None:
                    summary, summarizer = made[0], made[1].id
        if dropped:
            manager.remember(m.chain[dropped[-1]], _Boundary.of(dropped, summary, summarizer))

        kept, after = await _work(len(messages), keep_messages, messages, dropped, m.counts, m.total)
        if summary:
            position = next((i for i, msg in enumerate(kept) if _role(msg) not in _INSTRUCTION_ROLES), len(kept))
            note = {"role": "user", "content": SUMMARY_HEADER.format(n=len(dropped)) + summary}
            kept.insert(position, note)
            after += message_tokens(note, _encoding(encoding_for_model(deployment.model)))
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
        limit = _first_number(_LIMIT_PATTERNS, text)
        in_messages = _first_number([_IN_MESSAGES], text)
        their_need = in_messages or _first_number(_NEED_PATTERNS, text)
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

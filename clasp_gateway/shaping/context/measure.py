"""How many tokens a request takes, and how many a window leaves for it.

A cheap estimate first (:func:`estimate_tokens`: a character count, no tokenizer);
an exact count (:func:`measure`, tiktoken, cached per message: a growing
conversation only tokenizes its new messages) only near a window; and the budget
a deployment's window leaves once the answer's room is reserved (:func:`input_budget`)."""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

import orjson

from ...types import CanonicalRequest, Deployment
from ..tokens import PER_REPLY, get_encoding, media_tokens_estimate, message_tokens, tools_tokens

log = logging.getLogger("clasp.context")

CHARS_PER_TOKEN = 3.0
"""Divisor of the cheap estimate (UTF-8 bytes per token). Real o200k ratios on Claude
Code traffic are 3.8-4.8, so the estimate runs high: erring high only costs an exact
count, erring low could send an overlong request."""

DEFAULT_RESERVE = 4096
"""Answer room reserved when the request sets no ``max_tokens``."""

APPROXIMATE_MARGIN = 0.9
"""Budget factor for models whose tokenizer tiktoken only approximates."""

_EXACT_PROVIDERS = frozenset({"openai", "azure"})
"""Providers whose tokenizer tiktoken has exactly (no margin needed)."""
TOKEN_CACHE_SIZE = 200_000
"""Token counts remembered across requests (per message and encoding)."""


def _text_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


def estimate_tokens(request: CanonicalRequest, *, tools_size: int | None = None) -> int:
    """A cheap upper-leaning estimate of a request's input tokens (no tokenizer):
    UTF-8 bytes / :data:`CHARS_PER_TOKEN`, media at fixed estimates. ~10 µs per
    50 messages. ``tools_size``: the length of the tools' JSON when the caller has it
    (``request_facts``: the fingerprint serialises them too), else it is measured here."""
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
        if tools_size is not None:
            size += tools_size
        else:
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


class TokenCache:
    """Token counts per (encoding, message digest), shared by every request.

    A conversation grows by appending, so each turn tokenizes only its new messages.
    Used from worker threads: single dict operations are atomic; eviction takes a lock.
    """

    def __init__(self, size: int = TOKEN_CACHE_SIZE) -> None:
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


def encoding_or_estimate(name: str) -> Any:
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
    request: CanonicalRequest, encoding_name: str, cache: TokenCache, seed: bytes = b""
) -> Measure:
    """Count every message and the tools exactly (blocking: run it in a thread).

    Without a tokenizer (tiktoken's files missing offline) the counts fall back to
    the estimate, so fitting degrades instead of failing the request."""
    enc = encoding_or_estimate(encoding_name)
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

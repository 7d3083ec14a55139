"""Telling a "context length exceeded" from other upstream errors, and what it says.

Providers word it in a dozen ways (and some rate-limit errors look alike); the
numbers a message states (the window, the tokens sent) let the retry trim to what
really fits. The error a client gets says ``prompt is too long``, the phrase Claude
Code recognises."""

from __future__ import annotations

import re

from ...errors import UpstreamError

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
LIMIT_PATTERNS = [
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
IN_MESSAGES = re.compile(rf"{_NUM} in the messages", re.IGNORECASE)
NEED_PATTERNS = [
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


def is_context_overflow(error: BaseException) -> bool:
    """Whether an upstream error says the prompt did not fit the model's window."""
    if not isinstance(error, UpstreamError) or error.upstream_status in (0, 429):
        return False
    text = error.message.lower()
    if any(marker in text for marker in _NOT_OVERFLOW):
        return False
    return any(marker in text for marker in _OVERFLOW_MARKERS)


def first_number(patterns: list[re.Pattern[str]], text: str) -> int | None:
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


def overflow_numbers(text: str) -> tuple[int | None, int | None, int | None]:
    """What an overflow message states, when it does: (the window, the tokens "in
    the messages", the tokens the request needed)."""
    in_messages = first_number([IN_MESSAGES], text)
    return first_number(LIMIT_PATTERNS, text), in_messages, in_messages or first_number(NEED_PATTERNS, text)

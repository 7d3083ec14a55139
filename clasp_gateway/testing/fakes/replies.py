"""Reply types: what a fake upstream should answer to the next request.

Each reply is a small dataclass describing *what* the provider says; how it is
written on the wire (JSON vs SSE vs NDJSON, field names, quirks) is decided by
the flavor of the :class:`~clasp_gateway.testing.fakes.server.FakeUpstream` that serves it
(see :mod:`clasp_gateway.testing.fakes.wire`).

Every reply accepts two keyword-only timing knobs:

* ``delay`` – seconds to wait before anything (headers included) is sent.
* ``chunk_delay`` – seconds between stream events (``None``: use the server's
  default, which is 0 except for the "fragmented" flavor's own pacing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .record import Recorded

__all__ = [
    "Cut",
    "Error",
    "Hang",
    "Html",
    "Malformed",
    "Raw",
    "Reasoning",
    "Reply",
    "Script",
    "Text",
    "ToolCalls",
]


@dataclass
class Text:
    """Plain assistant text.

    Streamed as content deltas of ``chunk_size`` characters (default 4; the
    "fragmented" flavor uses random 1–3 character deltas when ``None``).
    ``usage`` is ``(prompt_tokens, completion_tokens)``; by default
    ``prompt_tokens = len(json.dumps(messages)) // 4`` and
    ``completion_tokens = max(1, len(text) // 4)``.
    """

    text: str
    chunk_size: int | None = None
    finish_reason: str = "stop"
    usage: tuple[int, int] | None = None
    _: KW_ONLY
    delay: float = 0.0
    chunk_delay: float | None = None


@dataclass
class ToolCalls:
    """One or more tool calls, optionally preceded by assistant text.

    ``calls`` is a list of ``(name, arguments)`` where ``arguments`` is a dict
    (serialised by the flavor) or a raw JSON string sent verbatim.  Streamed
    OpenAI style: a header delta per call (index, id, type, name, ``""``
    arguments) followed by ~7 character argument pieces; call 0 completely,
    then call 1 …  ``interleave=True`` round-robins the pieces of all calls.
    """

    calls: list[tuple[str, dict | str]]
    text: str | None = None
    finish_reason: str = "tool_calls"
    usage: tuple[int, int] | None = None
    interleave: bool = False
    _: KW_ONLY
    delay: float = 0.0
    chunk_delay: float | None = None


@dataclass
class Reasoning:
    """DeepSeek / vLLM style reasoning deltas followed by the answer text.

    ``field`` names the delta/message key carrying the reasoning
    (``"reasoning_content"`` for DeepSeek/vLLM<0.10, ``"reasoning"`` for
    vLLM>=0.10/OpenRouter/Ollama's OpenAI endpoint).
    """

    reasoning: str
    text: str
    field: str = "reasoning_content"
    chunk_size: int | None = None
    usage: tuple[int, int] | None = None
    _: KW_ONLY
    delay: float = 0.0
    chunk_delay: float | None = None


@dataclass
class Error:
    """An HTTP error answered before any body.

    ``body=None`` uses the provider-shaped default for ``status`` (OpenAI:
    ``{"error": {"message", "type", "param", "code"}}``, Azure:
    ``{"error": {"code", "message"}}``, Ollama native: ``{"error": "..."}``).
    A ``dict`` is sent as JSON, a ``str`` verbatim (as JSON if it parses,
    else ``text/plain``).  ``headers`` are added to the response, e.g.
    ``{"retry-after": "2"}``.
    """

    status: int
    body: dict | str | None = None
    headers: dict[str, str] | None = None
    _: KW_ONLY
    delay: float = 0.0


@dataclass
class Cut:
    """Serve ``reply`` but abort the TCP connection (RST) part way.

    Streams: after ``after_chunks`` stream events (0: right after the headers)
    with no terminating chunk and no ``[DONE]``.  Non-stream requests: the
    headers (with the full ``Content-Length``) plus, if ``after_chunks > 0``,
    the first half of the body.  ``before_headers=True`` drops the
    connection without sending a single byte.
    """

    reply: Reply
    after_chunks: int = 0
    before_headers: bool = False
    _: KW_ONLY
    delay: float = 0.0
    chunk_delay: float | None = None


@dataclass
class Hang:
    """Accept the request and go silent for ``seconds``.

    Without ``reply`` nothing at all is sent; when the time is up (or the
    server stops) the connection is aborted.  With ``reply`` and
    ``after_chunks=None`` the reply is sent normally after the pause (a slow
    first byte); with ``after_chunks=N`` the headers and the first N stream
    events are sent, then the stream stalls, then resumes (idle timeout).
    Never blocks other requests; ends promptly when the server stops.
    """

    seconds: float = 3600.0
    reply: Reply | None = None
    after_chunks: int | None = None
    _: KW_ONLY
    delay: float = 0.0
    chunk_delay: float | None = None


@dataclass
class Html:
    """A ``text/html`` page instead of JSON (misconfigured proxy / portal)."""

    status: int = 200
    _: KW_ONLY
    delay: float = 0.0


@dataclass
class Malformed:
    """200 with broken JSON.

    Non-stream: ``application/json`` whose body is a truncated completion.
    Stream: a valid first event, then an event whose JSON is cut off, then
    the normal terminator.
    """

    _: KW_ONLY
    delay: float = 0.0


@dataclass
class Raw:
    """Exactly these bytes, whatever the flavor: a whole ``body``, or ``events``
    written one write each (a stream), with ``content_type`` and ``headers``.

    For what no real provider sends on purpose but a broken or hostile one may:
    an endless line, an answer larger than any limit, an error event that quotes
    the key it was sent, an error body in HTML.
    """

    body: bytes | None = None
    events: list[bytes] | None = None
    status: int = 200
    content_type: str = "text/event-stream"
    headers: dict[str, str] | None = None
    _: KW_ONLY
    delay: float = 0.0
    chunk_delay: float | None = None


Reply = Text | ToolCalls | Reasoning | Error | Cut | Hang | Html | Malformed | Raw
"""Anything a fake upstream can be told to answer."""

Script = Callable[[dict, "Recorded"], "Reply | None"]
"""``fn(body, recorded) -> reply`` consulted when the queue is empty.

``body`` is the parsed JSON request body (``{}`` if it was not JSON).
Returning ``None`` means the default ``Text("ok")``.
"""

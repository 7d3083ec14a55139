"""Prompts and answers stay out of the logs unless a team opts in.

A log line is written for a person operating the gateway, and what users ask and
get is not theirs to read. So, whatever the log level:

- while a request is served, every log record (the gateway's, a plugin's, LiteLLM's,
  tracebacks included) is checked for pieces of the request's messages: any piece of
  40 characters or more, or a whole short message, becomes ``[content]``. The check
  is lazy: the request's texts are indexed (24-character windows every 16
  characters) only when a record is written during the request, which on the happy
  path is the access line alone (built from counters, and exempt);
- LiteLLM's own loggers never go below INFO (at DEBUG they print request bodies);
- provider errors that quote an answer are logged by kind, not text (the call
  sites use :func:`describe_error`).

Opting in (``logging.content: on``, a team in ``logging.teams``, or a key with
``metadata.log_content: true``) turns this off for that team's or key's requests
and writes one ``clasp.content`` line per request with its messages and answer
(redacted of secrets like every line, bounded by ``logging.max_chars``). The answer
is collected per chunk only when clasp.yaml has a ``logging:`` section (a key's
metadata alone then logs the prompt): without one, no per-chunk hook runs.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from .hookspecs import hookimpl
from .types import CanonicalRequest, Chunk, RequestContext
from .validation import Boolean, Field, Integer, MapOf, Section

__all__ = ["CONTENT", "LOGGING", "ContentAnswer", "ContentLog", "RequestContent", "describe_error", "install_content_guard",
           "register"]

log = logging.getLogger("clasp.content")

LOGGING = Section({
    "content": Field(Boolean(), False),
    "teams": Field(MapOf(Boolean(), expected="a mapping of team name to true or false"), {}),
    "max_chars": Field(Integer(1000), 65_536),
})
"""``logging:``: ``content`` (log every request's prompt and answer), ``teams`` (per
team, over ``content``), ``max_chars`` (longest content line)."""

CONTENT = "clasp.content"
"""``ctx.state`` key of the request's :class:`RequestContent`."""

_WINDOW = 24
_STRIDE = 16
_SHORT = _WINDOW + _STRIDE
"""Texts shorter than this are matched whole (a window might not fit aligned)."""
_MIN_WHOLE = 8
_SAFE_LOGGERS = ("clasp.access",)
"""Loggers whose lines are built from counters and names only (never content)."""
_LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Proxy", "LiteLLM Router", "litellm")


@dataclass(slots=True)
class RequestContent:
    """The texts of one request, and whether its team or key opted in."""

    texts: list[str]
    opted_in: bool
    answer: list[str] = field(default_factory=list)
    _windows: frozenset[str] | None = None
    _whole: tuple[str, ...] = ()

    def _index(self) -> frozenset[str]:
        if self._windows is None:
            windows: set[str] = set()
            whole: list[str] = []
            for text in self.texts:
                if len(text) < _SHORT:
                    if len(text.strip()) >= _MIN_WHOLE:
                        whole.append(text)
                    continue
                windows.update(text[i : i + _WINDOW] for i in range(0, len(text) - _WINDOW + 1, _STRIDE))
            self._windows, self._whole = frozenset(windows), tuple(sorted(whole, key=len, reverse=True))
        return self._windows

    def scrub(self, text: str) -> str:
        """``text`` with every piece of the request's messages replaced by ``[content]``."""
        windows = self._index()
        for whole in self._whole:
            if whole in text:
                text = text.replace(whole, "[content]")
        if not windows or len(text) < _WINDOW:
            return text
        hits = [i for i in range(len(text) - _WINDOW + 1) if text[i : i + _WINDOW] in windows]
        if not hits:
            return text
        # Widen each hit to the whole matching run (a piece may start between two windows).
        spans: list[list[int]] = []
        for i in hits:
            if spans and i <= spans[-1][1]:
                spans[-1][1] = i + _WINDOW
            else:
                spans.append([i, i + _WINDOW])
        out, last = [], 0
        for start, end in spans:
            start = max(last, start - _STRIDE)
            end = min(len(text), end + _STRIDE)
            out += [text[last:start], "[content]"]
            last = end
        out.append(text[last:])
        return "".join(out)


_current: contextvars.ContextVar[RequestContent | None] = contextvars.ContextVar("clasp_request_content", default=None)


def texts_of(request: CanonicalRequest) -> list[str]:
    """Every text of a canonical request's messages (content and tool-call arguments)."""
    texts: list[str] = []
    for message in request.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        for call in message.get("tool_calls") or []:
            arguments = (call.get("function") or {}).get("arguments") if isinstance(call, dict) else None
            if isinstance(arguments, str):
                texts.append(arguments)
    return texts


def describe_error(exc: BaseException) -> str:
    """An exception for a log line when its text may quote a prompt or an answer (a
    provider's body LiteLLM could not parse): its kind, and its text only when the
    request opted in to content logging."""
    current = _current.get()
    if current is not None and current.opted_in:
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__} (text withheld: it may quote the conversation)"


class _ContentFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        current = _current.get()
        if record.name == log.name:
            return current is not None and current.opted_in
        if current is None or current.opted_in or record.name in _SAFE_LOGGERS:
            return True
        try:
            message = record.getMessage()
        except Exception:
            return True
        cleaned = current.scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = current.scrub(record.exc_text)
        return True


_filter = _ContentFilter()


def install_content_guard(handler: logging.Handler) -> None:
    """Keep content out of what ``handler`` writes (see the module doc), and keep
    LiteLLM's loggers at INFO or above (their DEBUG lines are request bodies)."""
    handler.addFilter(_filter)
    for name in _LITELLM_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)


class ContentLog:
    """The core's hooks binding each request's texts (always) and writing the content
    line of requests that opted in (registered by the app: :func:`for_config`)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.everyone: bool = settings["content"]
        self.teams: dict[str, bool] = settings["teams"]
        self.max_chars: int = settings["max_chars"]

    def opted_in(self, ctx: RequestContext) -> bool:
        """A key's ``metadata.log_content``, else its team's setting, else ``content``."""
        principal = ctx.principal
        if principal is not None:
            flag = principal.metadata.get("log_content")
            if isinstance(flag, bool):
                return flag
            if principal.team is not None and principal.team in self.teams:
                return self.teams[principal.team]
        return self.everyone

    @hookimpl(tryfirst=True)
    def before_call(self, ctx: RequestContext, request: CanonicalRequest) -> None:
        """Bind the request's texts to this task's log records; answer nothing."""
        content = RequestContent(texts_of(request), self.opted_in(ctx))
        ctx.state[CONTENT] = content
        _current.set(content)

    @hookimpl
    def record(self, ctx: RequestContext, event: dict[str, Any]) -> None:
        """The request's content line, once, when it ended (opted-in requests only)."""
        content: RequestContent | None = ctx.state.get(CONTENT)
        if event.get("kind") != "request" or content is None or not content.opted_in:
            return
        line = orjson.dumps({"prompt": content.texts, "answer": "".join(content.answer)}).decode()
        if len(line) > self.max_chars:
            line = line[: self.max_chars] + "…(cut)"
        log.info("%s content %s", ctx.request_id, line)


class ContentAnswer:
    """Keeps the answer's text of requests that opted in; registered only with a
    ``logging:`` section, so that without one no per-chunk hook runs at all."""

    @hookimpl
    def on_stream_chunk(self, ctx: RequestContext, chunk: Chunk) -> None:
        """Keep the answer's text, for requests that opted in only."""
        content: RequestContent | None = ctx.state.get(CONTENT)
        if content is None or not content.opted_in:
            return
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                content.answer.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                arguments = (call.get("function") or {}).get("arguments")
                if isinstance(arguments, str):
                    content.answer.append(arguments)


def register(pm: Any, raw: Any, present: bool) -> None:
    """Register the core's content hooks on ``pm`` for a ``logging:`` section (checked
    by :func:`clasp_gateway.config.parse_config`); ``present``: the file has one."""
    if pm.get_plugin("clasp_gateway.content_log") is None:
        pm.register(ContentLog(LOGGING.parse(raw, "logging", [])), name="clasp_gateway.content_log")
    if present and pm.get_plugin("clasp_gateway.content_answer") is None:
        pm.register(ContentAnswer(), name="clasp_gateway.content_answer")

"""How the gateway's log lines look: text for a person, or one JSON object per line.

``server.log_format: json`` makes every line the process writes through logging a
JSON object (the gateway's, uvicorn's, LiteLLM's, tracebacks included)::

    {"time": "2026-12-07T02:31:05.123Z", "level": "INFO", "logger": "clasp.access",
     "message": "req_… anthropic POST /v1/messages … status=200", "request_id": "req_…",
     "api": "anthropic", "method": "POST", "path": "/v1/messages", "status": 200, ...}

``request_id`` is the id of the request being served when the line was written (a
context variable the app's error boundary sets), so every line a request causes,
in any module or plugin, can be found by it. The access line adds its fields
(:func:`clasp_gateway.shell.access.fields`). A traceback is in ``exc``. Everything
is redacted (:mod:`clasp_gateway.redact`) before it is written.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson

from .content_log import install_content_guard
from .redact import RedactingFilter, RedactingFormatter, install_redaction, redact

__all__ = ["ACCESS_FIELDS", "FORMATS", "JsonFormatter", "current_request_id", "handler_for", "request_id_var"]

FORMATS = ("text", "json")
"""``server.log_format`` choices."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

ACCESS_FIELDS = "clasp_access"
"""``LogRecord`` attribute (``extra=``) holding the access line's fields."""

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("clasp_request_id", default=None)
"""The id of the request this task is serving (set by the app's error boundary)."""


def current_request_id() -> str | None:
    """The id of the request being served in this task, if any."""
    return request_id_var.get()


def _time(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, ``request_id`` (``null`` outside a request), the access line's fields
    when it is one, and ``exc``/``stack`` when there is a traceback. Redacted, and on
    one line whatever the message holds (JSON escapes its newlines). ``worker``: one of
    several worker processes; each line then has its ``pid``."""

    def __init__(self, *, worker: bool = False) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what was meant
            message = f"{record.msg} {record.args}"
        line: dict[str, Any] = {
            "time": _time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(message),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        if self.worker:
            line["pid"] = record.process
        fields = getattr(record, ACCESS_FIELDS, None)
        if isinstance(fields, dict):
            line.update({k: v for k, v in fields.items() if k not in line})
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = redact(record.exc_text)
        if record.stack_info:
            line["stack"] = redact(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def handler_for(log_format: str, stream: Any = None, *, worker: bool = False) -> logging.Handler:
    """A stream handler (stderr by default) writing ``log_format`` lines, redacted
    (``worker``: with the process id)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    text_format = TEXT_FORMAT.replace("%(asctime)s", "%(asctime)s [%(process)d]") if worker else TEXT_FORMAT
    formatter: logging.Formatter = (JsonFormatter(worker=worker) if log_format == "json"
                                    else RedactingFormatter(text_format))
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())
    return handler


def setup(level: str, log_format: str = "text", *, worker: bool = False) -> None:
    """Send every logger's records (uvicorn's and LiteLLM's too) to one handler on the
    root logger, in ``log_format``, redacted; the access line at INFO, uvicorn's own
    access log off (the gateway writes its own)."""
    install_redaction()
    root = logging.getLogger()
    handler = handler_for(log_format, worker=worker)
    install_content_guard(handler)  # prompts and answers stay out unless a team opts in
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    if "litellm" in sys.modules:  # imported already (by a plugin): its handlers go now
        from .wire.litellm_adapter import adopt_litellm_logging

        adopt_litellm_logging()

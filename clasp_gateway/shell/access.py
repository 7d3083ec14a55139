"""The access log: exactly one line per HTTP request, whatever its outcome.

The app's :class:`~clasp_gateway.shell.app.ErrorBoundary` opens an :class:`AccessRecord`
for every request and writes its line (logger ``clasp.access``) when the answer has
ended, so refused keys, invalid bodies, unknown models, upstream failures, cut
streams and unexpected errors leave a trace as successes do. Routes say who called
(:func:`note`) as soon as they know it; the pipeline leaves the request's
``kind: "request"`` event (deployment, tokens, cost, status, ``cut``) in the request
context, and the line reads it. Keys never appear: only their configured name.

A line::

    req_0123… anthropic POST /v1/messages model=claude-x class=coding key=ci team=qa
        deployment=openai/gpt-4o attempts=1 status=200 in=812 out=95 cost=0.003180 ms=842.1

(one line; ``class`` is the request's class, ``-`` before the pipeline classified it;
``cut`` is appended when a stream ended early). Probes of ``/health`` and
``/ready`` are logged at DEBUG, everything else at INFO. With ``server.log_format:
json`` the same values are the line's JSON fields (:func:`fields`, :mod:`clasp_gateway.logs`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from ..logs import ACCESS_FIELDS
from ..types import Principal, RequestContext

access_log = logging.getLogger("clasp.access")

STATE_KEY = "clasp.access"
"""ASGI ``scope["state"]`` key of the request's :class:`AccessRecord`."""

REQUEST_EVENT = "clasp.request_event"
"""``ctx.state`` key where :meth:`Gateway.finish` leaves the request's event."""

_PROBES = ("/health", "/ready")


@dataclass(slots=True)
class AccessRecord:
    """What the access line of one request says, filled in while it is served."""

    request_id: str
    method: str
    path: str
    api: str = "-"
    """"anthropic" or "openai" for API routes, "-" for others."""
    started: float = field(default_factory=time.perf_counter)
    status: int | None = None
    """The HTTP status sent (``None``: no answer started)."""
    principal: Principal | None = None
    ctx: RequestContext | None = None


def note(request: Request, *, principal: Principal | None = None, ctx: RequestContext | None = None) -> None:
    """Tell the access log who is calling (once authenticated) and, once the route
    built it, the request's context (the pipeline's event is read from it)."""
    record = request.scope.get("state", {}).get(STATE_KEY)
    if not isinstance(record, AccessRecord):
        return
    if principal is not None:
        record.principal = principal
    if ctx is not None:
        record.ctx = ctx
        if ctx.principal is not None:
            record.principal = ctx.principal


def _word(value: Any) -> str:
    text = "-" if value is None or value == "" else str(value)
    return "_".join(text.split()) or "-"


def fields(record: AccessRecord, ended: float) -> dict[str, Any]:
    """What the access line of ``record`` says, as typed fields (the JSON log's
    ``server.log_format: json`` keys; ``None`` where the text line has ``-``)."""
    ctx = record.ctx
    event: dict[str, Any] = (ctx.state.get(REQUEST_EVENT) or {}) if ctx is not None else {}
    principal = record.principal
    usage = event.get("usage") or {}
    attempts = event.get("attempts") or []
    cost = event.get("cost_usd", 0.0 if not event else None)
    return {
        "request_id": record.request_id,
        "api": ctx.api if ctx is not None else record.api,
        "method": record.method,
        "path": record.path,
        "model": (ctx.public_model or None) if ctx is not None else None,
        "class": (ctx.request_class or None) if ctx is not None else None,
        "key": ((principal.name or principal.key_id) or None) if principal is not None else None,
        "team": principal.team if principal is not None else None,
        "deployment": event.get("deployment") or (attempts[-1].get("deployment") if attempts else None),
        "attempts": len(attempts),
        "status": event.get("status") or record.status or 499,  # 499: the client left before any answer
        "input_tokens": int(usage.get("input_tokens") or 0),
        "output_tokens": int(usage.get("output_tokens") or 0),
        "cost_usd": round(cost, 6) if isinstance(cost, (int, float)) else None,
        "ms": round((ended - record.started) * 1000, 1),
        "cut": bool(event.get("cut")),
    }


def format_line(record: AccessRecord, ended: float) -> str:
    """The access line of ``record`` (see the module doc for its fields)."""
    return _text(fields(record, ended))


def _text(f: dict[str, Any]) -> str:
    cost = f["cost_usd"]
    parts = [
        f["request_id"], f["api"], f["method"], f["path"],
        "model=" + _word(f["model"]),
        "class=" + _word(f["class"]),
        "key=" + _word(f["key"]),
        "team=" + _word(f["team"]),
        "deployment=" + _word(f["deployment"]),
        f"attempts={f['attempts']}",
        f"status={f['status']}",
        f"in={f['input_tokens']}",
        f"out={f['output_tokens']}",
        "cost=" + (f"{cost:.6f}" if isinstance(cost, (int, float)) else "-"),
        f"ms={f['ms']:.1f}",
    ]
    if f["cut"]:
        parts.append("cut")
    return " ".join(parts)


def write(record: AccessRecord) -> None:
    """Log the line of ``record``. Never raises: a log line must not fail an answer."""
    try:
        values = fields(record, time.perf_counter())
        quiet = record.path in _PROBES and (record.status or 0) < 400
        access_log.log(logging.DEBUG if quiet else logging.INFO, "%s", _text(values),
                       extra={ACCESS_FIELDS: values, "request_id": record.request_id})
    except Exception:
        logging.getLogger("clasp.app").exception("%s: could not write the access line", record.request_id)

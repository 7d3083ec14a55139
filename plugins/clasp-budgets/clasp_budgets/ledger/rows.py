"""``record`` events as ledger rows: one dict per table row, every column present
(a batch insert needs the same keys in every row), in the tables' column order
(``tests/test_ledger_writer.py`` checks both against ``tables.py``; checking it per row
cost a tuple of 33 names per request)."""

from __future__ import annotations

import math
from typing import Any

# Each helper takes the common case (an exact int, float or str) first: a request's two
# rows call them ~30 times, on the request's path.

def _int(value: Any) -> int:
    kind = type(value)
    if kind is int:
        return value  # type: ignore[no-any-return]
    if kind is float:
        return int(value) if math.isfinite(value) else 0
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else 0


def _float(value: Any) -> float | None:
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None  # type: ignore[no-any-return]
    if kind is int:
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _text(value: Any, limit: int = 2000) -> str | None:
    if value is None:
        return None
    if type(value) is str and len(value) <= limit:
        return value  # type: ignore[no-any-return]
    text = value if isinstance(value, str) else str(value)
    return text[:limit]


def _tags(value: Any) -> dict[str, str]:
    if not value or not isinstance(value, dict):  # (most requests carry no tags)
        return {}
    return {str(k)[:200]: str(v)[:500] for k, v in list(value.items())[:64]}


def request_row(event: dict[str, Any], prompt_hash: str | None = None) -> dict[str, Any]:
    """The ``ledger_requests`` row of a ``kind: "request"`` event."""
    usage = event.get("usage") or {}
    latency = _float(event.get("latency_ms")) or 0.0
    started = _float(event.get("started_at"))
    if started is None:
        started = (_float(event.get("time")) or 0.0) - latency / 1000
    attempts = event.get("attempts")
    status = _int(event.get("status"))
    row = {
        "request_id": str(event["request_id"]),
        "ts": started,
        "api": _text(event.get("api")),
        "public_model": _text(event.get("public_model")),
        "request_class": _text(event.get("request_class")),
        "provider": _text(event.get("provider")),
        "model": _text(event.get("model")),
        "deployment": _text(event.get("deployment")),
        "region": _text(event.get("region")),
        "key_id": _text(event.get("key_id")),
        "key_name": _text(event.get("key_name")),
        "team": _text(event.get("team")),
        "user_id": _text(event.get("user")),
        "project": _text(event.get("project")),
        "tags": _tags(event.get("tags")),
        "input_tokens": _int(usage.get("input_tokens")),
        "output_tokens": _int(usage.get("output_tokens")),
        "cache_read_tokens": _int(usage.get("cache_read_input_tokens")),
        "cache_write_tokens": _int(usage.get("cache_creation_input_tokens")),
        "reasoning_tokens": _int(usage.get("reasoning_tokens")),
        "cost_usd": _float(event.get("cost_usd")),
        "cache_hit": _text(event.get("cache_hit")),
        "saved_usd": _float(event.get("saved_usd")) or 0.0,
        "ttfb_ms": _float(event.get("ttfb_ms")),
        "duration_ms": latency,
        "status": status,
        "error": _text(event.get("error")),
        "cut": bool(event.get("cut")),
        "stream": bool(event.get("stream")),
        "attempts": len(attempts) if isinstance(attempts, list) else 0,
        "retries": _int(event.get("retries")),
        "fallbacks": _int(event.get("fallbacks")),
        "prompt_hash": prompt_hash,
    }
    return row


def attempt_row(event: dict[str, Any], number: int) -> dict[str, Any]:
    """The ``ledger_attempts`` row of a ``kind: "attempt"`` event; ``number``: its
    place among the request's attempt events (1, 2, ...), the row's key."""
    usage = event.get("usage") or {}
    ms = _float(event.get("ms")) or 0.0
    started = _float(event.get("started_at"))
    if started is None:
        started = (_float(event.get("time")) or 0.0) - ms / 1000
    upstream = event.get("upstream_status")
    row = {
        "request_id": str(event["request_id"]),
        "attempt": number,
        "ts": started,
        "deployment": _text(event.get("deployment")),
        "provider": _text(event.get("provider")),
        "model": _text(event.get("model")),
        "region": _text(event.get("region")),
        "ok": bool(event.get("ok")),
        "upstream_status": _int(upstream) if upstream is not None else None,
        "error": _text(event.get("error")),
        "ms": ms,
        "ttfb_ms": _float(event.get("ttfb_ms")),
        "input_tokens": _int(usage.get("input_tokens")),
        "output_tokens": _int(usage.get("output_tokens")),
        "cost_usd": _float(event.get("cost_usd")),
    }
    return row

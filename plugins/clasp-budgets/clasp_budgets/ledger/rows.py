"""``record`` events as ledger rows: one tuple per table row, every column in the
tables' column order (``REQUEST_COLUMNS``, ``ATTEMPT_COLUMNS``), the JSON column
(``tags``) already as JSON text. That is the form the driver takes
(:meth:`clasp_gateway.BulkInsert.execute_values`), so a batch costs no per-row
conversion, and a tuple of 33 values costs about a third of a 33-key dict to build.
``tests/test_ledger_writer.py`` checks the builders against ``tables.py``.

The spool keeps rows as JSON objects keyed by column (:func:`as_mapping`; replay turns
them back with :meth:`clasp_gateway.BulkInsert.values`), so a spool written before
rows were tuples replays the same.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from .tables import ATTEMPT_COLUMNS, REQUEST_COLUMNS

Values = tuple[Any, ...]
"""A row's values in its table's column order."""

_TAGS = REQUEST_COLUMNS.index("tags")
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


def _tags(value: Any) -> str:
    """The tags as JSON text: a dict of str to str, bounded."""
    if not value or not isinstance(value, dict):  # (most requests carry no tags)
        return "{}"
    return orjson.dumps({str(k)[:200]: str(v)[:500] for k, v in list(value.items())[:64]}).decode()


def request_row(event: dict[str, Any], prompt_hash: str | None = None) -> Values:
    """The ``ledger_requests`` row of a ``kind: "request"`` event (``REQUEST_COLUMNS``)."""
    usage = event.get("usage") or {}
    latency = _float(event.get("latency_ms")) or 0.0
    started = _float(event.get("started_at"))
    if started is None:
        started = (_float(event.get("time")) or 0.0) - latency / 1000
    attempts = event.get("attempts")
    status = _int(event.get("status"))
    return (
        str(event["request_id"]),  # request_id
        started,  # ts
        _text(event.get("api")),  # api
        _text(event.get("public_model")),  # public_model
        _text(event.get("request_class")),  # request_class
        _text(event.get("provider")),  # provider
        _text(event.get("model")),  # model
        _text(event.get("deployment")),  # deployment
        _text(event.get("region")),  # region
        _text(event.get("key_id")),  # key_id
        _text(event.get("key_name")),  # key_name
        _text(event.get("team")),  # team
        _text(event.get("user")),  # user_id
        _text(event.get("project")),  # project
        _tags(event.get("tags")),  # tags
        _int(usage.get("input_tokens")),  # input_tokens
        _int(usage.get("output_tokens")),  # output_tokens
        _int(usage.get("cache_read_input_tokens")),  # cache_read_tokens
        _int(usage.get("cache_creation_input_tokens")),  # cache_write_tokens
        _int(usage.get("reasoning_tokens")),  # reasoning_tokens
        _float(event.get("cost_usd")),  # cost_usd
        _text(event.get("cache_hit")),  # cache_hit
        _float(event.get("saved_usd")) or 0.0,  # saved_usd
        _float(event.get("ttfb_ms")),  # ttfb_ms
        latency,  # duration_ms
        status,  # status
        _text(event.get("error")),  # error
        bool(event.get("cut")),  # cut
        bool(event.get("stream")),  # stream
        len(attempts) if isinstance(attempts, list) else 0,  # attempts
        _int(event.get("retries")),  # retries
        _int(event.get("fallbacks")),  # fallbacks
        prompt_hash,  # prompt_hash
    )


def attempt_row(event: dict[str, Any], number: int) -> Values:
    """The ``ledger_attempts`` row of a ``kind: "attempt"`` event (``ATTEMPT_COLUMNS``);
    ``number``: its place among the request's attempt events (1, 2, ...), the row's key."""
    usage = event.get("usage") or {}
    ms = _float(event.get("ms")) or 0.0
    started = _float(event.get("started_at"))
    if started is None:
        started = (_float(event.get("time")) or 0.0) - ms / 1000
    upstream = event.get("upstream_status")
    return (
        str(event["request_id"]),  # request_id
        number,  # attempt
        started,  # ts
        _text(event.get("deployment")),  # deployment
        _text(event.get("provider")),  # provider
        _text(event.get("model")),  # model
        _text(event.get("region")),  # region
        bool(event.get("ok")),  # ok
        _int(upstream) if upstream is not None else None,  # upstream_status
        _text(event.get("error")),  # error
        ms,  # ms
        _float(event.get("ttfb_ms")),  # ttfb_ms
        _int(usage.get("input_tokens")),  # input_tokens
        _int(usage.get("output_tokens")),  # output_tokens
        _float(event.get("cost_usd")),  # cost_usd
    )


def as_mapping(kind: str, values: Values) -> dict[str, Any]:
    """A row as the spool keeps it: a JSON object keyed by column, ``tags`` an object
    (``kind``: ``"r"``, a request row; ``"a"``, an attempt row)."""
    if kind == "r":
        row = dict(zip(REQUEST_COLUMNS, values, strict=True))
        row["tags"] = orjson.loads(values[_TAGS])
        return row
    return dict(zip(ATTEMPT_COLUMNS, values, strict=True))

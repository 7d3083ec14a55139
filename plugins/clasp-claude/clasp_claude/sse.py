"""Server-sent-event encoding of Anthropic stream events.

Anthropic streams are ``event: NAME\\ndata: JSON\\n\\n`` frames; the payload's
``type`` repeats the event name. orjson writes compact UTF-8, which is what the
official SDKs parse.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

__all__ = ["encode_event", "encode_events"]


def encode_event(name: str, payload: dict[str, Any]) -> bytes:
    """One SSE frame: ``b"event: NAME\\ndata: {json}\\n\\n"``."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def encode_events(events: Iterable[tuple[str, dict[str, Any]]]) -> bytes:
    """Several frames as one buffer (one write per upstream chunk, not per event)."""
    return b"".join(
        b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n" for name, payload in events
    )

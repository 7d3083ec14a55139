"""A fingerprint of the canonical request, for "a cache would have served this"
reports: a SHA-256 of its canonical JSON (sorted keys), never the text itself.

Fields that do not change the answer (``stream``, ``stream_options``, ``metadata``,
``user``) are left out, so the same prompt asked streaming and not counts as one.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

_VOLATILE = frozenset({"stream", "stream_options", "metadata", "user"})


def prompt_hash(request: dict[str, Any]) -> str | None:
    """The request's fingerprint (64 hex digits), or ``None`` if it cannot be encoded."""
    try:
        body = orjson.dumps(
            {k: v for k, v in request.items() if k not in _VOLATILE},
            option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
            default=str,
        )
    except (TypeError, orjson.JSONEncodeError):
        return None
    return hashlib.sha256(body).hexdigest()

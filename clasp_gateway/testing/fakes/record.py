"""What a fake upstream saw: one :class:`Recorded` per HTTP request."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["Recorded"]


@dataclass
class Recorded:
    """A request as received, recorded before any reply is chosen.

    ``headers`` is case-insensitive (``rec.headers["authorization"]`` works
    whatever the client's spelling); ``query`` keeps the last value of each
    parameter; ``body`` is the parsed JSON body or ``None`` when the body is
    empty or not JSON; ``raw`` is the body exactly as received.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDictProxy[str]
    body: Any
    raw: bytes
    at: float = field(default_factory=time.monotonic)

    @classmethod
    def build(cls, method: str, path: str, query: dict[str, str], headers: Any, raw: bytes) -> Recorded:
        """Make a record, parsing ``raw`` as JSON when possible."""
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        return cls(method, path, query, CIMultiDictProxy(CIMultiDict(headers)), body, raw)

    @property
    def json(self) -> dict:
        """The body as a dict (``{}`` when it is not a JSON object)."""
        return self.body if isinstance(self.body, dict) else {}

    @property
    def stream(self) -> bool:
        """Whether the request asked for a stream (``"stream": true``)."""
        return self.json.get("stream") is True

    @property
    def bearer(self) -> str | None:
        """The token of an ``Authorization: Bearer …`` header, if any."""
        auth = self.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

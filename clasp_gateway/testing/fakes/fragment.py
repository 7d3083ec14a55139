"""Chop stream events into the awkward TCP writes real proxies produce.

Used by the "fragmented" flavor: each SSE event is split at random byte
offsets – including inside the ``data:`` field name and inside multi-byte
UTF-8 sequences – some events end in ``\\r\\n`` instead of ``\\n``, and SSE
comment lines (``: keep-alive``) are sprinkled between events.
"""

from __future__ import annotations

import random

__all__ = ["KEEP_ALIVE", "fragment_event"]

KEEP_ALIVE = b": keep-alive\n\n"


def _split_points(data: bytes, rng: random.Random) -> list[int]:
    """Byte offsets (exclusive of 0 and len) at which to cut ``data``."""
    n = len(data)
    if n < 2:
        return []
    points = {rng.randint(1, n - 1) for _ in range(rng.randint(1, 4))}
    if data.startswith(b"data:") and rng.random() < 0.5:
        points.add(rng.randint(1, min(5, n - 1)))  # inside "data:" / before the space
    continuation = [i for i in range(1, n) if 0x80 <= data[i] <= 0xBF]
    if continuation:
        # Always cut inside at least one multi-byte character.
        points.add(rng.choice(continuation))
    return sorted(points)


def fragment_event(event: bytes, rng: random.Random) -> list[bytes]:
    """The writes for one event: maybe a keep-alive comment, then the pieces.

    ``event`` is a complete ``data: …\\n\\n`` event; with some probability its
    line endings are turned into ``\\r\\n``.  Concatenating the returned
    pieces gives a valid SSE byte stream.
    """
    writes: list[bytes] = []
    if rng.random() < 0.25:
        writes.append(KEEP_ALIVE if rng.random() < 0.5 else KEEP_ALIVE.replace(b"\n", b"\r\n"))
    if rng.random() < 0.3 and event.endswith(b"\n\n"):
        # The JSON payload never contains a raw newline, so this only touches line ends.
        event = event.replace(b"\n", b"\r\n")
    start = 0
    for point in _split_points(event, rng):
        writes.append(event[start:point])
        start = point
    writes.append(event[start:])
    return writes

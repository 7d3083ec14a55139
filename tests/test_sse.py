"""SSE decoding survives any split of the byte stream."""

from __future__ import annotations

import random

from clasp_gateway.wire.sse import SSEDecoder

STREAM = (
    'data: {"a": "h\u00e9llo \U0001F600"}\r\n\r\n'
    ": keep-alive\n\n"
    "event: message\ndata: {\"b\": 1}\n\n"
    "data: line1\ndata: line2\n\n"
    "data: [DONE]\n\n"
).encode()
EXPECTED = ['{"a": "h\u00e9llo \U0001F600"}', '{"b": 1}', "line1\nline2", "[DONE]"]


def decode(pieces: list[bytes]) -> list[str]:
    decoder = SSEDecoder()
    out: list[str] = []
    for piece in pieces:
        out += decoder.feed(piece)
    return out + decoder.flush()


def test_whole_stream() -> None:
    assert decode([STREAM]) == EXPECTED


def test_every_single_byte_split() -> None:
    assert decode([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_random_splits_including_inside_utf8_and_crlf() -> None:
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 20)))
        pieces = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
        assert decode(pieces) == EXPECTED


def test_bare_cr_line_endings_and_unterminated_last_event() -> None:
    assert decode([b"data: x\r\rdata: y"]) == ["x", "y"]

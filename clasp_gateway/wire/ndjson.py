"""Incremental NDJSON decoding (newline-delimited JSON: Ollama's native stream).

The NDJSON sibling of :mod:`.sse`: bytes in, complete lines out, split-safe,
linear and bounded (:class:`~.reads.FrameTooLarge` past ``max_line``)."""

from __future__ import annotations

from .reads import FrameTooLarge, ReadLimits


class NDJSONDecoder:
    """Feed bytes, get complete lines (newline-delimited JSON, Ollama's stream).

    Works on bytes and decodes only complete lines, so a read that splits a
    multi-byte UTF-8 character cannot corrupt it. Blank lines are skipped. Linear
    and bounded like :class:`~clasp_gateway.wire.sse.SSEDecoder`: an unfinished line is
    appended to, never re-scanned, and a line over ``max_line`` bytes (finished or
    not) raises :class:`~clasp_gateway.wire.reads.FrameTooLarge`.
    """

    __slots__ = ("_buf", "max_line")

    def __init__(self, max_line: int = ReadLimits().max_line_bytes) -> None:
        self._buf = bytearray()
        self.max_line = max_line

    def feed(self, raw: bytes) -> list[str]:
        end = raw.rfind(b"\n")
        pending = self._buf
        if end < 0:
            pending += raw
            if len(pending) > self.max_line:
                raise FrameTooLarge(self.max_line)
            return []
        if pending:
            pending += raw[:end]
            block = bytes(pending)
            pending.clear()
        else:
            block = raw[:end]
        if len(raw) - end - 1 > self.max_line:
            raise FrameTooLarge(self.max_line)
        pending += raw[end + 1 :]
        lines = block.split(b"\n")
        if len(block) > self.max_line and any(len(line) > self.max_line for line in lines):
            raise FrameTooLarge(self.max_line)
        return [line.decode("utf-8", "replace") for line in lines if line.strip()]

    def flush(self) -> list[str]:
        """End of input: a last line without a newline still counts."""
        tail = bytes(self._buf)
        self._buf.clear()
        return [tail.decode("utf-8", "replace")] if tail.strip() else []

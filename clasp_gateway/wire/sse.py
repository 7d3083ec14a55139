"""Incremental Server-Sent-Events decoding of an upstream byte stream.

Network reads split events anywhere: inside ``data:``, between ``\\r`` and ``\\n``,
inside a multi-byte UTF-8 sequence. The decoder works on bytes and only decodes a
complete line, so none of those splits can corrupt a character.

It is linear in the bytes it is fed, and bounded: each read is scanned once (a line
that spans many reads is appended to a buffer, never re-copied or re-scanned), and
an unfinished line, or an event's accumulated ``data``, longer than ``max_line``
bytes raises :class:`~clasp_gateway.wire.reads.FrameTooLarge` instead of growing.
"""

from __future__ import annotations

from .reads import FrameTooLarge, ReadLimits

_DEFAULT_MAX_LINE = ReadLimits().max_line_bytes


class SSEDecoder:
    """Feed bytes, get the ``data`` payloads of complete events (as ``str``).

    Comment lines (``: keep-alive``), ``event:``, ``id:`` and ``retry:`` fields are
    ignored: the OpenAI-compatible streams we read carry everything in ``data``.
    """

    __slots__ = ("_buf", "_data", "_size", "_pending_cr", "max_line")

    def __init__(self, max_line: int = _DEFAULT_MAX_LINE) -> None:
        self._buf = bytearray()
        """The unfinished line (only ever appended to)."""
        self._data: list[bytes] = []
        self._size = 0
        """Bytes in ``_data``: the event being accumulated."""
        self._pending_cr = False
        self.max_line = max_line

    def feed(self, raw: bytes) -> list[str]:
        if self._pending_cr and raw.startswith(b"\n"):
            raw = raw[1:]  # the \n of a \r\n split across two reads
        self._pending_cr = raw.endswith(b"\r")
        if b"\r" in raw:
            raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out: list[str] = []
        start = 0
        end = raw.find(b"\n")
        pending = self._buf
        if pending:
            if end < 0:  # still inside a long line: append, never rescan
                pending += raw
                if len(pending) > self.max_line:
                    raise FrameTooLarge(self.max_line)
                return out
            pending += raw[:end]
            line = bytes(pending)
            pending.clear()
            start = end + 1
            end = raw.find(b"\n", start)
            self._line(line, out)
        data = self._data
        while end >= 0:
            line = raw[start:end]
            start = end + 1
            end = raw.find(b"\n", start)
            if not line:
                if data:
                    out.append(b"\n".join(data).decode("utf-8", "replace"))
                    data.clear()
                    self._size = 0
                continue
            if line.startswith(b"data:"):
                self._line(line, out)
            # other fields and comments are ignored
        if start < len(raw):
            if len(raw) - start > self.max_line:
                raise FrameTooLarge(self.max_line)
            pending += raw[start:]
        return out

    def _line(self, line: bytes, out: list[str]) -> None:
        """One complete line (a blank line ends the event)."""
        if not line:
            if self._data:
                out.append(b"\n".join(self._data).decode("utf-8", "replace"))
                self._data.clear()
                self._size = 0
            return
        if line.startswith(b"data:"):
            value = line[5:]
            if value.startswith(b" "):
                value = value[1:]
            self._size += len(value)
            if self._size > self.max_line:
                raise FrameTooLarge(self.max_line)
            self._data.append(value)

    def flush(self) -> list[str]:
        """End of input: an event not followed by a blank line still counts."""
        if self._buf:
            tail = bytes(self._buf)
            self._buf.clear()
            if tail.startswith(b"data:"):
                value = tail[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        if self._data:
            data = list(self._data)
            self._data.clear()
            self._size = 0
            return [b"\n".join(data).decode("utf-8", "replace")]
        return []

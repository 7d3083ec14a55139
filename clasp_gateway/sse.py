"""Incremental Server-Sent-Events decoding of an upstream byte stream.

Network reads split events anywhere: inside ``data:``, between ``\\r`` and ``\\n``,
inside a multi-byte UTF-8 sequence. The decoder works on bytes and only decodes a
complete line, so none of those splits can corrupt a character.
"""

from __future__ import annotations


class SSEDecoder:
    """Feed bytes, get the ``data`` payloads of complete events (as ``str``).

    Comment lines (``: keep-alive``), ``event:``, ``id:`` and ``retry:`` fields are
    ignored: the OpenAI-compatible streams we read carry everything in ``data``.
    """

    __slots__ = ("_buf", "_data", "_pending_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._pending_cr = False

    def feed(self, raw: bytes) -> list[str]:
        if self._pending_cr and raw.startswith(b"\n"):
            raw = raw[1:]  # the \n of a \r\n split across two reads
        self._pending_cr = raw.endswith(b"\r")
        if b"\r" in raw:
            raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + raw if self._buf else raw
        out: list[str] = []
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = buf[start:end]
            start = end + 1
            if not line:
                if self._data:
                    out.append(b"\n".join(self._data).decode("utf-8", "replace"))
                    self._data = []
                continue
            if line.startswith(b"data:"):
                value = line[5:]
                if value.startswith(b" "):
                    value = value[1:]
                self._data.append(value)
            # other fields and comments are ignored
        self._buf = buf[start:]
        return out

    def flush(self) -> list[str]:
        """End of input: an event not followed by a blank line still counts."""
        if self._buf:
            tail, self._buf = self._buf, b""
            if tail.startswith(b"data:"):
                value = tail[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        if self._data:
            data, self._data = self._data, []
            return [b"\n".join(data).decode("utf-8", "replace")]
        return []

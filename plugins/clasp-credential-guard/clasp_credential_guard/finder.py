"""The first credential in a request, and where it is; clean parts remembered.

A Claude Code turn resends its system prompt, its tool definitions and the whole
conversation so far: most of what a request carries was in the previous one. So each
segment (:func:`.texts.segments`) found clean is remembered by a 16-byte BLAKE2b
digest of its exact serialisation (never its text), and skipped when it comes again,
byte for byte: only what is new is scanned. A segment that changed by one character
is another digest, scanned in full; a finding is never remembered (the request is
refused anyway). Cost, first sight and warm: ``bench/credential_guard.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .scan import find_credential_at
from .texts import SEPARATOR, Segment, fingerprint, path_of, segments, texts_of

__all__ = ["REMEMBERED", "Finding", "Scanner", "locate"]

REMEMBERED = 65_536
"""Clean segments remembered per gateway process (16 bytes each, about 8 MB at most
with the dict's own overhead); the older half is forgotten when full."""


@dataclass(slots=True, frozen=True)
class Finding:
    """A credential found in a request: its kind and where, never its text."""

    kind: str
    where: str


def first_in(texts: list[str], kinds: frozenset[str]) -> tuple[str, int] | None:
    """The first credential's kind in ``texts`` (scanned as one text) and the index of
    the text it is in, or ``None``."""
    if not texts:
        return None
    joined = texts[0] if len(texts) == 1 else SEPARATOR.join(texts)
    found = find_credential_at(joined, kinds)
    if found is None:
        return None
    kind, position = found
    end = 0
    for index, text in enumerate(texts):
        end += len(text) + len(SEPARATOR)
        if position < end:
            return kind, index
    return kind, len(texts) - 1


class Scanner:
    """Finds credentials of ``kinds``, remembering the segments it found clean."""

    def __init__(self, kinds: frozenset[str], *, remembered: int = REMEMBERED) -> None:
        self.kinds = kinds
        self.remembered = remembered
        self._clean: dict[bytes, None] = {}

    def first(self, parts: Iterable[Segment]) -> Finding | None:
        """The first credential in ``parts`` (segments, in order), or ``None``."""
        for path, value, note in parts:
            data = fingerprint(value)
            digest = hashlib.blake2b(data, digest_size=16).digest() if data is not None else None
            if digest is not None and digest in self._clean:
                continue
            found = first_in(texts_of(value), self.kinds)
            if found is None:
                if digest is not None:
                    self._remember(digest)
                continue
            kind, index = found
            return Finding(kind, path_of(value, path, index) + note)
        return None

    def _remember(self, digest: bytes) -> None:
        if len(self._clean) >= self.remembered:
            keep = list(self._clean)[self.remembered // 2 :]
            self._clean = dict.fromkeys(keep)
        self._clean[digest] = None


def locate(body: dict[str, Any], kinds: frozenset[str]) -> Finding | None:
    """The first credential in a request ``body`` (either API's shape), scanned in full
    (nothing remembered)."""
    for path, value, note in segments(body):
        found = first_in(texts_of(value), kinds)
        if found is not None:
            kind, index = found
            return Finding(kind, path_of(value, path, index) + note)
    return None

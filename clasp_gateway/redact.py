"""Keeping secrets out of logs, errors and status pages.

Every resolved credential is registered here when the config loads; :func:`redact`
replaces them (and anything shaped like a provider key) before text leaves the
process. A logging filter applies it to every record.
"""

from __future__ import annotations

import logging
import re

_known: set[str] = set()
_KEY_SHAPES = re.compile(
    r"(sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{12,}|AIza[0-9A-Za-z_\-]{20,}|gsk_[A-Za-z0-9]{20,}"
    r"|Bearer\s+[A-Za-z0-9._\-]{16,})"
)


def register_secret(value: str | None) -> None:
    """Remember a secret value so :func:`redact` can hide it (short values are ignored)."""
    if value and len(value) >= 6:
        _known.add(value)


def redact(text: str) -> str:
    """``text`` with every known secret and key-shaped token replaced by ``***``."""
    for secret in _known:
        if secret in text:
            text = text.replace(secret, "***")
    return _KEY_SHAPES.sub("***", text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not kill logging
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True

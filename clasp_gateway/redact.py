"""Keeping secrets out of logs, errors and status pages.

Every resolved credential is registered here when the config loads (and every
Azure AD token when it is fetched); :func:`redact` replaces, before text leaves the
process:

- every known secret;
- any fragment of one: a word that is the last 4+ characters of a known secret
  (``…ME42``), its first 4+ characters, or 8+ characters from inside it (only with a
  digit or a capital: a plain word such as ``sk-proj``, ``token`` or ``upstream`` is
  a format or a name, not a secret);
- masked keys as providers echo them (``sk-proj-****…ME42``, ``****1234``): the
  visible ends are fragments too;
- anything shaped like a provider key (``sk-…``, ``AIza…``, ``Bearer …``).

Keys are named by their reference (``${OPENAI_API_KEY}``, ``file:…``) or position
in a pool and a short non-reversible id (:func:`key_id`), never by any part of them.

In logs, :func:`install_redaction` redacts every record when it is created, so
every handler sees the same clean record (LiteLLM's own handlers included), and
exception tracebacks are rendered and redacted then too; :class:`RedactingFormatter`
redacts the final formatted text again (the gateway's own handler).
"""

from __future__ import annotations

import hashlib
import logging
import re
import traceback
from typing import Any

_known: set[str] = set()
_known_bytes: tuple[bytes, ...] = ()
_fragments: frozenset[str] = frozenset()
"""Prefixes and suffixes (4+ characters) of every known secret."""
_grams: frozenset[str] = frozenset()
"""Every 8-character piece of every known secret (a quick test for inner fragments)."""

_MIN_SECRET = 6
_MIN_FRAGMENT = 4
_MIN_INNER = 8
_KEY_SHAPES = re.compile(
    r"(sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{12,}|AIza[0-9A-Za-z_\-]{20,}|gsk_[A-Za-z0-9]{20,}"
    r"|Bearer\s+[A-Za-z0-9._\-]{16,})"
)
_MASKED = re.compile(r"[\w\-.…]*\*{3,}[\w\-*]*")
"""A word with a run of masking characters (``sk-fa****ME42``, ``****1234``)."""
_WORD = re.compile(r"[A-Za-z0-9_\-+/=]{4,}")


def register_secret(value: str | None) -> None:
    """Remember a secret value so :func:`redact` can hide it, and its fragments
    (short values are ignored: they would redact ordinary words)."""
    global _known_bytes, _fragments, _grams
    if not value or len(value) < _MIN_SECRET or value in _known:
        return
    _known.add(value)
    _known_bytes = tuple(s.encode() for s in sorted(_known, key=len, reverse=True))
    fragments = set(_fragments)
    for n in range(_MIN_FRAGMENT, len(value)):
        # A key's last characters are what a masked echo shows, its first ones what a
        # truncated one shows. A plain word at either end ("clasp" of "clasp-test-...",
        # "sk-proj" of an OpenAI key, "token" ending "azure-ad-token") is a format or a
        # name, not a secret, and hiding it would mangle every log line that says it;
        # from the first digit or capital on, a piece is the key's own. (A masked echo
        # is caught whole by its run of asterisks, whatever its visible ends are.)
        for piece in (value[-n:], value[:n]):
            if _own(piece):
                fragments.add(piece)
    _fragments = frozenset(fragments)
    _grams = _grams | {value[i : i + _MIN_INNER] for i in range(len(value) - _MIN_INNER + 1)}


def _own(piece: str) -> bool:
    """Whether a piece of a secret is its own and not a plain word ("upstream" inside
    "sk-upstream-test-1234", "clasp" leading "clasp-key-..."): it has a digit or a
    capital. Plain words are formats and names, and hiding them would mangle every
    log line that says them."""
    return any(c.isdigit() or c.isupper() for c in piece)


def key_id(value: str | None) -> str:
    """A short, non-reversible id of a secret value (to tell keys apart in logs
    and status pages without showing any of them): 8 hex digits of its SHA-256."""
    if not value:
        return "unset"
    return hashlib.sha256(value.encode()).hexdigest()[:8]


def _fragment(match: re.Match[str]) -> str:
    word = match.group(0)
    if word in _fragments:
        return "***"
    if len(word) >= _MIN_INNER and word[:_MIN_INNER] in _grams and _own(word):
        for secret in _known:
            if word in secret:
                return "***"
    return word


def redact(text: str) -> str:
    """``text`` with every known secret, fragment of one, masked key and key-shaped
    token replaced by ``***``."""
    for secret in _known:
        if secret in text:
            text = text.replace(secret, "***")
    text = _KEY_SHAPES.sub("***", text)
    if "***" in text:
        text = _MASKED.sub("***", text)
    if _fragments:
        # Most text holds no fragment: find that out without rebuilding it.
        for word in _WORD.findall(text):
            if word in _fragments or (len(word) >= _MIN_INNER and word[:_MIN_INNER] in _grams):
                return _WORD.sub(_fragment, text)
    return text


def redact_bytes(data: bytes) -> bytes:
    """``data`` unchanged unless it contains a known secret (then redacted). Cheap
    enough for every relayed stream event: one substring search per secret."""
    for secret in _known_bytes:
        if secret in data:
            return redact(data.decode("utf-8", "replace")).encode()
    return data


def _clean_record(record: logging.LogRecord) -> None:
    """Redact a record in place: its message, its traceback and its stack."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string must not kill logging
        return
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:
        # Rendered now, once, redacted: every formatter reuses ``exc_text``.
        record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts every record it sees (message and traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _clean_record(record)
        return True


class RedactingFormatter(logging.Formatter):
    """A formatter whose whole output (message, traceback, stack) is redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        return redact(super().formatException(ei))


_installed = False


def install_redaction() -> None:
    """Redact every log record as it is created, whichever logger and handler it goes
    to: a library's own handlers (LiteLLM adds one to its loggers at import) format
    the same, already redacted record. Idempotent."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _clean_record(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True

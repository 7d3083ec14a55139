"""Finding credentials in text: one compiled scan, first finding wins.

The scan runs on every guarded request, so it is one pass of one regular expression
over the lower-cased text, made of literals only (``-----begin``, ``akia``, ``ghp_``,
``xox``, ``sk-``, ``password``...): the places where a credential may start. Only
there is a kind's own, precise pattern tried (case-sensitive, anchored at that
place), and the first confirmed credential ends the scan. Two kinds need a second
look at the match:

- an AWS access key id (``AKIA…``) is only an id; it is a credential when a
  40-character secret key sits near it (the pair is what signs requests);
- ``password=…`` / ``secret: …`` is a credential only when the value looks random
  (length, character classes and Shannon entropy), not ``password=<your password>``
  or ``${PASSWORD}``; a value that is itself a known token is named as that token.

Documented example values (``…EXAMPLE…``) are not credentials. A finding names the
kind only: the text is never kept, logged or echoed. Cost: ``bench/credential_guard.py``.
"""

from __future__ import annotations

import math
import re
from collections import Counter

KINDS: dict[str, str] = {
    "private_key": "a private key (PEM)",
    "gcp_service_account": "a Google Cloud service-account key",
    "aws_access_key": "an AWS access key with its secret",
    "github_token": "a GitHub token",
    "slack_token": "a Slack token",
    "anthropic_key": "an Anthropic API key",
    "openai_key": "an OpenAI API key",
    "password": "a password or secret assignment",
}
"""Every kind the guard knows: name (``credential_guard.kinds``) -> how a person reads it."""

_ANCHORS = re.compile(
    r"-----begin|\"private_key\"|a(?:kia|sia|pi.?key|ccess.?token|uth.?token)|g(?:h[pousr]_|ithub_pat_)"
    r"|xox[abposr]-|hooks\.slack\.com|s(?:k-|ecret)|p(?:ass|wd)"
)
"""Where a credential may start, found in the lower-cased text. Literals only, no
named groups, grouped by first letter: the engine then scans fast (measured: a
case-insensitive pattern or named groups make the scan 8-10x slower)."""


def _anchor_kind(found: str) -> str:
    """Which check an anchor leads to (by its first characters)."""
    first = found[0]
    if first == "-":
        return "private_key"
    if first == '"':
        return "gcp_service_account"
    if first == "g":
        return "github_token"
    if first in "xh":
        return "slack_token"
    if found.startswith(("akia", "asia")):
        return "aws_access_key"
    if found == "sk-":
        return "sk"
    return "password"


_CHECKS: dict[str, re.Pattern[str]] = {
    "private_key": re.compile(
        r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"
        r"(?:\s|\\n|\\r)+(?:[A-Za-z][\w-]*:[^\n]*\n)*[A-Za-z0-9+/=]{32}"),
    "gcp_service_account": re.compile(r'"private_key"\s*:\s*"-----BEGIN[A-Z ]*PRIVATE KEY-----'),
    "aws_access_key": re.compile(r"(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Za-z])"),
    "github_token": re.compile(r"gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{60,}"),
    "slack_token": re.compile(r"xox[abposr]-[0-9A-Za-z-]{10,}|hooks\.slack\.com/services/T[0-9A-Z]{6,}/B[0-9A-Z]{6,}/[0-9A-Za-z]{16,}"),
    "anthropic_key": re.compile(r"sk-ant-(?:api|admin|oat)\d{2}-[A-Za-z0-9_-]{32,}"),
    "openai_key": re.compile(r"sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,}T3BlbkFJ[A-Za-z0-9_-]{20,}"
                             r"|sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,}|sk-[A-Za-z0-9]{48}(?![A-Za-z0-9])"),
    "password": re.compile(
        r"(?i:passphrase|password|passwd|pwd|secret[_-]?key|secret|api[_-]?key|access[_-]?token|auth[_-]?token)"
        r"[\"']?\s*[:=]\s*[\"']?(?P<value>[^\s\"'`,;&<>(){}\[\]]{10,})"),
}
"""Each kind's own pattern, tried only where its anchor was found (case-sensitive)."""

_FULL = re.compile("|".join(f"(?P<{kind}>{pattern.pattern})" if kind != "password" else
                            f"(?P<{kind}>{pattern.pattern.replace('(?P<value>', '(?:')})"
                            for kind, pattern in _CHECKS.items()))
"""Every kind at once, for text whose lower-cased form has another length (a case
mapping Unicode may add one day): slower, same findings."""

_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_AWS_WINDOW = 400
"""How far (characters, either side) from an access key id its secret is looked for."""
_MIN_ENTROPY = 3.0
"""Bits per character a ``password=`` value must reach (``hunter2hunter2`` does not;
``Xq7#pL9vR2m!`` does)."""


def entropy(value: str) -> float:
    """Shannon entropy of ``value`` in bits per character."""
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values()) if n else 0.0


def _random_looking(value: str) -> bool:
    if value.startswith(("$", "%", "{{", "<")) or "EXAMPLE" in value.upper() or "*" in value:
        return False  # a reference, a template, a placeholder, a masked value
    classes = sum((any(c.islower() for c in value), any(c.isupper() for c in value), any(c.isdigit() for c in value),
                   any(not c.isalnum() for c in value)))
    return classes >= 2 and entropy(value) >= _MIN_ENTROPY


def _confirmed(kind: str, match: re.Match[str], text: str) -> str | None:
    """The kind of credential ``match`` is (``None``: a look-alike)."""
    found = match.group(0)
    if "EXAMPLE" in found:
        return None  # AWS's documented example key (AKIAIOSFODNN7EXAMPLE) and the like
    if kind == "aws_access_key":
        start, end = match.span()
        window = text[max(0, start - _AWS_WINDOW) : end + _AWS_WINDOW]
        ok = any("EXAMPLE" not in s and _random_looking(s) for s in _AWS_SECRET.findall(window))
        return kind if ok else None
    if kind == "password":
        value = match.group("value") if "value" in match.re.groupindex else found.split("=", 1)[-1]
        for other in ("anthropic_key", "openai_key", "github_token", "slack_token"):  # a known token, named as such
            if _CHECKS[other].search(value):
                return other
        return kind if _random_looking(value) else None
    return kind


def _at(kind: str, text: str, position: int) -> str | None:
    if kind == "sk":
        for name in ("anthropic_key", "openai_key"):
            match = _CHECKS[name].match(text, position)
            if match is not None and (position == 0 or not text[position - 1].isalnum()):
                return _confirmed(name, match, text)
        return None
    if kind in ("aws_access_key", "password", "github_token") and position and text[position - 1].isalpha():
        return None  # inside a word ("bypass", "myAKIA...")
    match = _CHECKS[kind].match(text, position)
    return _confirmed(kind, match, text) if match is not None else None


def find_credential(text: str, kinds: frozenset[str] | None = None) -> str | None:
    """The kind of the first credential in ``text`` (a key of :data:`KINDS`), or ``None``.
    ``kinds`` limits what counts (``None``: every kind)."""
    found = find_credential_at(text, kinds)
    return found[0] if found is not None else None


def find_credential_at(text: str, kinds: frozenset[str] | None = None) -> tuple[str, int] | None:
    """The kind of the first credential in ``text`` and where it starts (an index into
    ``text``), or ``None``. ``kinds`` limits what counts (``None``: every kind)."""
    lowered = text.lower()
    if len(lowered) != len(text):  # U+0130 (İ) is the one letter whose lower case is two characters
        lowered = text.replace("\u0130", "i").lower()
    if len(lowered) != len(text):
        for match in _FULL.finditer(text):
            kind = match.lastgroup
            if kind is not None:
                inner = _CHECKS[kind].match(text, match.start())
                found = _confirmed(kind, inner, text) if inner is not None else None
                if found is not None and (kinds is None or found in kinds):
                    return found, match.start()
        return None
    for anchor in _ANCHORS.finditer(lowered):
        found = _at(_anchor_kind(anchor.group(0)), text, anchor.start())
        if found is not None and (kinds is None or found in kinds):
            return found, anchor.start()
    return None

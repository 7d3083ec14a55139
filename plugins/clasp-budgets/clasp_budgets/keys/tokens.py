"""Virtual key values: made from 32 random bytes, recognised by shape, stored as a hash.

Why SHA-256 and not a slow password hash: the key carries 256 bits of randomness, so
nothing can be guessed from its digest, and the gateway hashes on every cache miss
(a slow hash would be a denial-of-service lever). The digest is what the database
keeps and what lookups use; the key itself exists only in the creator's answer.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

PREFIX = "sk-clasp-"
"""Every virtual key starts with this: anything else is never looked up."""
_BODY_CHARS = 43
"""32 bytes in unpadded base64url."""
_SHAPE = re.compile(r"sk-clasp-[A-Za-z0-9_-]{43}")
DISPLAY_CHARS = 4
"""Characters of the random part shown as the key's display prefix (24 bits: enough to
tell keys apart in a list, nothing towards guessing one)."""


def new_key() -> str:
    """A fresh virtual key."""
    return PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def is_virtual_key(value: str | None) -> bool:
    """Whether ``value`` has a virtual key's exact shape (cheap; no lookup)."""
    return value is not None and len(value) == len(PREFIX) + _BODY_CHARS and _SHAPE.fullmatch(value) is not None


def key_hash(value: str) -> str:
    """The stored form of a key: its SHA-256, hex."""
    return hashlib.sha256(value.encode()).hexdigest()


def display_prefix(value: str) -> str:
    """What lists show instead of the key: ``sk-clasp-AbCd…``."""
    return value[: len(PREFIX) + DISPLAY_CHARS] + "…"


def new_id(kind: str) -> str:
    """A public, non-secret identifier (``key_3f9a0c1d2e4b5a69``)."""
    return f"{kind}_{secrets.token_hex(8)}"

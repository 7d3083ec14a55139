"""``POST /v1/messages/count_tokens``: count a request's input tokens with tiktoken.

The body is validated and translated exactly like a Messages request
(:func:`~clasp_claude.request.to_canonical`, without ``max_tokens``), then counted
the way OpenAI bills chat input with the core's counter
(:func:`clasp_gateway.shaping.tokens.count_canonical`): per-message overhead, text, tool
calls, tool definitions, and Anthropic's size-based estimates for images and PDFs.
History ``thinking`` blocks count zero, as with Anthropic (they are not sent upstream
either). Loading tiktoken offline (:func:`tiktoken_cache_dir`, :func:`get_encoding`)
and choosing an encoding (:func:`encoding_for_model`) live in the core and are
re-exported here.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from typing import Any

from clasp_gateway import count_canonical, encoding_for_model, get_encoding, tiktoken_cache_dir

from .request import IMAGE_TOKENS, PDF_PAGE_TOKENS, to_canonical

__all__ = ["count_tokens", "encoding_for_model", "get_encoding", "tiktoken_cache_dir"]


def _media_tokens(part: dict[str, Any]) -> int:
    ptype = part.get("type")
    if ptype == "image_url":
        return image_tokens(part["image_url"]["url"])
    if ptype == "file":
        return pdf_tokens(part["file"].get("file_data", ""))
    return 0


def count_tokens(body: dict[str, Any], encoding_name: str = "o200k_base") -> int:
    """Input tokens of an Anthropic Messages (or count_tokens) body.

    Raises :class:`~clasp_gateway.errors.InvalidRequestError` for invalid bodies, with
    the same messages as ``/v1/messages``.
    """
    canonical = to_canonical(body, require_max_tokens=False).body
    return count_canonical(canonical, encoding_name, media=_media_tokens)


# -- media estimates -------------------------------------------------------------------

_DATA_URL = re.compile(r"^data:([^;,]+)?(;base64)?,", re.ASCII)
_PDF_PAGE = re.compile(rb"/Type\s*/Page(?!s)")


def _decode_head(url: str, limit: int) -> bytes | None:
    """The first *limit* decoded bytes of a base64 data URL (None for other URLs)."""
    m = _DATA_URL.match(url)
    if not m or not m.group(2):
        return None
    data = url[m.end() : m.end() + (limit // 3 + 1) * 4]
    try:
        return base64.b64decode(data + "=" * (-len(data) % 4), validate=False)
    except (binascii.Error, ValueError):
        return None


def image_size(head: bytes) -> tuple[int, int] | None:
    """Width and height from the first bytes of a PNG, GIF, JPEG or WebP file."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        w, h = struct.unpack(">II", head[16:24])
        return w, h
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        w, h = struct.unpack("<HH", head[6:10])
        return w, h
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        kind = head[12:16]
        if kind == b"VP8X":
            w = int.from_bytes(head[24:27], "little") + 1
            h = int.from_bytes(head[27:30], "little") + 1
            return w, h
        if kind == b"VP8 " and len(head) >= 30:
            w, h = struct.unpack("<HH", head[26:30])
            return w & 0x3FFF, h & 0x3FFF
        if kind == b"VP8L" and len(head) >= 25:
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        return None
    if head[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                i += 1
                continue
            marker = head[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = struct.unpack(">H", head[i + 2 : i + 4])[0]
            # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the size.
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", head[i + 5 : i + 9])
                return w, h
            i += 2 + length
    return None


def image_tokens(url: str) -> int:
    """Anthropic's image cost: ``width * height / 750`` after its resizing (long edge
    at most 1568 px, about 1.15 megapixels); :data:`IMAGE_TOKENS` when unknown."""
    head = _decode_head(url, 64 * 1024)
    size = image_size(head) if head else None
    if not size or size[0] <= 0 or size[1] <= 0:
        return IMAGE_TOKENS
    w, h = size
    scale = min(1.0, 1568 / max(w, h), (1_150_000 / (w * h)) ** 0.5)
    return max(1, int((w * scale) * (h * scale) / 750 + 0.5))


def pdf_tokens(url: str) -> int:
    """A PDF's cost: :data:`PDF_PAGE_TOKENS` per page (pages counted in the file)."""
    m = _DATA_URL.match(url)
    if not m or not m.group(2):
        return PDF_PAGE_TOKENS
    try:
        data = base64.b64decode(url[m.end() :], validate=False)
    except (binascii.Error, ValueError):
        return PDF_PAGE_TOKENS
    pages = len(_PDF_PAGE.findall(data))
    return max(1, pages) * PDF_PAGE_TOKENS

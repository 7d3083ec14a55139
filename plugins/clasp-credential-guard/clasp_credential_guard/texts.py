"""Every text a request carries, in the client's own shape, and where it is.

A credential can ride in any string the provider receives, not only in what a person
typed: a tool's description or a schema's ``default``/``enum``/``examples``, a
``tool_use`` input, a ``tool_result`` (text or nested blocks), a system prompt, a
document. So a request is read as *segments* (``system``, ``tools``, each message),
and a segment as every string in it, with two readings:

- **structure** (messages, content blocks, tool entries): every string value, except
  what is never text (``type``, ids, ``cache_control``, signatures, encrypted blobs,
  an image's or a PDF's base64 ``data`` or ``data:`` URL);
- **free JSON** (a ``tool_use`` ``input``, an ``input_schema`` / ``parameters``, a
  tool call's ``arguments`` once parsed): every string value, read as ``key: value``
  so that ``{"password": "..."}`` is seen as the assignment it is.

The same walk gives, on request, each string's path in the client's terms
(``tools[2].description``, ``messages[4].content[1]``,
``messages[3].tool_calls[0].function.arguments.command``): only computed once a
credential was found, so a clean request pays for none of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

__all__ = ["SEPARATOR", "Segment", "fingerprint", "path_of", "segments", "texts_of"]

SEPARATOR = "\n\x00\n"
"""Between two texts of a segment when they are scanned as one: a line break ends a
``password=`` value and a PEM body cannot run through ``\\x00``, so no finding spans
two texts."""

_NOT_TEXT = frozenset({"type", "id", "role", "tool_use_id", "tool_call_id", "cache_control", "signature", "media_type",
                       "encrypted_content", "encrypted_index", "input_audio"})
"""Keys of a message or block whose value is never text a person or a tool wrote."""
_FREE = frozenset({"input", "input_schema", "parameters"})
"""Keys whose value is arbitrary JSON (a tool's input, a JSON schema): every key counts."""
_BINARY_SOURCES = frozenset({"base64", "redacted_thinking"})
"""``type`` of an object whose ``data`` is binary or encrypted (an image, a PDF)."""
_DATA_URLS = frozenset({"url", "file_data"})
"""Keys of the OpenAI format's image and file parts, whose ``data:`` URL is base64."""

Segment = tuple[str, Any, str]
"""``(path, value, note)``: where a part of the request is, the part, and what to add
after its path in a message (the role: ``messages[2] (user)``)."""


def segments(body: dict[str, Any]) -> Iterator[Segment]:
    """The parts of a request (its own API's shape) that are scanned one by one:
    ``system``, ``tools`` (and legacy ``functions``), then each message."""
    system = body.get("system")
    if system:
        yield "system", system, ""
    for key in ("tools", "functions"):
        tools = body.get(key)
        if tools:
            yield key, tools, ""
    messages = body.get("messages")
    if isinstance(messages, list):
        for index, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            yield f"messages[{index}]", message, f" ({role})" if isinstance(role, str) else ""


def texts_of(value: Any) -> list[str]:
    """Every text of ``value`` (a segment), in a fixed order."""
    texts: list[str] = []
    _structure(value, texts, None, "")
    return texts


def path_of(value: Any, prefix: str, index: int) -> str:
    """The path of the ``index``-th text of ``texts_of(value)``, under ``prefix``."""
    texts: list[str] = []
    paths: list[str] = []
    _structure(value, texts, paths, prefix)
    path = paths[index]
    return path[: -len(".text")] if path.endswith(".text") else path  # a text block is named by its place


def fingerprint(value: Any) -> bytes | None:
    """The exact serialisation of a segment (what a clean verdict is remembered by), or
    ``None`` when it cannot be serialised."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return None


def _add(texts: list[str], paths: list[str] | None, text: str, path: str) -> None:
    texts.append(text)
    if paths is not None:
        paths.append(path)


def _structure(value: Any, texts: list[str], paths: list[str] | None, path: str) -> None:
    if isinstance(value, str):
        if value:
            _add(texts, paths, value, path)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _structure(item, texts, paths, f"{path}[{i}]" if paths is not None else path)
    elif isinstance(value, dict):
        binary = value.get("type") in _BINARY_SOURCES
        for key, item in value.items():
            if key in _NOT_TEXT or (binary and key == "data") or (
                    key in _DATA_URLS and isinstance(item, str) and item.startswith("data:")):
                continue
            child = f"{path}.{key}" if paths is not None else path
            if key in _FREE and isinstance(item, (dict, list)):
                _free(item, texts, paths, child)
            elif key == "arguments" and isinstance(item, str):
                _arguments(item, texts, paths, child)
            else:
                _structure(item, texts, paths, child)


def _arguments(text: str, texts: list[str], paths: list[str] | None, path: str) -> None:
    """A tool call's arguments (a JSON text): read as the object they encode, as an
    Anthropic ``tool_use`` input is (an escaped ``\\"`` or ``\\n`` would hide an
    assignment or a PEM body from the patterns); as text when not JSON."""
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, (dict, list)):
        _free(parsed, texts, paths, path)
    elif text:
        _add(texts, paths, text, path)


def _free(value: Any, texts: list[str], paths: list[str] | None, path: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if paths is not None else path
            if isinstance(item, str):
                _add(texts, paths, f"{key}: {item}", child)
            elif isinstance(item, (dict, list)):
                _free(item, texts, paths, child)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            child = f"{path}[{i}]" if paths is not None else path
            if isinstance(item, str):
                _add(texts, paths, item, child)
            elif isinstance(item, (dict, list)):
                _free(item, texts, paths, child)

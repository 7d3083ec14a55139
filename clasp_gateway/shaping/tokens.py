"""Counting tokens of canonical (OpenAI chat) requests with tiktoken, offline.

tiktoken downloads its BPE files on first use; offline it needs ``TIKTOKEN_CACHE_DIR``
pointing at a copy. LiteLLM ships ``cl100k_base`` and ``o200k_base`` in its package,
so :func:`tiktoken_cache_dir` finds that folder without importing LiteLLM (a 3-5 s
import).

Counting follows OpenAI's chat accounting (openai-cookbook "How to count tokens"):
per-message framing, text, tool calls, tool definitions; images and files get
estimates (a caller may pass its own). Tokenizing costs ~0.1 ms per KB: callers on the
event loop run it with ``asyncio.to_thread``.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable
from typing import Any

import orjson

__all__ = [
    "IMAGE_TOKENS",
    "PDF_PAGE_TOKENS",
    "PER_MESSAGE",
    "PER_REPLY",
    "count_canonical",
    "encoding_for_model",
    "get_encoding",
    "media_tokens_estimate",
    "message_tokens",
    "tiktoken_cache_dir",
    "tools_tokens",
]

PER_MESSAGE = 4
"""Framing of one message: 3 tokens, plus 1 for the role."""
PER_REPLY = 3
"""Every answer is primed with 3 tokens."""
PER_TOOL_CALL = 3
PER_TOOL_DEF = 8  # framing of one function definition
TOOLS_OVERHEAD = 12  # the tools preamble

IMAGE_TOKENS = 1600
"""An image's estimate when its size is not looked at (Anthropic caps near 1,600)."""
PDF_PAGE_TOKENS = 1500
_PDF_BYTES_PER_PAGE = 60_000  # rough: page count guessed from a PDF's size

_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "chatgpt-4o", "gpt-oss", "o1", "o3", "o4", "codex")
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada")

_lock = threading.Lock()
_encodings: dict[str, Any] = {}

MediaCounter = Callable[[dict[str, Any]], int]
"""Tokens of one non-text content part (``image_url``, ``file``...)."""


def tiktoken_cache_dir() -> str | None:
    """LiteLLM's bundled tiktoken files (``litellm/litellm_core_utils/tokenizers``).

    Found through ``importlib.util.find_spec``, which locates the package without
    running its ``__init__``. ``None`` if LiteLLM is not installed.
    """
    try:
        spec = importlib.util.find_spec("litellm")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "litellm_core_utils", "tokenizers")
        if os.path.isdir(path):
            return path
    return None


def get_encoding(name: str = "o200k_base") -> Any:
    """A cached tiktoken encoding, loaded offline from LiteLLM's files if possible."""
    enc = _encodings.get(name)
    if enc is not None:
        return enc
    with _lock:
        enc = _encodings.get(name)
        if enc is None:
            if not os.environ.get("TIKTOKEN_CACHE_DIR"):
                cache = tiktoken_cache_dir()
                if cache:
                    os.environ["TIKTOKEN_CACHE_DIR"] = cache
            import tiktoken

            enc = tiktoken.get_encoding(name)
            _encodings[name] = enc
    return enc


def encoding_for_model(upstream_model: str) -> str:
    """The tiktoken encoding closest to an upstream model's tokenizer.

    GPT-4o/4.1/5, the o-series and unknown models -> ``o200k_base`` (the modern
    default); GPT-4 and GPT-3.5 -> ``cl100k_base``.
    """
    name = upstream_model.rsplit("/", 1)[-1].lower()
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return "o200k_base"


def media_tokens_estimate(part: dict[str, Any]) -> int:
    """A size-free estimate for an image (:data:`IMAGE_TOKENS`) or a PDF (pages
    guessed from its size); 0 for parts that are not media."""
    ptype = part.get("type")
    if ptype == "image_url":
        return IMAGE_TOKENS
    if ptype == "file":
        file = part.get("file")
        data = file.get("file_data") if isinstance(file, dict) else None
        size = len(data) * 3 // 4 if isinstance(data, str) else 0
        return max(1, size // _PDF_BYTES_PER_PAGE) * PDF_PAGE_TOKENS
    return 0


def message_tokens(message: dict[str, Any], encoding: Any, media: MediaCounter | None = None) -> int:
    """Tokens of one canonical message, framing included."""
    encode = encoding.encode_ordinary  # ordinary: text such as "<|endoftext|>" is just text
    media = media or media_tokens_estimate
    total = PER_MESSAGE
    content = message.get("content")
    if isinstance(content, str):
        if content:
            total += len(encode(content))
    elif isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text":
                text = part.get("text")
                if isinstance(text, str) and text:
                    total += len(encode(text))
            else:
                total += media(part)
    for call in message.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        total += PER_TOOL_CALL
        name, args = fn.get("name"), fn.get("arguments")
        if isinstance(name, str) and name:
            total += len(encode(name))
        if isinstance(args, str) and args:
            total += len(encode(args))
    return total


def tools_tokens(tools: list[dict[str, Any]] | None, encoding: Any) -> int:
    """Tokens of the tool definitions (0 without tools)."""
    if not tools:
        return 0
    encode = encoding.encode_ordinary
    total = TOOLS_OVERHEAD
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict):
            continue
        total += PER_TOOL_DEF
        for text in (fn.get("name"), fn.get("description")):
            if isinstance(text, str) and text:
                total += len(encode(text))
        total += len(encode(orjson.dumps(fn.get("parameters") or {}).decode()))
    return total


def count_canonical(
    body: dict[str, Any], encoding_name: str = "o200k_base", media: MediaCounter | None = None
) -> int:
    """Input tokens of a canonical request: messages, tool definitions, reply priming."""
    enc = get_encoding(encoding_name)
    total = PER_REPLY
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            total += message_tokens(message, enc, media)
    return total + tools_tokens(body.get("tools"), enc)

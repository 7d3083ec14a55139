"""Provider prompt caches, as the fakes apply them: which part of a prompt an earlier
request already put in cache, and what the provider reports for it.

Two kinds, as the real services work:

- **prefix** (OpenAI, Azure, DeepSeek, Gemini 2.5+ implicit caching, vLLM): automatic.
  The prompt, rendered in the order the provider reads it (tools, then the system
  prompt, then the messages), is cached as it is sent; a later request of the same
  model reads from cache the longest prefix it shares byte for byte with an earlier
  one, in whole units (OpenAI: 128 tokens once 1,024 match; DeepSeek: 64; Gemini:
  from 2,048).
- **breakpoints** (Anthropic, Bedrock cache points, Claude on Vertex): explicit. Each
  ``cache_control`` / ``cachePoint`` writes the prompt up to it; a later request reads
  the longest written prefix that ends at one of its block boundaries within 20 blocks
  before one of its breakpoints, and writes what lies between that and its last
  breakpoint.

Tokens are ``bytes // 4`` of the rendered prompt (the fakes' usual estimate). A
:class:`PromptCache` also keeps every rendered prompt (``prompts``), which is what the
byte-stability tests compare across a conversation's turns.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CacheUse", "PromptCache", "render_prompt"]

BYTES_PER_TOKEN = 4
BILLING_PREFIX = "x-anthropic-billing-header:"
LOOKBACK_BLOCKS = 20
"""Anthropic checks for a cached prefix at up to 20 block boundaries before a breakpoint."""


@dataclass(frozen=True)
class CacheUse:
    """What one request's prompt cost in the provider's cache terms (tokens)."""

    prompt_tokens: int
    """Every input token (cached ones included)."""
    read: int = 0
    written: int = 0


@dataclass(frozen=True)
class Block:
    """One element of a rendered prompt and whether a breakpoint follows it."""

    data: bytes
    breakpoint: bool = False


def _dump(obj: Any) -> bytes:
    # Key order as received: a prefix cache sees the bytes the gateway sent.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _without(obj: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in keys}


def _openai_blocks(body: dict[str, Any]) -> list[Block]:
    blocks = [Block(_dump(tool)) for tool in body.get("tools") or ()]
    for msg in body.get("messages") or ():
        blocks.append(Block(_dump(msg)))
    return blocks


def _anthropic_blocks(body: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    for tool in body.get("tools") or ():
        if isinstance(tool, dict):
            blocks.append(Block(_dump(_without(tool, "cache_control")), "cache_control" in tool))
    system = body.get("system")
    if isinstance(system, str):
        blocks.append(Block(_dump(system)))
    for block in system if isinstance(system, list) else ():
        if isinstance(block, dict) and str(block.get("text", "")).startswith(BILLING_PREFIX):
            continue  # Claude Code's per-request billing line: Anthropic's own, not prompt
        if isinstance(block, dict):
            blocks.append(Block(_dump(_without(block, "cache_control")), "cache_control" in block))
    for msg in body.get("messages") or ():
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        blocks.append(Block(_dump(msg.get("role"))))
        if isinstance(content, str):
            blocks.append(Block(_dump(content)))
            continue
        for part in content or ():
            if isinstance(part, dict):
                blocks.append(Block(_dump(_without(part, "cache_control")), "cache_control" in part))
    return blocks


def _bedrock_blocks(body: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = []

    def add(items: Any) -> None:
        for item in items or ():
            if isinstance(item, dict) and "cachePoint" in item:
                if blocks:
                    blocks[-1] = Block(blocks[-1].data, True)
            elif item is not None:
                blocks.append(Block(_dump(item)))

    add((body.get("toolConfig") or {}).get("tools"))
    add(body.get("system"))
    for msg in body.get("messages") or ():
        if isinstance(msg, dict):
            blocks.append(Block(_dump(msg.get("role"))))
            add(msg.get("content"))
    return blocks


def _gemini_blocks(body: dict[str, Any]) -> list[Block]:
    blocks = [Block(_dump(tool)) for tool in body.get("tools") or ()]
    if body.get("systemInstruction") is not None:
        blocks.append(Block(_dump(body["systemInstruction"])))
    for content in body.get("contents") or ():
        blocks.append(Block(_dump(content)))
    return blocks


_RENDERERS: dict[str, Callable[[dict[str, Any]], list[Block]]] = {
    "openai": _openai_blocks,
    "anthropic": _anthropic_blocks,
    "bedrock": _bedrock_blocks,
    "gemini": _gemini_blocks,
}


def render_prompt(body: dict[str, Any], api: str) -> list[Block]:
    """A request body of ``api`` (``openai``, ``anthropic``, ``bedrock``, ``gemini``) as
    the blocks of the prompt the provider reads, in its order, breakpoints marked
    (their own bytes left out: a marker moving between turns changes no prompt)."""
    return _RENDERERS[api](body if isinstance(body, dict) else {})


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    lo, hi = 0, n
    while lo < hi:  # binary search on slices: C-speed comparisons
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass
class PromptCache:
    """One provider's prompt cache (shared by the requests a fake serves).

    ``api``: how the provider's request is rendered (:func:`render_prompt`);
    ``kind``: ``"prefix"`` or ``"breakpoints"``; ``min_tokens`` and ``unit``: the
    smallest cached prefix and its granularity (OpenAI 1,024 and 128, DeepSeek 64 and
    64, Gemini 2.5 2,048 and 1, Anthropic 1,024 and 1).
    """

    api: str = "openai"
    kind: str = "prefix"
    min_tokens: int = 1024
    unit: int = 128
    prompts: list[bytes] = field(default_factory=list)
    """Every rendered prompt, in arrival order (breakpoint markers left out)."""
    uses: list[CacheUse] = field(default_factory=list)
    _by_model: dict[str, list[bytes]] = field(default_factory=dict)
    _written: set[bytes] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def account(self, body: dict[str, Any], model: str = "") -> CacheUse:
        """Serve ``body`` from the cache: what it reads, what it writes, its size."""
        blocks = render_prompt(body, self.api)
        prompt = b"".join(b.data for b in blocks)
        with self._lock:
            self.prompts.append(prompt)
            if self.kind == "breakpoints":
                use = self._breakpoints(blocks, prompt, model)
            else:
                use = self._prefix(prompt, model)
            self.uses.append(use)
        return use

    def _prefix(self, prompt: bytes, model: str) -> CacheUse:
        seen = self._by_model.setdefault(model, [])
        best = max((_common_prefix(prompt, old) for old in seen), default=0)
        seen.append(prompt)
        tokens = best // BYTES_PER_TOKEN
        read = 0 if tokens < self.min_tokens else tokens - tokens % self.unit
        return CacheUse(len(prompt) // BYTES_PER_TOKEN, read=read)

    def _breakpoints(self, blocks: list[Block], prompt: bytes, model: str) -> CacheUse:
        ends: list[int] = []
        size = 0
        for block in blocks:
            size += len(block.data)
            ends.append(size)
        marks = [i for i, block in enumerate(blocks) if block.breakpoint]
        total = len(prompt) // BYTES_PER_TOKEN

        def key(end: int) -> bytes:
            return hashlib.sha256(model.encode() + b"\0" + prompt[:end]).digest()

        read_end = 0
        for mark in marks:
            for i in range(mark, max(-1, mark - LOOKBACK_BLOCKS), -1):
                if ends[i] > read_end and key(ends[i]) in self._written:
                    read_end = ends[i]
                    break
        read = read_end // BYTES_PER_TOKEN
        written = 0
        if marks:
            last = ends[marks[-1]]
            if last // BYTES_PER_TOKEN >= self.min_tokens and last > read_end:
                written = last // BYTES_PER_TOKEN - read
            for mark in marks:
                if ends[mark] // BYTES_PER_TOKEN >= self.min_tokens:
                    self._written.add(key(ends[mark]))
        return CacheUse(total, read=read, written=written)

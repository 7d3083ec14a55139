"""Summarising what a trim drops, with a cheap model (``context: {summarize_with: ...}``).

The dropped messages become a plain transcript (:func:`render_transcript`), the
summariser's answer one user message where they were; each summary call is
recorded (``kind: "context_summary"``) with its usage and cost."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ...canonical import chunks_to_completion
from ...errors import GatewayError
from ...policy import region_allowed
from ...types import KEEPALIVE, CanonicalRequest, Deployment, RequestContext, RequestHints, Usage
from ...wire.quirks import prepare_body
from .groups import role
from .measure import CHARS_PER_TOKEN
from .settings import ContextSettings

log = logging.getLogger("clasp.context")

SUMMARIZER_WINDOW = 16_000
"""Input assumed for a summariser whose window is unknown."""

SUMMARY_PROMPT = (
    "You condense the earlier part of a conversation between a user and an AI coding "
    "assistant, so that the assistant can carry on without it. Keep what the rest of the "
    "conversation may depend on: the user's goals, instructions and preferences; decisions "
    "made; files, functions, commands and their results; errors met and how they were "
    "solved; what is still to do. Write plain sentences or terse bullet points, at most "
    "{words} words, and nothing but the summary."
)
SUMMARY_HEADER = "[Summary of {n} earlier messages, left out by the gateway to fit the model's context window]\n"


Recorder = Callable[[RequestContext, dict[str, Any]], Awaitable[None]]
Opener = Callable[..., Any]
MaySend = Callable[[RequestContext, Deployment], Awaitable[bool]]
"""Whether the conversation of a request may go to a summariser deployment (the
``before_side_call`` hook: a plugin keeps a conversation with a credential off a
third-party summariser)."""


class Summarizer:
    """Asks a route's summariser deployments, in order, for one short summary.

    ``open_upstream`` opens one upstream call (``Providers.open``); ``record`` hands
    an event to the ``record`` hook (``Gateway.record``); ``may_send`` asks the
    ``before_side_call`` hook whether a summariser may receive the conversation:
    injected, so this module knows nothing of the gateway."""

    def __init__(self, open_upstream: Opener, record: Recorder, may_send: MaySend | None = None) -> None:
        self._open = open_upstream
        self._record = record
        self._may_send = may_send

    async def summarize(
        self,
        ctx: RequestContext,
        settings: ContextSettings,
        messages: list[dict[str, Any]],
        previous: str | None,
    ) -> tuple[str, Deployment] | None:
        """One short summary of ``messages`` (continuing ``previous``), or None if no
        summariser answered (the caller then trims without one)."""
        for deployment in settings.summarizers:
            if not region_allowed(ctx, deployment):  # residency: the transcript stays in the key's regions
                continue
            if self._may_send is not None and not await self._may_send(ctx, deployment):  # a plugin's veto
                continue
            window = deployment.info.max_input_tokens or SUMMARIZER_WINDOW
            limit_chars = max(2_000, int((window - settings.summary_max_tokens - 600) * CHARS_PER_TOKEN * 0.9))
            transcript = render_transcript(messages, limit_chars, previous)
            words = max(50, int(settings.summary_max_tokens * 0.6))
            body: CanonicalRequest = {
                "model": deployment.model,
                "messages": [
                    {"role": "system", "content": SUMMARY_PROMPT.format(words=words)},
                    {"role": "user", "content": transcript},
                ],
                "max_tokens": settings.summary_max_tokens,
                "temperature": 0,
            }
            prepared = prepare_body(body, deployment, RequestHints(), stream=False)
            started = time.perf_counter()
            try:
                async with asyncio.timeout(deployment.timeouts.total or 300):
                    chunks = [c async for c in self._open(deployment, prepared, stream=False) if c is not KEEPALIVE]
                completion = chunks_to_completion(chunks, deployment.model)
            except (GatewayError, TimeoutError) as exc:
                log.warning("%s: summariser %s failed: %s", ctx.request_id, deployment.id, getattr(exc, "message", exc))
                await self._record_summary(ctx, deployment, None, started, exc)
                continue
            text = (completion["choices"][0]["message"].get("content") or "").strip()
            usage = Usage.from_openai(completion.get("usage"))
            await self._record_summary(ctx, deployment, usage, started, None)
            if text:
                return text, deployment
        return None

    async def _record_summary(
        self, ctx: RequestContext, deployment: Deployment, usage: Usage | None, started: float, error: Any
    ) -> None:
        usage = usage or Usage()
        info = deployment.info
        await self._record(ctx, {
            "kind": "context_summary",
            "request_id": ctx.request_id,
            "public_model": ctx.public_model,
            "deployment": deployment.id,
            "provider": deployment.provider,
            "model": deployment.model,
            "ok": error is None,
            "error": getattr(error, "message", None) if error is not None else None,
            "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
            "cost_usd": usage.input_tokens * info.input_cost_per_token + usage.output_tokens * info.output_cost_per_token,
            "ms": (time.perf_counter() - started) * 1000,
            "time": time.time(),
        })


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif part.get("type") == "image_url":
                    parts.append("[image]")
                elif part.get("type") == "file":
                    parts.append("[document]")
        text = "\n".join(parts)
    else:
        text = ""
    for call in message.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            text += f"\n[calls tool {fn.get('name')}] {fn.get('arguments') or ''}"
    return text.strip()


def render_transcript(messages: list[dict[str, Any]], limit_chars: int, previous: str | None) -> str:
    """The dropped messages as a plain transcript for the summariser, each message
    shortened (its start and end kept) so the whole stays within ``limit_chars``."""
    labels = {"tool": "tool result", "assistant": "assistant", "user": "user", "system": "system note"}
    texts = [(labels.get(role(m), role(m) or "message"), _message_text(m)) for m in messages]
    head = f"Summary so far:\n{previous}\n\nWhat happened next:\n" if previous else "Conversation:\n"
    budget = max(200, limit_chars - len(head))
    total = sum(len(t) + len(label) + 4 for label, t in texts)
    cap = max(200, budget // max(1, len(texts))) if total > budget else None
    lines = []
    for label, text in texts:
        if cap is not None and len(text) > cap:
            half = cap // 2
            text = f"{text[:half]} [...] {text[-half:]}"
        lines.append(f"[{label}] {text}")
    return head + "\n\n".join(lines)

"""Split a canonical request into its exact scope and the text the semantic layer compares.

Why this split: embedding a whole Claude Code request truncates at the model's 256
tokens, so every request looks alike; embedding only the last message ignores the
conversation. So everything except the last user turn's own words is hashed exactly
(tenant, route, model and sampling parameters, system prompt, tools, tool choice, the
whole conversation before the last user turn including tool calls and their results,
and Claude Code's ``<system-reminder>`` blocks inside the last turn), and only those
words are embedded. Two requests can only be compared when their scopes are equal, so a
change in a file a conversation has read, in the system prompt or in the tool list
changes the scope and can never be answered from the old one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from clasp_gateway import CanonicalRequest

IGNORED_KEYS = frozenset({"stream", "stream_options", "metadata", "user", "cache_control", "n"})
"""Request fields that do not change the answer (hashing them would only split scopes).
``n`` is ignored because the semantic layer only serves requests asking for one choice
(see :func:`split_request`)."""

REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)
"""Claude Code's reminders ride in the user turn; they are context, not the question."""


@dataclass(frozen=True, slots=True)
class SemanticKey:
    """Where a request may be answered from (``scope``) and what is compared (``text``)."""

    scope: str
    """Hex SHA-256 of tenant, route and everything in the request but the compared text."""
    text: str
    """The last user turn's own words (reminders removed), as the client wrote them."""


def split_request(request: CanonicalRequest, *, tenant: str, route: str) -> SemanticKey | None:
    """The scope and compared text of ``request``, or ``None`` when it has no plain question.

    ``None`` (the semantic layer stays out; the exact cache still applies) when the last
    message is not a user turn (a tool result the model must read is never "similar" to
    another), when the last user turn holds anything but text (images, files), when it
    asks for several choices, or when its text is empty.
    """
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    if request.get("n") not in (None, 1):
        return None
    joined = _text_of(last.get("content"))
    if joined is None:
        return None
    reminders = REMINDER.findall(joined)
    text = REMINDER.sub("", joined).strip()
    if not text:
        return None
    rest = {k: v for k, v in request.items() if k not in IGNORED_KEYS and k != "messages"}
    material = {
        "tenant": tenant,
        "route": route,
        "request": _strip(rest),
        "before": _strip(messages[:-1]),
        "last": _strip({k: v for k, v in last.items() if k != "content"}),
        "reminders": reminders,
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":"), default=str).encode())
    return SemanticKey(scope=digest.hexdigest(), text=text)


def _text_of(content: Any) -> str | None:
    """The text of a user turn: a string, or a list made only of text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    parts: list[str] = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            return None
        parts.append(part["text"])
    return "\n\n".join(parts)


def _strip(value: Any) -> Any:
    """``value`` without the keys that never change an answer (``cache_control`` at any depth)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in ("cache_control",)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value

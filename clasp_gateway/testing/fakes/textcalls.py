"""A local model that writes its tool calls as text instead of ``tool_calls``.

:class:`TextToolCalls` is a :class:`~clasp_gateway.testing.fakes.replies.Text` reply whose content
is tool calls spelled the way local models spell them when the server does not
parse them (a chat template that does not know the format, a drifting quantised
model). Any flavor serves it as ordinary content, streamed in small pieces (3
characters by default) so the markup is split across chunks, with
``finish_reason: "stop"`` as a local server sends it.

Styles (what real models write):

- ``hermes``: Qwen 2.5 / Hermes ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``
- ``mistral``: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}]``
- ``mistral_v11``: ``[TOOL_CALLS]Name[ARGS]{...}`` (Mistral Small 3.1+ / Devstral)
- ``json``: the bare object, ``{"name": ..., "parameters": {...}}`` (Llama 3.x), or an
  array of them for several calls
- ``fenced``: the same inside a fenced ``json`` block
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .replies import Text

__all__ = ["STYLES", "TextToolCalls", "render_text_calls"]

STYLES = ("hermes", "mistral", "mistral_v11", "json", "fenced")


def render_text_calls(calls: list[tuple[str, dict]], style: str) -> str:
    """The content a local model writes for ``calls`` in ``style``."""
    if style == "hermes":
        return "\n".join(
            f'<tool_call>\n{json.dumps({"name": name, "arguments": args}, ensure_ascii=False)}\n</tool_call>'
            for name, args in calls
        )
    if style == "mistral":
        payload = [{"name": name, "arguments": args} for name, args in calls]
        return "[TOOL_CALLS] " + json.dumps(payload, ensure_ascii=False)
    if style == "mistral_v11":
        return "".join(f"[TOOL_CALLS]{name}[ARGS]{json.dumps(args, ensure_ascii=False)}" for name, args in calls)
    if style in ("json", "fenced"):
        objects = [{"name": name, "parameters": args} for name, args in calls]
        text = json.dumps(objects[0] if len(objects) == 1 else objects, ensure_ascii=False, indent=2)
        return f"```json\n{text}\n```" if style == "fenced" else text
    raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")


@dataclass(init=False)
class TextToolCalls(Text):
    """Tool calls written as text (see the module docstring), with optional prose
    ``before`` and ``after`` them."""

    calls: list[tuple[str, dict]] = field(default_factory=list)
    style: str = "hermes"

    def __init__(
        self,
        calls: list[tuple[str, dict]],
        *,
        style: str = "hermes",
        before: str = "",
        after: str = "",
        chunk_size: int = 3,
        finish_reason: str = "stop",
        usage: tuple[int, int] | None = None,
        delay: float = 0.0,
        chunk_delay: float | None = None,
    ) -> None:
        self.calls = list(calls)
        self.style = style
        text = before + render_text_calls(self.calls, style) + after
        super().__init__(text, chunk_size, finish_reason, usage, delay=delay, chunk_delay=chunk_delay)

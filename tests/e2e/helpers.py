"""Assertions shared by the end-to-end scenarios."""

from __future__ import annotations

import json
import re
from typing import Any

from .claude import ClaudeRun, Conversation, ScriptedModel, check_upstream_body
from .stack import Stack

# Tool-call ids as the fake upstreams make them (OpenAI/Azure: 24 alphanumerics,
# Ollama: 8 lowercase alphanumerics). A gateway-made "toolu_..." id upstream would
# mean the provider's ids were not round-tripped.
UPSTREAM_CALL_ID = re.compile(r"^call_[A-Za-z0-9]{8,24}$")

# No trailing spaces on a line: Claude Code 2.1.331's Write tool strips them itself
# (the gateway's input_json_delta carries them intact).
UNICODE_CONTENT = (
    "# Ünïcödé tëst — “quotes” ‘too’\n"
    "emoji: 😀🎉👩‍💻 (ZWJ) and ✔︎\n"
    "CJK: 中文字符, 日本語のテキスト, 한국어\n"
    "\tone tab\n"
    "\t\ttwo tabs\tand inner tab\n"
    "backslashes: C:\\Users\\me and \\n is not a newline, \"double\" and 'single' quotes\n"
    'json-ish: {"a": [1, 2, {"b": null}]} </script> <b>&amp;</b>\n'
    "\n"
    "last line\n"
)


def assert_ok(run: ClaudeRun, model: ScriptedModel) -> None:
    """The CLI succeeded and the scenario played as scripted."""
    model.check()
    assert run.ok, run.describe()


def assert_clean_upstream(stack: Stack, model: ScriptedModel, *, streamed: bool = True) -> None:
    """Every request the upstream saw is a clean OpenAI body with a clamped limit.

    ``streamed``: every main-loop request streamed (Claude Code streams unless it falls
    back to a non-streaming request after a failed stream)."""
    assert model.main, "no main-loop request reached the upstream"
    for conv in model.main:
        check_upstream_body(conv.body, max_tokens=stack.max_tokens)
        if conv.body.get("stream") is True:
            assert conv.body.get("stream_options") == {"include_usage": True}
        else:
            assert not streamed, "Claude Code streams; the upstream request must too"
            assert "stream_options" not in conv.body
    for body in model.side_requests:
        check_upstream_body(body, max_tokens=stack.max_tokens)


def assert_tool_round_trip(conv: Conversation) -> None:
    """Each assistant tool call is answered, in order, by a tool message with its id."""
    msgs = conv.messages
    for i, msg in enumerate(msgs):
        calls = msg.get("tool_calls") if msg.get("role") == "assistant" else None
        if not calls:
            continue
        ids = [c["id"] for c in calls]
        for call in calls:
            assert UPSTREAM_CALL_ID.match(call["id"]), f"tool call id not the upstream's: {call['id']!r}"
            assert call["type"] == "function"
            assert isinstance(json.loads(call["function"]["arguments"]), dict)
        answers = msgs[i + 1 : i + 1 + len(ids)]
        assert [m.get("role") for m in answers] == ["tool"] * len(ids), (
            f"tool calls {ids} are not followed by {len(ids)} tool message(s): {answers!r}"
        )
        assert [m["tool_call_id"] for m in answers] == ids
        assert len(set(ids)) == len(ids)


def call_arguments(conv: Conversation) -> list[tuple[str, dict[str, Any]]]:
    """``(name, parsed arguments)`` of every tool call in the history, in order."""
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in conv.tool_calls()]


def last_user_text(conv: Conversation) -> str:
    users = [m for m in conv.messages if m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def long_text(size: int = 20_000) -> str:
    """About ``size`` characters of numbered lines mixing ASCII, accents, Greek, CJK,
    emoji, Markdown, HTML-ish and JSON-ish characters (no leading/trailing blanks)."""
    words = ["alpha", "βeta", "γάμμα", "δ", "naïve", "日本", "😀", "**bold**", "`code`", "x<y>&z", "\\path", '"q"']
    out: list[str] = []
    n = 0
    i = 0
    while n < size:
        line = " ".join(words[(i * 7 + j) % len(words)] for j in range(i % 11 + 3))
        line = f"{i:04d} {line}"
        out.append(line)
        n += len(line) + 1
        i += 1
    return "\n".join(out)

"""The benchmark's requests: a Claude-Code-like ``/v1/messages`` body and its OpenAI twin.

Deterministic (no randomness), stdlib only, so every run and every target sends the
same bytes. The Anthropic body imitates what Claude Code sends (see
``shared/CLAUDE_CODE.md``): system text blocks with ``cache_control``, ~15 tools whose
schemas carry ``$schema`` (draft 2020-12) and ``additionalProperties: false``, a few
turns with ``tool_use``/``tool_result`` (one ``is_error``), ``metadata.user_id`` and
``max_tokens: 32000``. The OpenAI body is the same conversation in chat-completions
form: what the gateway sends upstream, so "the upstream called directly" does
comparable work.
"""

from __future__ import annotations

import json
from typing import Any

SHORT_MODEL = "claude-sonnet-4-5-20250929"
"""Public model name answered by a short stream (case a)."""
LONG_MODEL = "claude-sonnet-4-5-long"
"""Public model name answered by a 200-chunk stream sent in one burst (case b)."""
PACED_MODEL = "claude-sonnet-4-5-paced"
"""Public model name answered by a 200-chunk stream, one chunk per ``--gap-ms``."""

UPSTREAM_SHORT = "bench-short-model"
UPSTREAM_LONG = "bench-long-model"
UPSTREAM_PACED = "bench-paced-model"
"""Upstream model names: the fake upstream picks its answer by these."""

_SCHEMA = "https://json-schema.org/draft/2020-12/schema"

_PARAGRAPH = (
    "When working on a task, read the relevant files before changing them, prefer small "
    "focused edits over rewrites, keep the existing style of the code base, run the tests "
    "that cover the change, and report what you did in a few sentences. "
)


def _text(n_chars: int, seed: str) -> str:
    out = seed + " "
    while len(out) < n_chars:
        out += _PARAGRAPH
    return out[:n_chars]


def _schema(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": False,
        "$schema": _SCHEMA,
    }


def _s(desc: str, **kw: Any) -> dict[str, Any]:
    return {"type": "string", "description": desc, **kw}


def claude_code_tools() -> list[dict[str, Any]]:
    """Fifteen tools shaped like Claude Code's built-ins."""
    tools = [
        ("Task", 1800, _schema({
            "description": _s("A short (3-5 word) description of the task"),
            "prompt": _s("The task for the agent to perform"),
            "subagent_type": _s("The type of specialized agent to use for this task"),
        }, ["description", "prompt", "subagent_type"])),
        ("Bash", 2200, _schema({
            "command": _s("The command to execute"),
            "timeout": {"type": "number", "description": "Optional timeout in milliseconds (max 600000)"},
            "description": _s("Clear, concise description of what this command does in 5-10 words"),
            "run_in_background": {"type": "boolean", "description": "Set to true to run this command in the background."},
        }, ["command"])),
        ("Glob", 500, _schema({
            "pattern": _s("The glob pattern to match files against"),
            "path": _s("The directory to search in. Defaults to the current working directory."),
        }, ["pattern"])),
        ("Grep", 900, _schema({
            "pattern": _s("The regular expression pattern to search for in file contents"),
            "path": _s("File or directory to search in. Defaults to current working directory."),
            "glob": _s("Glob pattern to filter files (e.g. \"*.js\", \"*.{ts,tsx}\")"),
            "output_mode": _s("Output mode", enum=["content", "files_with_matches", "count"]),
            "-B": {"type": "number", "description": "Number of lines to show before each match"},
            "-A": {"type": "number", "description": "Number of lines to show after each match"},
            "-n": {"type": "boolean", "description": "Show line numbers in output"},
            "-i": {"type": "boolean", "description": "Case insensitive search"},
            "type": _s("File type to search (rg --type)."),
            "head_limit": {"type": "number", "description": "Limit output to first N lines/entries"},
            "multiline": {"type": "boolean", "description": "Enable multiline mode"},
        }, ["pattern"])),
        ("ExitPlanMode", 300, _schema({
            "plan": _s("The plan you came up with, that you want to run by the user for approval."),
        }, ["plan"])),
        ("Read", 700, _schema({
            "file_path": _s("The absolute path to the file to read"),
            "offset": {"type": "number", "description": "The line number to start reading from."},
            "limit": {"type": "number", "description": "The number of lines to read."},
        }, ["file_path"])),
        ("Edit", 600, _schema({
            "file_path": _s("The absolute path to the file to modify"),
            "old_string": _s("The text to replace"),
            "new_string": _s("The text to replace it with (must be different from old_string)"),
            "replace_all": {"type": "boolean", "default": False, "description": "Replace all occurences of old_string"},
        }, ["file_path", "old_string", "new_string"])),
        ("MultiEdit", 700, _schema({
            "file_path": _s("The absolute path to the file to modify"),
            "edits": {"type": "array", "minItems": 1, "description": "Array of edit operations", "items": {
                "type": "object", "additionalProperties": False, "required": ["old_string", "new_string"],
                "properties": {
                    "old_string": _s("The text to replace"),
                    "new_string": _s("The text to replace it with"),
                    "replace_all": {"type": "boolean", "default": False},
                },
            }},
        }, ["file_path", "edits"])),
        ("Write", 400, _schema({
            "file_path": _s("The absolute path to the file to write (must be absolute, not relative)"),
            "content": _s("The content to write to the file"),
        }, ["file_path", "content"])),
        ("NotebookEdit", 400, _schema({
            "notebook_path": _s("The absolute path to the Jupyter notebook file to edit"),
            "cell_id": _s("The ID of the cell to edit."),
            "new_source": _s("The new source for the cell"),
            "cell_type": _s("The type of the cell (code or markdown).", enum=["code", "markdown"]),
            "edit_mode": _s("The type of edit to make.", enum=["replace", "insert", "delete"]),
        }, ["notebook_path", "new_source"])),
        ("WebFetch", 500, _schema({
            "url": _s("The URL to fetch content from", format="uri"),
            "prompt": _s("The prompt to run on the fetched content"),
        }, ["url", "prompt"])),
        ("TodoWrite", 1500, _schema({
            "todos": {"type": "array", "description": "The updated todo list", "items": {
                "type": "object", "additionalProperties": False, "required": ["content", "status", "activeForm"],
                "properties": {
                    "content": {"type": "string", "minLength": 1},
                    "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
                    "activeForm": {"type": "string", "minLength": 1},
                },
            }},
        }, ["todos"])),
        ("WebSearch", 400, _schema({
            "query": _s("The search query to use", minLength=2),
            "allowed_domains": {"type": "array", "items": {"type": "string"}, "description": "Only include results from these domains"},
            "blocked_domains": {"type": "array", "items": {"type": "string"}, "description": "Never include results from these domains"},
        }, ["query"])),
        ("BashOutput", 300, _schema({
            "bash_id": _s("The ID of the background shell to retrieve output from"),
            "filter": _s("Optional regular expression to filter the output lines."),
        }, ["bash_id"])),
        ("KillShell", 200, _schema({
            "shell_id": _s("The ID of the background shell to kill"),
        }, ["shell_id"])),
    ]
    return [
        {"name": name, "description": _text(size * 11 // 20, f"{name}: a Claude Code tool."), "input_schema": schema}
        for name, size, schema in tools
    ]


def anthropic_request(model: str) -> dict[str, Any]:
    """The ~20 KB Claude-Code-like streaming ``/v1/messages`` body."""
    return {
        "model": model,
        "max_tokens": 32000,
        "stream": True,
        "metadata": {"user_id": "user_" + "0f" * 32 + "_account__session_4b1e2c3d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"},
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": _text(1900, "You are an interactive CLI tool that helps users with software engineering tasks."),
             "cache_control": {"type": "ephemeral"}},
        ],
        "tools": claude_code_tools(),
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>\n" + _text(600, "As you answer the user's questions, you can use this context.") + "\n</system-reminder>"},
                {"type": "text", "text": "The test in tests/test_parser.py fails; find out why and fix it."},
            ]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "I'll start by running the failing test."},
                {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "Bash",
                 "input": {"command": "python -m pytest tests/test_parser.py -x -q", "description": "Run the failing test"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9", "is_error": True,
                 "content": "F\n=== FAILURES ===\n" + _text(900, "AssertionError: expected 3 tokens, got 2") + "\n1 failed in 0.12s"},
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_01B7xk2m3n4p5q6r7s8t9u0v", "name": "Read",
                 "input": {"file_path": "/home/dev/project/src/parser.py"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01B7xk2m3n4p5q6r7s8t9u0v",
                 "content": [{"type": "text", "text": "\n".join(
                     f"{i:6d}\u2192    tokens.append(piece)  # line {i}" for i in range(1, 41))}]},
            ]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "The tokenizer drops the last piece when the input ends without a newline."},
            ]},
            {"role": "user", "content": [
                {"type": "text", "text": "Good, please fix it and run the test again.",
                 "cache_control": {"type": "ephemeral"}},
            ]},
        ],
    }


def openai_request(upstream_model: str) -> dict[str, Any]:
    """The same conversation as an OpenAI chat-completions body (the direct baseline)."""
    a = anthropic_request(upstream_model)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "\n\n".join(b["text"] for b in a["system"])}
    ]
    for m in a["messages"]:
        texts = [b["text"] for b in m["content"] if b["type"] == "text"]
        if m["role"] == "assistant":
            calls = [
                {"id": b["id"], "type": "function",
                 "function": {"name": b["name"], "arguments": json.dumps(b["input"])}}
                for b in m["content"] if b["type"] == "tool_use"
            ]
            msg: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts) or None}
            if calls:
                msg["tool_calls"] = calls
            messages.append(msg)
            continue
        for b in m["content"]:
            if b["type"] == "tool_result":
                content = b["content"] if isinstance(b["content"], str) else "\n".join(x["text"] for x in b["content"])
                messages.append({"role": "tool", "tool_call_id": b["tool_use_id"], "content": content})
        if texts:
            messages.append({"role": "user", "content": "\n".join(texts)})
    return {
        "model": upstream_model,
        "messages": messages,
        "tools": [
            {"type": "function", "function": {"name": t["name"], "description": t["description"],
                                              "parameters": t["input_schema"]}}
            for t in a["tools"]
        ],
        "max_tokens": 32000,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": a["metadata"]["user_id"][:64],
    }


ANTHROPIC_HEADERS = {
    "content-type": "application/json",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14",
    "user-agent": "claude-cli/2.1.331 (external, cli)",
    "x-app": "cli",
    "accept": "application/json",
}
OPENAI_HEADERS = {
    "content-type": "application/json",
    "user-agent": "bench/1.0",
    "accept": "application/json",
}


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


if __name__ == "__main__":
    print(len(encode(anthropic_request(SHORT_MODEL))), "bytes (Anthropic)")
    print(len(encode(openai_request(UPSTREAM_SHORT))), "bytes (OpenAI)")

"""Claude-Code-shaped conversations, turn by turn, for prompt-cache tests and benchmarks.

:func:`claude_code_session` returns the ``POST /v1/messages`` bodies Claude Code sends
during one agentic session, built the way it builds them (checked against Claude Code
2.1.331's requests, ``/work/shared/CLAUDE_CODE.md``): a ``system`` list whose first
block is a per-request billing line and whose two prompt blocks carry
``cache_control``; about a dozen tools with draft-2020-12 schemas,
``additionalProperties: false`` and ``defer_loading``; a ``metadata.user_id``; and a
history where each turn appends the assistant's tool call and the user's tool result,
the ``cache_control`` breakpoint moving to the newest user message. The texts are
deterministic for a seed (sessions of one team share the system prompt and tools;
their questions and tool outputs differ).
"""

from __future__ import annotations

import copy
import hashlib
import random
from typing import Any

__all__ = ["claude_code_session", "claude_code_tools", "claude_code_system"]

_WORDS = (
    "the file function returns value error request module test class config path cache token stream "
    "handler provider gateway message tool result user system prompt schema parse index build check "
    "update commit branch review import export async await client server retry timeout limit"
).split()

_TOOL_NAMES = (
    "Bash", "Glob", "Grep", "Read", "Edit", "Write", "NotebookEdit", "WebFetch", "TodoWrite", "WebSearch",
    "BashOutput", "KillShell", "Task", "ExitPlanMode",
)


def _prose(rng: random.Random, words: int) -> str:
    out = []
    for i in range(words):
        word = rng.choice(_WORDS)
        out.append(word.capitalize() if i % 12 == 0 else word)
        if i % 12 == 11:
            out[-1] += "."
    return " ".join(out)


def claude_code_system(seed: int = 0, *, session: int = 0, prompt_words: int = 2200) -> list[dict[str, Any]]:
    """The ``system`` blocks (the billing line is added per request by the session):
    the same instructions for a team (``seed``), then the session's environment (its
    working directory and git state: per user and session, as Claude Code's)."""
    rng = random.Random(f"system-{seed}")
    env = (f"\n\n<env>\nWorking directory: /home/dev{session}/project\nIs directory a git repo: Yes\n"
           f"Platform: linux\nToday's date: 2026-12-0{1 + session % 9}\n</env>\n"
           f"gitStatus: Current branch: feature-{session}\n")
    return [
        {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
         "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": _prose(rng, prompt_words) + env, "cache_control": {"type": "ephemeral"}},
    ]


def claude_code_tools(seed: int = 0, *, count: int = 12, description_words: int = 180) -> list[dict[str, Any]]:
    """Claude Code's tool list: JSON Schema draft 2020-12, extra tool-level keys."""
    rng = random.Random(f"tools-{seed}")
    tools = []
    for i, name in enumerate(_TOOL_NAMES[:count]):
        props: dict[str, Any] = {}
        for j in range(1 + i % 4):
            props[f"{rng.choice(_WORDS)}_{j}"] = {
                "type": rng.choice(["string", "integer", "boolean"]),
                "description": _prose(rng, 14),
            }
        props["path"] = {"type": "string", "description": "The absolute path.", "format": "uri-reference"}
        tool: dict[str, Any] = {
            "name": name,
            "description": _prose(rng, description_words),
            "input_schema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": props,
                "required": ["path"],
                "additionalProperties": False,
            },
        }
        if i % 5 == 4:
            tool["defer_loading"] = False
        tools.append(tool)
    return tools


def _billing(seed: int, turn: int) -> dict[str, Any]:
    digest = hashlib.sha256(f"{seed}-{turn}".encode()).hexdigest()[:3]
    return {"type": "text", "text": f"x-anthropic-billing-header: cc_version=2.1.331.{digest}; cc_entrypoint=cli;"}


def claude_code_session(
    turns: int = 6,
    *,
    seed: int = 0,
    team_seed: int = 0,
    model: str = "claude-sonnet-4-5",
    stream: bool = True,
    output_words: int = 450,
) -> list[dict[str, Any]]:
    """The request bodies of a session of ``turns`` model calls (each one more tool
    round than the last). ``team_seed`` picks the system prompt and tools (shared by a
    team's sessions), ``seed`` the question and the tool outputs."""
    rng = random.Random(f"session-{team_seed}-{seed}")
    system = claude_code_system(team_seed, session=seed)
    tools = claude_code_tools(team_seed)
    history: list[dict[str, Any]] = [{
        "role": "user",
        "content": [
            {"type": "text", "text": "<system-reminder>\nAs you answer the user's questions, you can use the "
                                     "following context:\n" + _prose(rng, 120) + "\n</system-reminder>"},
            {"type": "text", "text": _prose(rng, 30) + "?"},
        ],
    }]
    bodies = []
    for turn in range(turns):
        if turn:
            call_id = f"toolu_{hashlib.sha256(f'{seed}-{turn}'.encode()).hexdigest()[:24]}"
            tool = tools[rng.randrange(len(tools))]["name"]
            history.append({"role": "assistant", "content": [
                {"type": "text", "text": _prose(rng, 20)},
                {"type": "tool_use", "id": call_id, "name": tool, "input": {"path": f"/home/dev/project/f{turn}.py"}},
            ]})
            history.append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call_id, "content": _prose(rng, output_words)},
            ]})
        messages = copy.deepcopy(history)
        # The breakpoint is on the newest message's last block only (Claude Code moves it).
        messages[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
        bodies.append({
            "model": model,
            "max_tokens": 32000,
            "stream": stream,
            "system": [_billing(seed, turn), *copy.deepcopy(system)],
            "tools": copy.deepcopy(tools),
            "messages": messages,
            "metadata": {"user_id": f"user_{'a' * 64}_account__session_{seed:08d}"},
            "thinking": {"type": "adaptive"},
        })
    return bodies

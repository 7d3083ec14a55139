"""The real Claude Code CLI through the gateway to a fake OpenAI upstream (gpt-4o).

Each scenario checks both sides: what Claude Code did (files, result) and what the
upstream received (OpenAI messages, tool ids round-tripped, no Anthropic fields,
``max_tokens`` clamped to gpt-4o's 16,384).
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path

import pytest
from clasp_claude.request import TOOL_ERROR_PREFIX

from clasp_gateway.testing import Reasoning, Text, ToolCalls

from .claude import Conversation, Step
from .helpers import (
    UNICODE_CONTENT,
    assert_clean_upstream,
    assert_ok,
    assert_tool_round_trip,
    call_arguments,
    last_user_text,
    long_text,
)
from .stack import Stack

pytestmark = pytest.mark.e2e


def test_plain_answer(stack: Stack, tmp_path: Path) -> None:
    answer = "Paris is the capital of France. 🇫🇷"
    run, model = stack.play(tmp_path, "What is the capital of France?", [Text(answer)])
    assert_ok(run, model)
    assert run.text == answer
    assert run.result is not None and run.result["num_turns"] == 1
    assert len(model.main) == 1
    assert_clean_upstream(stack, model)
    conv = model.main[0]
    assert conv.messages[0]["role"] == "system" and isinstance(conv.messages[0]["content"], str)
    assert "What is the capital of France?" in last_user_text(conv)
    assert conv.body["model"] == "gpt-4o"
    assert {"Bash", "Read", "Write", "Edit"} <= set(conv.tool_names)
    assert conv.body["stream_options"] == {"include_usage": True}


def test_bash_writes_a_file(stack: Stack, tmp_path: Path) -> None:
    command = "echo hi > out.txt && echo written-$((6*7))"
    steps: list[Step] = [
        ToolCalls([("Bash", {"command": command, "description": "write out.txt"})]),
        Text("Done: out.txt holds hi."),
    ]
    run, model = stack.play(tmp_path, "create the file out.txt containing hi", steps)
    assert_ok(run, model)
    assert run.read("out.txt") == b"hi\n"
    assert run.text == "Done: out.txt holds hi."
    assert len(model.main) == 2
    assert_clean_upstream(stack, model)
    second = model.main[1]
    assert_tool_round_trip(second)
    assert call_arguments(second) == [("Bash", {"command": command, "description": "write out.txt"})]
    [result] = second.new_tool_messages
    assert "written-42" in result["content"]  # the shell ran it; the output came back
    assert not result["content"].startswith(TOOL_ERROR_PREFIX)


@pytest.mark.parametrize(
    ("interleave", "preamble"),
    [(False, "I'll write both files."), (True, "\n\n")],
    ids=["sequential-with-text", "interleaved-blank-text"],
)
def test_two_tool_calls_in_one_turn(stack: Stack, tmp_path: Path, interleave: bool, preamble: str) -> None:
    work = tmp_path / "work"
    a = {"file_path": str(work / "a.txt"), "content": "first file\n"}
    b = {"file_path": str(work / "b.txt"), "content": "second file\nwith two lines\n"}
    calls = ToolCalls([("Write", a), ("Write", b)], text=preamble, interleave=interleave)
    run, model = stack.play(tmp_path, "write a.txt and b.txt", [calls, Text("Both written.")])
    assert_ok(run, model)
    assert run.read("a.txt") == b"first file\n"
    assert run.read("b.txt") == b"second file\nwith two lines\n"
    assert run.text == "Both written."
    assert len(model.main) == 2
    assert_clean_upstream(stack, model)
    second = model.main[1]
    assert_tool_round_trip(second)
    # One assistant message carrying both calls, each with its exact arguments.
    [assistant] = second.assistant_messages
    assert len(assistant["tool_calls"]) == 2
    assert call_arguments(second) == [("Write", a), ("Write", b)]
    if preamble.strip():
        assert assistant["content"] == preamble
    else:  # a blank text block must never be opened (it poisons the next turn)
        assert not assistant.get("content"), assistant
    results = second.new_tool_messages
    assert len(results) == 2
    assert "a.txt" in results[0]["content"] and "b.txt" in results[1]["content"]


def test_write_unicode_file_exact_bytes(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "work" / "unicode.txt"
    args = {"file_path": str(path), "content": UNICODE_CONTENT}
    run, model = stack.play(tmp_path, "write unicode.txt", [ToolCalls([("Write", args)]), Text("Written.")])
    assert_ok(run, model)
    assert path.read_bytes() == UNICODE_CONTENT.encode("utf-8")
    assert_clean_upstream(stack, model)
    second = model.main[1]
    assert_tool_round_trip(second)
    assert call_arguments(second) == [("Write", args)]


def test_read_then_edit(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "work" / "notes.txt"
    original = "alpha line\nbeta line ✓\ngamma line\n"

    def edit(conv: Conversation) -> ToolCalls | Text:
        if "beta line ✓" not in conv.last_tool_content:
            return Text("The Read result did not come back.")
        return ToolCalls(
            [("Edit", {"file_path": str(path), "old_string": "beta line ✓", "new_string": "BETA — edited"})]
        )

    steps: list[Step] = [ToolCalls([("Read", {"file_path": str(path)})]), edit, Text("Edited notes.txt.")]
    run, model = stack.play(tmp_path, "fix notes.txt", steps, files={"notes.txt": original})
    assert_ok(run, model)
    assert path.read_text() == "alpha line\nBETA — edited\ngamma line\n"
    assert run.text == "Edited notes.txt."
    assert len(model.main) == 3
    assert_clean_upstream(stack, model)
    read_result = model.main[1].last_tool_content
    for line in ("alpha line", "beta line ✓", "gamma line"):
        assert line in read_result
    assert_tool_round_trip(model.main[2])
    assert [name for name, _ in call_arguments(model.main[2])] == ["Read", "Edit"]
    assert not model.main[2].last_tool_content.startswith(TOOL_ERROR_PREFIX)


@pytest.mark.parametrize("failure", ["bash-exit", "read-missing"])
def test_failing_tool_is_marked_upstream(stack: Stack, tmp_path: Path, failure: str) -> None:
    if failure == "bash-exit":
        call = ("Bash", {"command": "echo to-stderr >&2; exit 3", "description": "fail"})
        evidence = "Exit code 3"
    else:
        call = ("Read", {"file_path": str(tmp_path / "work" / "missing.txt")})
        evidence = "does not exist"
    steps: list[Step] = [ToolCalls([call]), Text("The tool failed; nothing else to do.")]
    run, model = stack.play(tmp_path, "try the tool", steps)
    assert_ok(run, model)
    assert run.result is not None and run.result["is_error"] is False
    assert run.text == "The tool failed; nothing else to do."
    assert_clean_upstream(stack, model)
    second = model.main[1]
    assert_tool_round_trip(second)
    [result] = second.new_tool_messages
    assert TOOL_ERROR_PREFIX.strip()  # a real marker, so startswith() below means something
    assert result["content"].startswith(TOOL_ERROR_PREFIX), result["content"]
    assert evidence in result["content"]


def test_long_streamed_answer(stack: Stack, tmp_path: Path) -> None:
    text = long_text()
    assert len(text) >= 20_000
    run, model = stack.play(tmp_path, "tell me a long story", [Text(text, chunk_size=3)])
    assert_ok(run, model)
    assert run.text == text
    assert_clean_upstream(stack, model)
    assert json.loads(run.stdout)["result"] == text


def test_reasoning_is_shown_but_never_sent_back(stack: Stack, tmp_path: Path) -> None:
    """DeepSeek-style reasoning becomes a thinking block; when the session continues
    (``--continue``), that block is not echoed upstream (providers reject it)."""
    secret = "private chain of thought 7f3a9c"
    first, model1 = stack.play(tmp_path, "what is 6*7?", [Reasoning(f"{secret}: six times seven", "It is 42.")])
    assert_ok(first, model1)
    assert first.text == "It is 42."
    assert secret not in first.text
    # Same home and work dir: --continue resumes the stored session.
    steps: list[Step] = [Text("(unused: the history already holds one answer)"), Text("Still 42.")]
    second, model2 = stack.play(tmp_path, "are you sure?", steps, extra_args=["--continue"])
    assert_ok(second, model2)
    assert second.text == "Still 42."
    assert_clean_upstream(stack, model2)
    [conv] = model2.main
    [assistant] = conv.assistant_messages
    assert assistant["content"] == "It is 42."
    raw = json.dumps(conv.body, ensure_ascii=False)
    assert secret not in raw
    assert "reasoning_content" not in raw and "clasp-gateway.unsigned-thinking" not in raw
    assert "are you sure?" in last_user_text(conv)


def _png(width: int = 4, height: int = 4) -> bytes:
    """A tiny valid red PNG."""
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_read_image_reaches_upstream_as_image_part(stack: Stack, tmp_path: Path) -> None:
    """Read of a PNG returns an image tool result; OpenAI tool messages are text only,
    so the image must follow in a user message as an ``image_url`` data URL."""
    image = _png()
    path = tmp_path / "work" / "red.png"
    steps: list[Step] = [ToolCalls([("Read", {"file_path": str(path)})]), Text("It is a red square.")]
    run, model = stack.play(tmp_path, "what is in red.png?", steps, files={"red.png": image})
    assert_ok(run, model)
    assert run.text == "It is a red square."
    assert_clean_upstream(stack, model)
    second = model.main[1]
    assert_tool_round_trip(second)
    [result] = second.new_tool_messages
    assert "image attached below" in result["content"]
    follower = second.messages[second.messages.index(result) + 1]
    assert follower["role"] == "user" and isinstance(follower["content"], list), follower
    urls = [p["image_url"]["url"] for p in follower["content"] if p.get("type") == "image_url"]
    assert len(urls) == 1 and urls[0].startswith("data:image/png;base64,")
    assert base64.b64decode(urls[0].split(",", 1)[1]) == image


def test_length_limit_becomes_max_tokens_and_the_cli_resumes(stack: Stack, tmp_path: Path) -> None:
    """``finish_reason: length`` must reach the CLI as ``stop_reason: max_tokens``:
    Claude Code then asks the model to resume (a plain ``end_turn`` would end the run
    on the truncated text)."""
    first = "The first half, cut by the output limit"
    steps: list[Step] = [Text(first, finish_reason="length"), Text("And the second half.")]
    run, model = stack.play(tmp_path, "write an essay", steps)
    assert_ok(run, model)
    assert run.text == "And the second half."
    assert len(model.main) == 2
    assert_clean_upstream(stack, model)
    resumed = model.main[1]
    [assistant] = resumed.assistant_messages
    assert assistant["content"] == first
    assert resumed.messages[-1]["role"] == "user"  # the CLI's request to continue

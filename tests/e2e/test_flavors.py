"""The Bash-writes-a-file scenario through every provider flavor the fakes speak.

- azure: ``/openai/deployments/<name>/chat/completions?api-version=...``, ``api-key``
  header, a first chunk with empty ``choices``.
- ollama: ``/v1/chat/completions`` with no key, tool calls whole in one chunk and
  ``finish_reason: "stop"``, Go-escaped ``\\u003e`` in the arguments.
- fragmented: events split at random bytes (inside UTF-8 sequences too), CRLF line
  ends, keep-alive comments, 1-4 character argument pieces, ASCII-escaped JSON.
- json_stream: a plain JSON completion answering the streaming request.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clasp_gateway.testing import Text, ToolCalls

from .claude import Step
from .helpers import (
    UNICODE_CONTENT,
    assert_clean_upstream,
    assert_ok,
    assert_tool_round_trip,
    call_arguments,
    long_text,
)
from .stack import Stack, open_stack

pytestmark = pytest.mark.e2e

FLAVOR_NAMES = ["azure", "ollama", "fragmented", "json_stream"]


@pytest.fixture(scope="module", params=FLAVOR_NAMES)
def flavor_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from open_stack(request.param)


def test_bash_file_through_flavor(flavor_stack: Stack, tmp_path: Path) -> None:
    stack = flavor_stack
    # ">" and "&" are HTML-escaped by Ollama's Go encoder; non-ASCII is \u-escaped by
    # the fragmented flavor and split across reads.
    command = "printf '%s\\n' 'héllo wörld 世界 😀' > out.txt && echo \"ok-$((40+2)) <&>\""
    steps: list[Step] = [
        ToolCalls([("Bash", {"command": command, "description": "write out.txt"})]),
        Text(f"Wrote out.txt via {stack.flavor} ✓"),
    ]
    run, model = stack.play(tmp_path, "create out.txt", steps)
    assert_ok(run, model)
    assert run.read("out.txt") == "héllo wörld 世界 😀\n".encode()
    assert run.text == f"Wrote out.txt via {stack.flavor} ✓"
    assert len(model.main) == 2
    assert_clean_upstream(stack, model)
    second = model.main[1]
    assert_tool_round_trip(second)
    assert call_arguments(second) == [("Bash", {"command": command, "description": "write out.txt"})]
    [result] = second.new_tool_messages
    assert "ok-42 <&>" in result["content"]

    recorded = [conv.recorded for conv in model.main]
    for rec in recorded:
        assert rec is not None and rec.method == "POST"
        if stack.flavor == "azure":
            assert rec.path == "/openai/deployments/my-gpt4o/chat/completions"
            assert rec.query.get("api-version") == "2024-10-21"
            assert rec.headers.get("api-key") == "sk-upstream-test-1234567890"
            assert "authorization" not in rec.headers
        elif stack.flavor == "ollama":
            assert rec.path == "/v1/chat/completions"
            assert rec.json["model"] == "llama3.2:latest"
        else:
            assert rec.path == "/v1/chat/completions"
            assert rec.bearer == "sk-upstream-test-1234567890"
            assert rec.json["model"] == "gpt-4o"


def test_unicode_write_through_flavor(flavor_stack: Stack, tmp_path: Path) -> None:
    """Exact bytes through each wire: ASCII-escaped surrogate pairs split into 1-4
    character pieces (fragmented), Go-escaped ``<>&`` (ollama), one JSON body
    (json_stream), Azure's filter annotations."""
    stack = flavor_stack
    path = tmp_path / "work" / "unicode.txt"
    args = {"file_path": str(path), "content": UNICODE_CONTENT}
    run, model = stack.play(tmp_path, "write unicode.txt", [ToolCalls([("Write", args)]), Text("Written.")])
    assert_ok(run, model)
    assert path.read_bytes() == UNICODE_CONTENT.encode("utf-8")
    assert_clean_upstream(stack, model)
    assert_tool_round_trip(model.main[1])
    assert call_arguments(model.main[1]) == [("Write", args)]


def test_long_answer_through_flavor(flavor_stack: Stack, tmp_path: Path) -> None:
    """20 KB of mixed-script text, streamed in 24-character deltas (the fragmented
    flavor splits every event at random bytes, inside UTF-8 sequences too)."""
    text = long_text()
    run, model = flavor_stack.play(tmp_path, "tell me a long story", [Text(text, chunk_size=24)])
    assert_ok(run, model)
    assert run.text == text
    assert_clean_upstream(flavor_stack, model)

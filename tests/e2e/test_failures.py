"""Upstream failures as the Claude Code CLI experiences them through the gateway.

Each test gets its own gateway: failures feed the gateway's per-deployment state
(circuit breakers, retry budgets), which must not leak into the next scenario.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clasp_gateway.testing import Cut, Error, Text, ToolCalls

from .claude import Step, once
from .helpers import assert_clean_upstream, assert_ok, assert_tool_round_trip
from .stack import Stack, open_stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack() -> Iterator[Stack]:
    """A fresh OpenAI-flavored upstream and gateway for each failure scenario."""
    yield from open_stack("openai")


def test_rate_limit_then_success(stack: Stack, tmp_path: Path) -> None:
    """One 429 with ``retry-after``, then an answer: retried (by the gateway or by the
    CLI) into a success; the upstream saw the same request twice."""
    limited = Error(429, headers={"retry-after": "1"})
    steps: list[Step] = [once(limited, Text("Answered after a rate limit."))]
    run, model = stack.play(tmp_path, "say something", steps)
    assert_ok(run, model)
    assert run.text == "Answered after a rate limit."
    assert len(model.main) == 2, f"expected the 429 and one retry, saw {len(model.main)} main request(s)"
    assert model.main[0].body == model.main[1].body  # the very same request, retried
    assert_clean_upstream(stack, model)


def test_rate_limit_reaches_the_cli_with_retry_after(stack: Stack, tmp_path: Path) -> None:
    """The upstream answers 429 until the gateway has passed one to the CLI: the CLI
    gets a 429 with the provider's ``retry-after``, waits, retries, and succeeds."""

    def step(conv: object) -> Error | Text:
        if any(e.status == 429 for e in stack.client.messages()):
            return Text("Answered after the CLI retried.")
        return Error(429, headers={"retry-after": "1"})

    run, model = stack.play(tmp_path, "say something", [step])
    assert_ok(run, model)
    assert run.text == "Answered after the CLI retried."
    exchanges = stack.client.messages()
    statuses = [e.status for e in exchanges]
    assert 429 in statuses and statuses[-1] == 200, statuses
    limited = next(e for e in exchanges if e.status == 429)
    assert limited.headers.get("retry-after") == "1", limited.headers
    assert len(model.main) >= 2 and all(conv.body == model.main[0].body for conv in model.main)
    assert_clean_upstream(stack, model)


def _cut_text() -> str:
    return "".join(f"sentence {i} of an answer that will never be complete. " for i in range(200))


# Claude Code retries a failed request up to 10 times with exponential backoff
# (~145 s against a provider that always fails); 2 retries show the same behaviour.
FEW_RETRIES = {"CLAUDE_CODE_MAX_RETRIES": "2"}


def _assert_cut_reported(run, model, text: str) -> None:  # type: ignore[no-untyped-def]
    model.check()
    assert run.is_error, f"a cut stream was reported as a success\n{run.describe()}"
    answer = run.text or ""
    assert "sentence 0" not in answer, f"a truncated answer was returned as the result: {answer[:300]!r}"
    assert answer != text


def test_stream_cut_on_every_attempt_is_an_error(stack: Stack, tmp_path: Path) -> None:
    """A stream cut mid-answer, then Claude Code's non-streaming fallback and its
    retries cut too: the CLI reports an API error, never the truncated text."""
    text = _cut_text()
    steps: list[Step] = [lambda conv: Cut(Text(text, chunk_size=20), after_chunks=8)]  # ~140 characters, then RST
    run, model = stack.play(tmp_path, "tell me everything", steps, env=FEW_RETRIES)
    _assert_cut_reported(run, model, text)
    assert run.returncode != 0
    bodies = [conv.body for conv in model.main]
    assert bodies[0].get("stream") is True
    # 2.1.331: one stream, then CLAUDE_CODE_MAX_RETRIES non-streaming attempts.
    assert len(bodies) >= 2, f"expected the stream, then the non-streaming fallback; saw {len(bodies)}"
    assert all(b.get("stream") is not True for b in bodies[1:])  # the non-streaming fallback
    assert_clean_upstream(stack, model, streamed=False)


def test_stream_cut_without_fallback_is_an_error(stack: Stack, tmp_path: Path) -> None:
    """Only streams: the in-stream error event reaches the CLI as an API error."""
    text = _cut_text()
    steps: list[Step] = [lambda conv: Cut(Text(text, chunk_size=20), after_chunks=8)]
    env = {**FEW_RETRIES, "CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK": "1"}
    run, model = stack.play(tmp_path, "tell me everything", steps, env=env)
    _assert_cut_reported(run, model, text)
    assert run.returncode != 0
    assert "cut" in (run.text or ""), run.describe()  # the gateway's in-stream error message
    assert_clean_upstream(stack, model)


def test_stream_cut_once_then_non_streaming_fallback(stack: Stack, tmp_path: Path) -> None:
    """A cut stream makes Claude Code retry without streaming: the gateway's
    non-streaming answer (a tool call) must work as well as the stream."""
    call = ("Bash", {"command": "echo fallback > out.txt", "description": "write out.txt"})
    steps: list[Step] = [
        once(Cut(ToolCalls([call]), after_chunks=3), ToolCalls([call])),
        Text("Written after a retry."),
    ]
    run, model = stack.play(tmp_path, "create out.txt", steps, env=FEW_RETRIES)
    assert_ok(run, model)
    assert run.read("out.txt") == b"fallback\n"
    assert run.text == "Written after a retry."
    streams = [conv.body.get("stream") is True for conv in model.main]
    assert streams[0] is True and False in streams, f"no non-streaming fallback: {streams}"
    assert_clean_upstream(stack, model, streamed=False)
    assert_tool_round_trip(model.main[-1])

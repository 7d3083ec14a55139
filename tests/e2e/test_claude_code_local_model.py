"""The real Claude Code CLI through the gateway to a local model that writes its tool
calls as text (a fake Ollama serving ``qwen2.5-coder``; ``text_tool_calls`` left at
its default, ``auto``).

The model answers the first turn with Qwen/Hermes ``<tool_call>`` markup after a
sentence, the second with a fenced JSON call, both streamed in 3-character pieces
that split the markup, with ``finish_reason: "stop"`` as Ollama sends it. Claude
Code must run both Bash commands and finish; the upstream must then see real
``tool_calls`` and ``role: tool`` results in the history.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import FakeUpstream, GatewayServer, Text, config_from
from clasp_gateway.testing.fakes.textcalls import TextToolCalls

from .helpers import assert_clean_upstream, assert_ok, assert_tool_round_trip, call_arguments
from .stack import ClientLog, Stack

pytestmark = pytest.mark.e2e

OUTPUT_LIMIT = 8192


@pytest.fixture(scope="module")
def local_stack() -> Iterator[Stack]:
    with FakeUpstream("ollama", models=["qwen2.5-coder:7b"]) as up:
        deployment = {
            "model": "ollama/qwen2.5-coder:7b",
            "api_base": up.origin + "/v1",
            "max_input_tokens": 131072,
            "max_output_tokens": OUTPUT_LIMIT,
        }
        config = config_from({"models": {"*": [deployment]}})
        client = ClientLog(create_app(config))
        with GatewayServer(config, app=client) as gw:
            yield Stack(up, gw, OUTPUT_LIMIT, client)


def test_bash_task_with_tool_calls_written_as_text(local_stack: Stack, tmp_path: Path) -> None:
    write = {"command": "echo hi > out.txt && echo written-$((6*7))", "description": "write out.txt"}
    check = {"command": "cat out.txt", "description": "show out.txt"}
    steps = [
        TextToolCalls([("Bash", write)], style="hermes", before="I'll create the file.\n"),
        TextToolCalls([("Bash", check)], style="fenced"),
        Text("Done: out.txt holds hi."),
    ]
    run, model = local_stack.play(tmp_path, "create the file out.txt containing hi", steps)
    assert_ok(run, model)
    assert run.read("out.txt") == b"hi\n"
    assert run.text == "Done: out.txt holds hi."
    assert len(model.main) == 3
    assert_clean_upstream(local_stack, model)
    last = model.main[2]
    assert_tool_round_trip(last)
    assert call_arguments(last) == [("Bash", write), ("Bash", check)]
    first_result, second_result = last.tool_messages
    assert "written-42" in first_result["content"]
    assert second_result["content"].startswith("hi\n")  # (Claude Code may append a reminder)
    # The model's markup never reached the history as text.
    for message in last.assistant_messages:
        assert "<tool_call>" not in (message.get("content") or "") and "```" not in (message.get("content") or "")
    assert last.body["model"] == "qwen2.5-coder:7b"
    # Far below the 128k window: every answer went out unchanged, and said so.
    exchanges = local_stack.client.messages()
    assert exchanges and all(e.status == 200 for e in exchanges)
    assert {e.headers.get("x-clasp-context") for e in exchanges} == {"fit"}

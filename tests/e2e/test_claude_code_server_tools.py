"""The real Claude Code CLI with a server-side tool (``docs_lookup`` from
plugins/clasp-tool-docs): the model looks up the company docs on the gateway, then asks
Claude Code to run a command; Claude Code never sees the server tool."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clasp_gateway.testing import FakeUpstream, GatewayServer, Text, ToolCalls, config_from, openai_models

from .claude import Conversation, ScriptedModel, run_claude
from .helpers import assert_tool_round_trip

pytestmark = pytest.mark.e2e

RUNBOOK = "# Cache\n\n## Warming the cache\n\nRun `echo warmed > cache.txt` from the repository root.\n"
COMMAND = "echo warmed > cache.txt"


@pytest.fixture(scope="module")
def docs_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeUpstream, GatewayServer]]:
    docs = tmp_path_factory.mktemp("company-docs")
    (docs / "cache.md").write_text(RUNBOOK)
    with FakeUpstream("openai") as up:
        config = config_from({
            "models": openai_models(up.base_url),
            "docs_lookup": {"path": str(docs)},
            "server_tools": {"enabled": ["docs_lookup"]},
        })
        with GatewayServer(config) as gateway:
            yield up, gateway


def after_lookup(conv: Conversation) -> ToolCalls | Text:
    """Round 2 (on the gateway, after docs_lookup) asks for Bash; Claude Code's next
    request (with the Bash result) gets the final answer."""
    if any(c["function"]["name"] == "Bash" for c in conv.tool_calls()):
        return Text("Cache warmed.")
    if "echo warmed > cache.txt" not in conv.last_tool_content:
        return Text("The docs_lookup result did not come back.")
    return ToolCalls([("Bash", {"command": COMMAND, "description": "warm the cache"})], text="The runbook says:")


def test_the_model_reads_the_docs_on_the_gateway_then_uses_bash(
    docs_stack: tuple[FakeUpstream, GatewayServer], tmp_path: Path
) -> None:
    up, gateway = docs_stack
    model = ScriptedModel([ToolCalls([("docs_lookup", {"query": "warm cache"})], text="Checking the runbook."),
                           after_lookup])
    up.script = model
    run = run_claude(gateway.base_url, "warm the cache the way our runbook says", tmp_path)
    model.check()
    assert run.ok, run.describe()
    assert run.read("cache.txt") == b"warmed\n"
    assert run.text == "Cache warmed."
    assert not up.errors

    # Upstream: Claude Code's request, the gateway's round with the docs result, then
    # Claude Code's request with the Bash result.
    first, looked_up, final = model.main
    assert "docs_lookup" in first.tool_names and "Bash" in first.tool_names
    assert [c["function"]["name"] for c in looked_up.tool_calls()] == ["docs_lookup"]
    assert "cache.md — Cache › Warming the cache" in looked_up.last_tool_content
    # What Claude Code sent back holds no trace of the server tool: one assistant turn
    # with both rounds' text and the Bash call, answered by Bash's output.
    [assistant] = final.assistant_messages
    assert assistant["content"] == "Checking the runbook.\n\nThe runbook says:"
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["Bash"]
    assert "docs_lookup" not in str(final.messages)
    assert_tool_round_trip(final)

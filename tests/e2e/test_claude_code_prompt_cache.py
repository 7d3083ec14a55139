"""The real Claude Code CLI on an OpenAI-compatible provider with an automatic prefix
cache (issue 11): its second model call reads the first one's prompt from cache, and
the usage and cost Claude Code receives show it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import FakeUpstream, GatewayServer, Text, ToolCalls, config_from, openai_models

from .claude import Step
from .helpers import assert_clean_upstream, assert_ok
from .stack import ClientLog, Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """gpt-4.1 on a fake that caches prompts as OpenAI does (128-token units from 1,024)."""
    with FakeUpstream("openai", prompt_cache=True) as up:
        config = config_from({"models": openai_models(up.base_url, {"*": "gpt-4.1"})})
        client = ClientLog(create_app(config))
        with GatewayServer(config, app=client) as gw:
            yield Stack(up, gw, 32768, client)


def test_second_turn_reads_the_first_from_the_providers_cache(stack: Stack, tmp_path: Path) -> None:
    steps: list[Step] = [
        ToolCalls([("Bash", {"command": "echo cached > out.txt", "description": "write out.txt"})]),
        Text("Done."),
    ]
    run, model = stack.play(tmp_path, "create the file out.txt containing cached", steps)
    assert_ok(run, model)
    assert_clean_upstream(stack, model)  # no cache_control (the fake refuses it as OpenAI does)
    assert len(model.main) == 2
    cache = stack.upstream.prompt_cache
    assert cache is not None
    main = [i for i, rec in enumerate(stack.upstream.requests) if rec.json.get("tools")]
    first, second = (cache.uses[i] for i in main)
    # Turn 2's prompt begins with turn 1's (byte-stable prefix), so the provider reads it.
    assert cache.prompts[main[1]].startswith(cache.prompts[main[0]])
    assert first.read == 0 and second.read >= 1024
    # What Claude Code received and shows: the cache reads, input without them.
    assert run.result is not None
    usage = run.result["usage"]
    assert usage["cache_read_input_tokens"] >= second.read
    assert usage["input_tokens"] < first.prompt_tokens + second.prompt_tokens - second.read + 1000
    assert run.result["total_cost_usd"] > 0

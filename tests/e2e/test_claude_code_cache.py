"""The real Claude Code CLI asks the same plain question twice through a gateway with
the response cache on: the second answer comes from the cache (``x-clasp-cache:
exact``), the upstream is asked once, and Claude Code shows the same answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import FakeUpstream, GatewayServer, Text, config_from, openai_models

from .claude import ScriptedModel, run_claude
from .helpers import assert_ok
from .stack import ClientLog

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cached() -> Iterator[tuple[FakeUpstream, GatewayServer, ClientLog]]:
    with FakeUpstream("openai") as up:
        # The shipped defaults: Claude Code sends no temperature, and its main turn is a
        # ``coding`` request; an answer without tool calls is stored.
        config = config_from({"models": openai_models(up.base_url), "cache": {}})
        client = ClientLog(create_app(config))
        with GatewayServer(config, app=client) as gw:
            yield up, gw, client


def test_a_repeated_plain_question_is_answered_from_the_cache(
    cached: tuple[FakeUpstream, GatewayServer, ClientLog], tmp_path: Path
) -> None:
    upstream, gateway, client = cached
    answer = "The capital of France is Paris."
    model = ScriptedModel([Text(answer)])
    upstream.script = model
    first = run_claude(gateway.base_url, "What is the capital of France?", tmp_path)
    assert_ok(first, model)
    assert first.text == answer
    main_calls = len(model.main)
    assert main_calls == 1
    client.clear()
    second = run_claude(gateway.base_url, "What is the capital of France?", tmp_path)  # same directory
    assert second.ok and second.text == answer
    assert len(model.main) == main_calls  # the upstream was not asked again for the main turn
    statuses = [(e.status, e.headers.get("x-clasp-cache")) for e in client.messages()]
    assert (200, "exact") in statuses, statuses

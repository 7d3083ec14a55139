"""The request build's memo (``memo.py``): the same Converse body as LiteLLM's own, on
every kind of request and whatever a caller does to what it got, bounded, and a loud
failure when a LiteLLM release renames a remembered method."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import litellm
import pytest
from clasp_provider_bedrock import BedrockProvider
from clasp_provider_bedrock.converse import converse_body
from clasp_provider_bedrock.memo import REMEMBERED, remember_answers

from clasp_gateway.testing import load_module

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
from workload import openai_request  # noqa: E402

fake = load_module(Path(__file__).with_name("fake_bedrock.py"), "clasp_provider_bedrock_fake")
TOOL: Any = {"type": "function", "function": {"name": "Bash", "description": "Run", "parameters": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}


def claude_code() -> dict[str, Any]:
    body = openai_request(fake.MODEL)
    for key in ("model", "stream", "stream_options"):
        body.pop(key, None)
    return body


def variants() -> list[tuple[str, dict[str, Any], str | None]]:
    base = claude_code()
    cached_tools = copy.deepcopy(base)
    cached_tools["tools"][-1]["cache_control"] = {"type": "ephemeral"}
    return [
        ("claude code", base, None),
        ("another turn", {**base, "messages": [*base["messages"], {"role": "user", "content": "and then?"}]}, None),
        ("tool cache point", cached_tools, None),
        ("one tool, required", {"messages": [{"role": "user", "content": "ls"}], "tools": [TOOL],
                                "tool_choice": "required", "max_tokens": 100, "temperature": 0.2, "stop": ["###"]}, None),
        ("named tool", {"messages": [{"role": "user", "content": "ls"}], "tools": [TOOL],
                        "tool_choice": {"type": "function", "function": {"name": "Bash"}}, "max_tokens": 100}, None),
        ("no tools", {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                      "max_tokens": 10, "top_k": 40}, None),
        ("reasoning", {**base, "max_tokens": 8000}, "high"),
        ("less reasoning", {**base, "max_tokens": 8000}, "low"),
        ("json", {"messages": [{"role": "user", "content": "a name"}], "max_tokens": 50,
                  "response_format": {"type": "json_object"}}, None),
    ]


@pytest.mark.parametrize("model", [fake.MODEL, "us.anthropic.claude-sonnet-4-20250514-v1:0",
                                   "global.anthropic.claude-opus-4-6-v1",  # effort: output_config
                                   "meta.llama3-1-70b-instruct-v1:0", "amazon.nova-pro-v1:0"])
def test_the_body_is_litellms_own_on_every_kind_of_request(model: str) -> None:
    plain, memo = litellm.AmazonConverseConfig(), remember_answers(litellm.AmazonConverseConfig())
    for name, body, effort in variants() * 2:  # the second round is answered from the memo
        expected = converse_body(plain, model, copy.deepcopy(body), reasoning_effort=effort)
        got = converse_body(memo, model, copy.deepcopy(body), reasoning_effort=effort)
        assert got == expected, name


def test_a_caller_that_edits_its_answer_does_not_change_the_next_one() -> None:
    memo = remember_answers(litellm.AmazonConverseConfig())
    first = memo.get_supported_openai_params(fake.MODEL)
    first.clear()
    assert memo.get_supported_openai_params(fake.MODEL) == litellm.AmazonConverseConfig().get_supported_openai_params(
        fake.MODEL)
    body = claude_code()
    one = converse_body(memo, fake.MODEL, copy.deepcopy(body))
    one["toolConfig"]["tools"].clear()
    two = converse_body(memo, fake.MODEL, copy.deepcopy(body))
    assert len(two["toolConfig"]["tools"]) == len(body["tools"])


def test_the_memo_is_bounded() -> None:
    memo = remember_answers(litellm.AmazonConverseConfig(), size=4)
    for n in range(50):
        tools = [{**TOOL, "function": {**TOOL["function"], "name": f"tool{n}"}}]
        converse_body(memo, fake.MODEL, {"messages": [{"role": "user", "content": "x"}], "tools": tools})
    cells = memo._process_tools_and_beta.__closure__
    answers = next(c.cell_contents for c in cells if isinstance(c.cell_contents, dict))
    assert len(answers) <= 4


def test_a_renamed_litellm_method_fails_loudly() -> None:
    class Renamed:
        def get_supported_openai_params(self, model: str) -> list[str]:
            return []

    with pytest.raises(AttributeError, match="_process_tools_and_beta"):
        remember_answers(Renamed())
    assert set(REMEMBERED) <= set(dir(litellm.AmazonConverseConfig))


def test_the_adapter_builds_with_the_memo() -> None:
    config = BedrockProvider().converse_config()
    assert all(hasattr(getattr(config, name), "__wrapped__") for name in REMEMBERED)

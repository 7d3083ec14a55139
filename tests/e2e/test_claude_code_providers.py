"""The real Claude Code CLI on providers that are not OpenAI-compatible.

Claude Code asks for a file to be written with the Bash tool; the gateway serves it
from a fake Gemini (``generateContent``/``streamGenerateContent``, its strict schema
subset, ``x-goog-api-key``) and a fake Cohere (v2 chat, typed SSE events) through the
``transform`` path: LiteLLM's provider config builds each request, the gateway's
own session streams the answer; and from a fake AI21 (Jamba) through LiteLLM's
catch-all, ``litellm.acompletion``. The fakes refuse what the real APIs refuse, so a
schema keyword Gemini rejects or a tool result that does not answer its call fails
the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clasp_gateway.testing import FakeUpstream, GatewayServer, Text, ToolCalls, config_from
from clasp_gateway.testing.fakes.gemini import openai_view
from clasp_gateway.testing.fakes.record import Recorded

from .claude import ClaudeRun, ScriptedModel, Step, run_claude
from .helpers import assert_ok

pytestmark = pytest.mark.e2e

UPSTREAM_KEY = "provider-key-0123456789"
PROVIDERS = {
    "gemini": lambda up: {"model": "gemini/gemini-2.5-flash", "api_base": up.base_url, "api_key": UPSTREAM_KEY},
    "cohere": lambda up: {"model": "cohere/command-a-03-2025", "api_base": up.base_url, "api_key": UPSTREAM_KEY},
    # LiteLLM's catch-all (litellm.acompletion): AI21 has no transform recipe or profile here.
    "ai21": lambda up: {"model": "ai21/jamba-large-1.7", "api_base": up.base_url, "api_key": UPSTREAM_KEY},
}


class ProviderStack:
    """A fake of one provider behind a running gateway, scripted in OpenAI terms."""

    def __init__(self, name: str, upstream: FakeUpstream, gateway: GatewayServer) -> None:
        self.name = name
        self.upstream = upstream
        self.gateway = gateway

    def play(self, root: Path, prompt: str, steps: list[Step]) -> tuple[ClaudeRun, ScriptedModel]:
        model = ScriptedModel(list(steps))
        # Gemini bodies are not OpenAI-shaped: the script reads an OpenAI view of them.
        view = openai_view if self.name == "gemini" else (lambda body: body)

        def script(body: dict[str, Any], recorded: Recorded) -> Any:
            return model(view(body), recorded)

        self.upstream.reset()
        self.upstream.script = script
        run = run_claude(self.gateway.base_url, prompt, root)
        assert not self.upstream.errors, f"fake upstream errors: {self.upstream.errors!r}"
        return run, model


@pytest.fixture(scope="module", params=list(PROVIDERS))
def provider_stack(request: pytest.FixtureRequest) -> Iterator[ProviderStack]:
    name = request.param
    with FakeUpstream(name, require_key=UPSTREAM_KEY) as up:
        config = config_from({"models": {"*": [PROVIDERS[name](up)]}})
        with GatewayServer(config) as gateway:
            yield ProviderStack(name, up, gateway)


def test_bash_writes_a_file(provider_stack: ProviderStack, tmp_path: Path) -> None:
    stack = provider_stack
    command = "printf '%s\\n' 'héllo 世界' > out.txt && echo written-$((6*7))"
    steps: list[Step] = [
        ToolCalls([("Bash", {"command": command, "description": "write out.txt"})], text="I'll write the file."),
        Text(f"Done via {stack.name}: out.txt written."),
    ]
    run, model = stack.play(tmp_path, "create out.txt containing héllo 世界", steps)
    assert_ok(run, model)
    assert run.read("out.txt") == "héllo 世界\n".encode()
    assert run.text == f"Done via {stack.name}: out.txt written."
    assert len(model.main) == 2

    # What the provider received, in its own format.
    recorded = [conv.recorded for conv in model.main]
    assert all(rec is not None for rec in recorded)
    first, second = recorded[0].json, recorded[1].json  # type: ignore[union-attr]
    if stack.name == "gemini":
        assert recorded[0].path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"  # type: ignore[union-attr]
        assert recorded[0].query.get("alt") == "sse"  # type: ignore[union-attr]
        assert recorded[0].headers["x-goog-api-key"] == UPSTREAM_KEY  # type: ignore[union-attr]
        names = {d["name"] for t in first["tools"] for d in t.get("function_declarations", t.get("functionDeclarations"))}
        assert {"Bash", "Read", "Write", "Edit"} <= names  # Claude Code's real schemas passed the strict fake
        text = json.dumps(first["tools"])
        for keyword in ('"additionalProperties"', '"$schema"', '"$ref"', '"default"'):
            assert keyword not in text, f"{keyword} reached Gemini"
        parts = [p for c in second["contents"] for p in c["parts"]]
        calls = [p.get("function_call") or p.get("functionCall") for p in parts if "function_call" in p or "functionCall" in p]
        results = [p.get("function_response") or p.get("functionResponse")
                   for p in parts if "function_response" in p or "functionResponse" in p]
        assert [(c["name"], c["args"]) for c in calls] == [("Bash", {"command": command, "description": "write out.txt"})]
        assert [r["name"] for r in results] == ["Bash"] and "written-42" in json.dumps(results[0]["response"])
    else:
        path, model = ("/v2/chat", "command-a-03-2025") if stack.name == "cohere" else \
            ("/studio/v1/chat/completions", "jamba-large-1.7")
        assert recorded[0].path == path and recorded[0].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"  # type: ignore[union-attr]
        assert first["stream"] is True and first["model"] == model
        assert {"Bash", "Read", "Write", "Edit"} <= {t["function"]["name"] for t in first["tools"]}
        assistant = next(m for m in second["messages"] if m["role"] == "assistant" and m.get("tool_calls"))
        [call] = assistant["tool_calls"]
        assert call["id"].startswith("Bash_" if stack.name == "cohere" else "call_")
        assert json.loads(call["function"]["arguments"])["command"] == command
        [result] = [m for m in second["messages"] if m["role"] == "tool"]
        assert result["tool_call_id"] == call["id"] and "written-42" in result["content"]

"""The real Claude Code CLI through the gateway to Claude on Google Vertex AI: the provider
plugin ``plugins/clasp-provider-vertex`` against its fake token endpoint (which verifies
the service account's signed JWT) and its fake Vertex (which checks the bearer token)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clasp_gateway.testing import GatewayServer, config_from, load_module

from .claude import MAIN_TOOL, run_claude

pytestmark = pytest.mark.e2e

PLUGIN_TESTS = Path(__file__).resolve().parents[2] / "plugins" / "clasp-provider-vertex" / "tests"


fake = load_module(PLUGIN_TESTS / "fake_vertex.py", "clasp_provider_vertex_fake")
COMMAND = "echo hi > out.txt && echo written-$((6*7))"
MODEL = "claude-sonnet-4-5@20250929"


class Scenario:
    """Main-loop requests (they offer Bash): the first asks for Bash, the next answers.
    Side requests (titles, quota probes) get a short text."""

    def __init__(self) -> None:
        self.main: list[Any] = []

    def __call__(self, received: Any) -> Any:
        if MAIN_TOOL not in [t["name"] for t in received.body.get("tools") or []]:
            return fake.Answer("OK")
        self.main.append(received)
        if not any(m["role"] == "assistant" for m in received.body["messages"]):
            return fake.Answer(calls=[("Bash", {"command": COMMAND, "description": "write out.txt"})])
        return fake.Answer("Done: out.txt holds hi.")


@pytest.fixture(scope="module")
def vertex_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, GatewayServer]]:
    key = fake.keygen()
    with fake.FakeVertex(key.public_key()) as gcp:
        key_file = tmp_path_factory.mktemp("vertex") / "sa.json"
        key_file.write_text(json.dumps(fake.service_account(key, gcp.token_uri)))
        models = {"*": [{"model": f"vertex/{MODEL}", "vertex_location": fake.LOCATION, "api_base": gcp.base_url,
                         "vertex_credentials": f"file:{key_file}", "base_model": f"vertex_ai/{MODEL}"}]}
        with GatewayServer(config_from({"models": models})) as gateway:
            yield gcp, gateway


def test_claude_code_runs_bash_through_claude_on_vertex(vertex_gateway: Any, tmp_path: Path) -> None:
    gcp, gateway = vertex_gateway
    scenario = Scenario()
    gcp.script = scenario
    run = run_claude(gateway.base_url, "create the file out.txt containing hi", tmp_path)
    assert run.ok, run.describe()
    assert run.read("out.txt") == b"hi\n"
    assert run.text == "Done: out.txt holds hi."
    assert len(gcp.issued) == 1 and gcp.grants_refused == []  # one token served the whole session

    assert len(scenario.main) == 2
    first, second = scenario.main
    assert first.body["anthropic_version"] == "vertex-2023-10-16" and first.body["system"]
    assert first.body["max_tokens"] <= 64000  # clamped to the model's limit (base_model: LiteLLM's catalogue)
    [at] = [i for i, m in enumerate(second.body["messages"]) if m["role"] == "assistant"]
    [use] = [b for b in second.body["messages"][at]["content"] if b["type"] == "tool_use"]
    assert (use["name"], use["input"]) == ("Bash", {"command": COMMAND, "description": "write out.txt"})
    [result] = [b for b in second.body["messages"][at + 1]["content"] if b["type"] == "tool_result"]
    assert result["tool_use_id"] == use["id"]
    assert "written-42" in json.dumps(result["content"])  # the shell ran it; the output came back through Vertex

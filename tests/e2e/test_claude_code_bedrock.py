"""The real Claude Code CLI through the gateway to AWS Bedrock: the provider plugin
``plugins/clasp-provider-bedrock`` (installed with pip, found by its entry point) against
its fake Bedrock, which verifies every request's SigV4 signature and answers in AWS
event-stream framing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clasp_gateway.testing import GatewayServer, config_from, load_module

from .claude import MAIN_TOOL, run_claude

pytestmark = pytest.mark.e2e

PLUGIN_TESTS = Path(__file__).resolve().parents[2] / "plugins" / "clasp-provider-bedrock" / "tests"


fake = load_module(PLUGIN_TESTS / "fake_bedrock.py", "clasp_provider_bedrock_fake")
COMMAND = "echo hi > out.txt && echo written-$((6*7))"


class Scenario:
    """Main-loop requests (they offer Bash): the first asks for Bash, the next answers.
    Side requests (titles, quota probes) get a short text."""

    def __init__(self) -> None:
        self.main: list[Any] = []
        self.side = 0

    def __call__(self, received: Any) -> Any:
        tools = (received.body.get("toolConfig") or {}).get("tools") or []
        if MAIN_TOOL not in [t["toolSpec"]["name"] for t in tools]:
            self.side += 1
            return fake.Answer("OK")
        self.main.append(received)
        turn = sum(1 for m in received.body["messages"] if m["role"] == "assistant")
        if turn == 0:
            return fake.Answer(calls=[("Bash", {"command": COMMAND, "description": "write out.txt"})])
        return fake.Answer("Done: out.txt holds hi.")


SESSION_TOKEN = "e2e-session-IQoJb3JpZ2luX2VjE"
"""Shaped like an AWS session token. It becomes a registered secret for the rest of the
test run, and redaction hides any secret's last characters: a value ending in a word
("...-token") would hide that word in every later test's messages."""


@pytest.fixture(scope="module")
def bedrock_gateway() -> Iterator[tuple[Any, GatewayServer]]:
    with fake.FakeBedrock() as aws:
        aws.tokens = {SESSION_TOKEN}
        models = {"*": [{"model": f"bedrock/{fake.MODEL}", "region": fake.REGION, "api_base": aws.base_url,
                         # keys in clasp.yaml (literal here; ${ENV} references in real files)
                         "aws_access_key_id": fake.ACCESS_KEY, "aws_secret_access_key": fake.SECRET_KEY,
                         "aws_session_token": SESSION_TOKEN}]}
        with GatewayServer(config_from({"models": models})) as gateway:
            yield aws, gateway


def test_claude_code_runs_bash_through_bedrock(bedrock_gateway: Any, tmp_path: Path) -> None:
    aws, gateway = bedrock_gateway
    scenario = Scenario()
    aws.script = scenario
    run = run_claude(gateway.base_url, "create the file out.txt containing hi", tmp_path)
    assert run.ok, run.describe()
    assert run.read("out.txt") == b"hi\n"
    assert run.text == "Done: out.txt holds hi."
    assert aws.rejected == []  # every request's signature verified

    assert len(scenario.main) == 2
    first, second = scenario.main
    assert first.stream and first.body["system"] and first.headers["X-Amz-Security-Token"] == SESSION_TOKEN
    assert all(fake.validate(r.body) is None for r in scenario.main)  # what the real API would accept
    [at] = [i for i, m in enumerate(second.body["messages"]) if m["role"] == "assistant"]
    [use] = [b["toolUse"] for b in second.body["messages"][at]["content"] if "toolUse" in b]
    assert (use["name"], use["input"]) == ("Bash", {"command": COMMAND, "description": "write out.txt"})
    [result] = [b["toolResult"] for b in second.body["messages"][at + 1]["content"] if "toolResult" in b]
    assert result["toolUseId"] == use["toolUseId"]
    assert "written-42" in json_text(result["content"])  # the shell ran it; the output came back through Converse


def json_text(content: list[dict[str, Any]]) -> str:
    return "".join(part.get("text", "") for part in content)

"""The real Claude Code CLI through the gateway to a provider LiteLLM does not know: the
example plugin ``plugins/clasp-provider-example`` (installed with pip, found by its entry
point) speaking the fake Acme Generate API (NDJSON)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clasp_gateway.testing import GATEWAY_KEY, GatewayServer, config_from, load_module

from .claude import MAIN_TOOL, run_claude

pytestmark = pytest.mark.e2e

PLUGIN_TESTS = Path(__file__).resolve().parents[2] / "plugins" / "clasp-provider-example" / "tests"


fake = load_module(PLUGIN_TESTS / "fake_acme.py", "clasp_provider_example_fake_acme")
COMMAND = "echo hi > out.txt && echo written-$((6*7))"


class Scenario:
    """Main-loop requests (they offer Bash): step k answers the request holding k model
    turns. Side requests (titles, quota probes) get a short text."""

    def __init__(self) -> None:
        self.main: list[dict[str, Any]] = []
        self.side = 0

    def __call__(self, body: dict[str, Any]) -> Any:
        if MAIN_TOOL not in [t["name"] for t in body.get("tools") or []]:
            self.side += 1
            return fake.Answer("OK")
        self.main.append(body)
        turn = sum(1 for m in body["messages"] if m["role"] == "model")
        if turn == 0:
            return fake.Answer(calls=[("Bash", {"command": COMMAND, "description": "write out.txt"})])
        return fake.Answer("Done: out.txt holds hi.")


@pytest.fixture(scope="module")
def acme_gateway() -> Iterator[tuple[Any, GatewayServer]]:
    with fake.FakeAcme() as api:
        models = {"*": [{"model": "acme/acme-coder-1", "api_base": api.base_url, "api_key": fake.API_KEY,
                         "max_output_tokens": 8192}]}
        with GatewayServer(config_from({"models": models})) as gateway:
            yield api, gateway


def test_claude_code_runs_bash_through_the_example_provider(acme_gateway: Any, tmp_path: Path) -> None:
    api, gateway = acme_gateway
    plugins = httpx.get(gateway.base_url + "/-/plugins", headers={"x-api-key": GATEWAY_KEY}).json()
    assert any(p["name"] == "provider_example" and p["source"].startswith("entry point") for p in plugins)

    scenario = Scenario()
    api.script = scenario
    run = run_claude(gateway.base_url, "create the file out.txt containing hi", tmp_path)
    assert run.ok, run.describe()
    assert run.read("out.txt") == b"hi\n"
    assert run.text == "Done: out.txt holds hi."

    assert len(scenario.main) == 2
    first, second = scenario.main
    assert first["max_output_tokens"] == 8192 and first["system"]
    assert all(fake.validate(body) is None for body in scenario.main)  # what the real API would accept
    [at] = [i for i, m in enumerate(second["messages"]) if m["role"] == "model"]
    call, result = second["messages"][at], second["messages"][at + 1]
    assert [(c["name"], c["input"]) for c in call["tool_calls"]] == [
        ("Bash", {"command": COMMAND, "description": "write out.txt"})]
    assert result["role"] == "tool" and result["tool_call_id"] == call["tool_calls"][0]["id"]
    assert "written-42" in result["content"]  # the shell ran it; the output came back through Acme's format

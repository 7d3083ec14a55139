"""The real Claude Code CLI over deployments with several API keys and Azure AD tokens.

One key of an OpenAI deployment is rate-limited for the whole run: the gateway moves
each request to the other key at once, so the CLI never sees a 429 and never waits.
An Azure deployment authenticates with Azure AD tokens (one token request for the
whole run, sent as ``Authorization: Bearer``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import Error, FakeTokenEndpoint, FakeUpstream, GatewayServer, Text, ToolCalls, config_from
from clasp_gateway.testing.fakes.keys import key_of, openai_limits
from clasp_gateway.testing.fakes.record import Recorded

from .claude import ScriptedModel, Step, run_claude
from .helpers import assert_ok
from .stack import ClientLog

pytestmark = pytest.mark.e2e

LIMITED, SPARE = "e2e-limited-key-1a2b3c", "e2e-spare-key-4d5e6f"
AAD_SECRET = "e2e-aad-client-secret-7g8h9i"
COMMAND = "echo hi > out.txt && echo written-$((6*7))"


def steps() -> list[Step]:
    return [ToolCalls([("Bash", {"command": COMMAND, "description": "write out.txt"})]), Text("Done: out.txt holds hi.")]


class KeyAware:
    """The provider's side: the limited key gets 429 (60 s) on every request; the other
    key answers the scripted conversation."""

    def __init__(self, model: ScriptedModel) -> None:
        self.model = model
        self.keys: list[str | None] = []

    def __call__(self, body: dict[str, Any], rec: Recorded) -> Any:
        key = key_of(rec)
        self.keys.append(key)
        if key == LIMITED:
            return Error(429, headers={**openai_limits(0, reset_requests="1m0s"), "retry-after": "60"})
        return self.model(body, rec)


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2E_KEY_LIMITED", LIMITED)
    monkeypatch.setenv("E2E_KEY_SPARE", SPARE)
    monkeypatch.setenv("E2E_AAD_SECRET", AAD_SECRET)


@pytest.fixture
def openai_pool(environment: None) -> Iterator[tuple[FakeUpstream, GatewayServer, ClientLog]]:
    with FakeUpstream("openai", require_key=True) as up:
        config = config_from({"models": {"*": [{
            "model": "openai/gpt-4o", "api_base": up.base_url, "api_keys": ["${E2E_KEY_LIMITED}", "${E2E_KEY_SPARE}"],
        }]}})
        client = ClientLog(create_app(config))
        with GatewayServer(config, app=client) as gateway:
            yield up, gateway, client


def test_a_rate_limited_key_is_invisible_to_claude_code(openai_pool: Any, tmp_path: Path) -> None:
    up, gateway, client = openai_pool
    model = ScriptedModel(steps())
    provider = KeyAware(model)
    up.script = provider
    run = run_claude(gateway.base_url, "create the file out.txt containing hi", tmp_path)
    assert_ok(run, model)
    assert run.read("out.txt") == b"hi\n" and run.text == "Done: out.txt holds hi."
    statuses = [e.status for e in client.messages()]
    assert statuses and all(s == 200 for s in statuses), statuses
    # The limited key was tried once, then benched for its 60 s: every other request
    # went straight to the spare key.
    assert provider.keys.count(LIMITED) == 1, provider.keys
    assert provider.keys.count(SPARE) == len(provider.keys) - 1 >= 2


def test_claude_code_through_azure_ad(environment: None, tmp_path: Path) -> None:
    with FakeUpstream("azure", require_key=True) as azure, FakeTokenEndpoint(client_secret=AAD_SECRET) as aad:
        model = ScriptedModel(steps())

        def provider(body: dict[str, Any], rec: Recorded) -> Any:
            if "api-key" in rec.headers or not aad.valid(rec.bearer):
                return Error(401)
            return model(body, rec)

        azure.script = provider
        config = config_from({"models": {"*": [{
            "model": "azure/my-gpt4o", "api_base": azure.origin, "base_model": "gpt-4o",
            "azure_ad": {"tenant_id": aad.tenant, "client_id": aad.client_id, "client_secret": "${E2E_AAD_SECRET}",
                         "token_url": aad.token_url},
        }]}})
        with GatewayServer(config) as gateway:
            run = run_claude(gateway.base_url, "create the file out.txt containing hi", tmp_path)
        assert_ok(run, model)
        assert run.read("out.txt") == b"hi\n"
        assert aad.count == 1
        assert all(r.bearer in aad.issued for r in azure.requests)

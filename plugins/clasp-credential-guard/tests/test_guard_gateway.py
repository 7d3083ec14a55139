"""The guard in a real gateway, in front of fake providers (clasp_gateway.testing)."""

from __future__ import annotations

import json
import time
from typing import Any

import clasp_credential_guard
import httpx
import pytest

from clasp_gateway import ConfigError, hookimpl
from clasp_gateway.testing import FakeUpstream, StartGateway, Text, ToolCalls

PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
       "-----END RSA PRIVATE KEY-----")
ASK = {"model": "claude-x", "max_tokens": 50}


def dep(up: FakeUpstream, dep_id: str, **extra: object) -> dict[str, object]:
    return {"model": "openai/gpt-4o", "id": dep_id, "api_base": up.base_url, "api_key": "sk-upstream-1234567890",
            **extra}


def messages(gateway: object, body: dict[str, object]) -> httpx.Response:
    return httpx.post(gateway.base_url + "/v1/messages", headers=gateway.headers, json=body)  # type: ignore[attr-defined]


@pytest.fixture
def second() -> object:
    with FakeUpstream("openai") as up:
        yield up


def test_a_private_key_is_never_sent_to_a_third_party(fake_upstream: FakeUpstream, start_gateway: StartGateway) -> None:
    gateway = start_gateway({"models": {"*": [dep(fake_upstream, "public")]}, "credential_guard": {}},
                            plugins=[clasp_credential_guard])
    body = {**ASK, "system": "be brief", "messages": [
        {"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
        {"role": "user", "content": [{"type": "text", "text": f"why does this fail?\n{PEM}"}]}]}
    answer = messages(gateway, body)
    assert answer.status_code == 403
    error = answer.json()
    assert error["type"] == "error" and error["error"]["type"] == "permission_error"
    assert "a private key (PEM) in messages[2].content[0] (user)" in error["error"]["message"]
    assert "public" in error["error"]["message"]
    assert "MIIE" not in answer.text and "BEGIN" not in answer.text
    assert fake_upstream.requests == []
    clean = messages(gateway, {**ASK, "messages": [{"role": "user", "content": "hello"}]})
    assert clean.status_code == 200 and len(fake_upstream.requests) == 1


def test_openai_route_answers_in_openai_shape(fake_upstream: FakeUpstream, start_gateway: StartGateway) -> None:
    gateway = start_gateway({"models": {"*": [dep(fake_upstream, "public")]}, "credential_guard": {}},
                            plugins=[clasp_credential_guard])
    token = "ghp" + "_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    answer = httpx.post(gateway.base_url + "/v1/chat/completions", headers=gateway.headers, json={
        "model": "gpt-4o", "messages": [{"role": "system", "content": "x"},
                                        {"role": "user", "content": f"use {token} to push"}]})
    assert answer.status_code == 403
    assert "a GitHub token in messages[1].content (user)" in answer.json()["error"]["message"]
    assert token not in answer.text and fake_upstream.requests == []


def test_a_trusted_deployment_still_gets_it(fake_upstream: FakeUpstream, second: FakeUpstream,
                                           start_gateway: StartGateway) -> None:
    gateway = start_gateway({"models": {"*": [dep(fake_upstream, "public"), dep(second, "in-house", trusted=True)]},
                             "credential_guard": {}}, plugins=[clasp_credential_guard])
    answer = messages(gateway, {**ASK, "messages": [{"role": "user", "content": PEM}]})
    assert answer.status_code == 200
    assert answer.headers["x-clasp-deployment"] == "in-house"
    assert fake_upstream.requests == [] and len(second.requests) == 1
    # A clean request goes to the first candidate as usual.
    assert messages(gateway, {**ASK, "messages": [{"role": "user", "content": "hi"}]}).headers[
        "x-clasp-deployment"] == "public"


def test_self_hosted_providers_are_trusted_unless_marked(fake_upstream: FakeUpstream, start_gateway: StartGateway) -> None:
    local = {"model": "hosted_vllm/qwen", "id": "vllm", "api_base": fake_upstream.base_url,
             "api_key": "sk-local-1234567890"}
    gateway = start_gateway({"models": {"*": [local]}, "credential_guard": {}}, plugins=[clasp_credential_guard])
    assert messages(gateway, {**ASK, "messages": [{"role": "user", "content": PEM}]}).status_code == 200


def test_teams_and_routes_turn_it_off_or_on(fake_upstream: FakeUpstream, start_gateway: StartGateway) -> None:
    body = {**ASK, "messages": [{"role": "user", "content": PEM}]}
    models = {"*": [dep(fake_upstream, "public")]}
    off_for_qa = start_gateway({"models": models, "credential_guard": {"teams": {"qa": False}}},
                               plugins=[clasp_credential_guard])
    assert messages(off_for_qa, body).status_code == 200  # the test key's team is qa
    by_route = start_gateway({"models": models, "credential_guard": {"enabled": False, "routes": {"claude-*": True}}},
                             plugins=[clasp_credential_guard])
    assert messages(by_route, body).status_code == 403
    assert messages(by_route, {**body, "model": "gpt-4o"}).status_code == 200
    only_keys = start_gateway({"models": models, "credential_guard": {"kinds": ["aws_access_key"]}},
                              plugins=[clasp_credential_guard])
    assert messages(only_keys, body).status_code == 200


def test_a_tool_result_is_scanned_too(fake_upstream: FakeUpstream, start_gateway: StartGateway) -> None:
    gateway = start_gateway({"models": {"*": [dep(fake_upstream, "public")]}, "credential_guard": {}},
                            plugins=[clasp_credential_guard])
    secret = "aws_secret_access_key = q8Z/3kT9mX2vB7nR4pL6wY1cF5hJ0dG+sA9eU3iO"
    body = {**ASK, "tools": [{"name": "Read", "input_schema": {"type": "object"}}], "messages": [
        {"role": "user", "content": "read ~/.aws/credentials"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {"path": "x"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                      "content": "[default]\naws_access_key_id = AKIAZ7Q2M4X9W1R8T5Y3\n" + secret}]}]}
    answer = messages(gateway, body)
    assert answer.status_code == 403
    assert "an AWS access key with its secret" in answer.json()["error"]["message"]
    assert "q8Z/3kT9" not in answer.text


def test_mistakes_are_reported_before_serving(start_gateway: StartGateway) -> None:
    with pytest.raises(ConfigError) as caught:
        start_gateway({"models": {}, "credential_guard": {"kinds": ["pgp"], "teams": {"qa": "no"}, "enabeld": True}},
                      plugins=[clasp_credential_guard])
    text = str(caught.value)
    assert "credential_guard.kinds.0" in text and "credential_guard.teams.qa" in text
    assert "credential_guard.enabeld" in text


GITHUB = "ghp" + "_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
SLACK = "xox" + "b-" + "1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx"
PASSWORD = "DATABASE_PASSWORD=Xq7#pL9vR2m!Zk4"
CLEAN_TOOL = {"name": "Read", "description": "Read a file", "input_schema": {
    "type": "object", "properties": {"path": {"type": "string", "description": "where"}}}}


def tool_with(where: str, secret: str) -> dict[str, object]:
    """An Anthropic tool definition carrying ``secret`` in one place."""
    schema: dict[str, object] = {"type": "object", "properties": {"token": {"type": "string"}}}
    tool: dict[str, object] = {"name": "Deploy", "description": "Deploy the service", "input_schema": schema}
    prop = schema["properties"]["token"]  # type: ignore[index]
    if where == "description":
        tool["description"] = f"Deploy with {secret}"
    elif where == "default":
        prop["default"] = secret
    elif where == "enum":
        prop["enum"] = ["none", secret]
    elif where == "examples":
        prop["examples"] = [{"token": secret}]
    return tool


@pytest.mark.parametrize(("place", "expected"), [
    ("description", "tools[1].description"),
    ("default", "tools[1].input_schema.properties.token.default"),
    ("enum", "tools[1].input_schema.properties.token.enum[1]"),
    ("examples", "tools[1].input_schema.properties.token.examples[0].token"),
])
def test_tool_definitions_are_scanned(fake_upstream: FakeUpstream, start_gateway: StartGateway, place: str,
                                      expected: str) -> None:
    gateway = start_gateway({"models": {"*": [dep(fake_upstream, "public")]}, "credential_guard": {}},
                            plugins=[clasp_credential_guard])
    answer = messages(gateway, {**ASK, "tools": [CLEAN_TOOL, tool_with(place, GITHUB)],
                                "messages": [{"role": "user", "content": "deploy it"}]})
    assert answer.status_code == 403, answer.text
    assert f"a GitHub token in {expected};" in answer.json()["error"]["message"]
    assert GITHUB not in answer.text and fake_upstream.requests == []


ANTHROPIC_PLACES = [
    # A tool_use input (the model's own call, echoed back in the history).
    ([{"role": "user", "content": "deploy"},
      {"role": "assistant", "content": [{"type": "text", "text": "running it"}, {
          "type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": f"git push https://{GITHUB}@github.com/x"}}]},
      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "done"}]}],
     "a GitHub token in messages[1].content[1].input.command (assistant)"),
    # A tool_result's nested text block, after a clean one.
    ([{"role": "user", "content": "read .env"},
      {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {"path": ".env"}}]},
      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
          {"type": "text", "text": "# settings"}, {"type": "text", "text": PASSWORD}]},
          {"type": "text", "text": "what is wrong?"}]}],
     "a password or secret assignment in messages[2].content[0].content[1] (user)"),
    # A tool_result given as a string, in the second block of its message.
    ([{"role": "user", "content": "read it"},
      {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}},
                                        {"type": "tool_use", "id": "t2", "name": "Read", "input": {}}]},
      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "fine"},
                                   {"type": "tool_result", "tool_use_id": "t2", "content": f"SLACK={SLACK}"}]}],
     "a Slack token in messages[2].content[1].content (user)"),
    # A text document block.
    ([{"role": "user", "content": [{"type": "document", "source": {
        "type": "text", "media_type": "text/plain", "data": f"token: {GITHUB}"}}, {"type": "text", "text": "why?"}]}],
     "a GitHub token in messages[0].content[0].source.data (user)"),
]


@pytest.mark.parametrize(("history", "expected"), ANTHROPIC_PLACES)
def test_every_place_of_a_conversation_is_scanned(fake_upstream: FakeUpstream, start_gateway: StartGateway,
                                                 history: list[dict[str, object]], expected: str) -> None:
    gateway = start_gateway({"models": {"*": [dep(fake_upstream, "public")]}, "credential_guard": {}},
                            plugins=[clasp_credential_guard])
    answer = messages(gateway, {**ASK, "tools": [CLEAN_TOOL], "messages": history})
    assert answer.status_code == 403, answer.text
    assert expected + ";" in answer.json()["error"]["message"]
    assert fake_upstream.requests == []


def test_the_system_prompt_is_scanned(fake_upstream: FakeUpstream, start_gateway: StartGateway) -> None:
    gateway = start_gateway({"models": {"*": [dep(fake_upstream, "public")]}, "credential_guard": {}},
                            plugins=[clasp_credential_guard])
    system = [{"type": "text", "text": "You are a deploy bot."}, {"type": "text", "text": f"Use {GITHUB}."}]
    answer = messages(gateway, {**ASK, "system": system, "messages": [{"role": "user", "content": "go"}]})
    assert answer.status_code == 403 and "a GitHub token in system[1];" in answer.json()["error"]["message"]


@pytest.mark.parametrize(("body", "expected"), [
    ({"tools": [{"type": "function", "function": {"name": "deploy", "description": f"uses {GITHUB}",
                                                  "parameters": {"type": "object"}}}],
      "messages": [{"role": "user", "content": "go"}]}, "tools[0].function.description"),
    ({"tools": [{"type": "function", "function": {"name": "deploy", "parameters": {
        "type": "object", "properties": {"token": {"type": "string", "default": GITHUB}}}}}],
      "messages": [{"role": "user", "content": "go"}]}, "tools[0].function.parameters.properties.token.default"),
    ({"messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "sh", "arguments": json.dumps(
            {"cmd": "psql", "env": {"DB_PASSWORD": "Xq7#pL9vR2m!Zk4"}})}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}]},
     "messages[1].tool_calls[0].function.arguments.env.DB_PASSWORD (assistant)"),
    ({"messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "sh", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": f"SLACK={SLACK}"}]}]},
     "messages[2].content[0] (tool)"),
])
def test_openai_tools_calls_and_results_are_scanned(fake_upstream: FakeUpstream, start_gateway: StartGateway,
                                                   body: dict[str, object], expected: str) -> None:
    gateway = start_gateway({"models": {"*": [dep(fake_upstream, "public")]}, "credential_guard": {}},
                            plugins=[clasp_credential_guard])
    answer = httpx.post(gateway.base_url + "/v1/chat/completions", headers=gateway.headers,
                        json={"model": "gpt-4o", **body})
    assert answer.status_code == 403, answer.text
    error = answer.json()["error"]
    assert f" in {expected};" in error["message"]
    assert GITHUB not in answer.text and SLACK not in answer.text and "Xq7#" not in answer.text
    assert fake_upstream.requests == []


class PageFetcher:
    """A server tool the gateway runs itself, whose result carries a token."""

    @hookimpl
    def register_tools(self, register: Any) -> None:
        register("fetch_page", "Fetch a web page", {"type": "object", "properties": {"url": {"type": "string"}}},
                 self.fetch)

    def fetch(self, arguments: dict[str, Any], ctx: Any) -> str:
        return f"<html>CI settings: GITHUB_TOKEN={GITHUB}</html>"


def test_a_server_tool_result_stays_off_untrusted_deployments(fake_upstream: FakeUpstream, second: FakeUpstream,
                                                             start_gateway: StartGateway) -> None:
    """Round 1 (clean) goes to the first candidate; the round after the gateway's own
    tool fetched a page with a token goes to the trusted deployment only."""
    gateway = start_gateway({"models": {"*": [dep(fake_upstream, "public"), dep(second, "in-house", trusted=True)]},
                             "credential_guard": {}, "server_tools": {"enabled": ["fetch_page"]}},
                            plugins=[clasp_credential_guard, PageFetcher()])
    fake_upstream.queue(ToolCalls([("fetch_page", {"url": "https://ci.example.com"})]))
    second.queue(Text("The page sets a token; rotate it."))
    answer = messages(gateway, {**ASK, "max_tokens": 1000,
                                "messages": [{"role": "user", "content": "what does the CI page say?"}]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["content"][0]["text"] == "The page sets a token; rotate it."
    assert len(fake_upstream.requests) == 1 and len(second.requests) == 1
    assert GITHUB not in fake_upstream.requests[0].raw.decode()
    assert GITHUB in second.requests[0].raw.decode()  # the trusted one got the result


@pytest.mark.parametrize("stream", [False, True])
def test_a_server_tool_result_with_no_trusted_deployment_is_refused(
        fake_upstream: FakeUpstream, start_gateway: StartGateway, stream: bool) -> None:
    gateway = start_gateway({"models": {"*": [dep(fake_upstream, "public")]}, "credential_guard": {},
                             "server_tools": {"enabled": ["fetch_page"]}}, plugins=[clasp_credential_guard, PageFetcher()])
    fake_upstream.queue(ToolCalls([("fetch_page", {"url": "https://ci.example.com"})]))
    answer = messages(gateway, {**ASK, "max_tokens": 1000, "stream": stream,
                                "messages": [{"role": "user", "content": "what does the CI page say?"}]})
    assert "a GitHub token in the result of the gateway's server tool 'fetch_page'" in answer.text
    assert "permission_error" in answer.text
    assert GITHUB not in answer.text
    assert len(fake_upstream.requests) == 1  # round 1 only: the result never left
    if not stream:
        assert answer.status_code == 403


def test_a_conversation_with_a_credential_is_not_summarised_by_a_third_party(
        fake_upstream: FakeUpstream, second: FakeUpstream, start_gateway: StartGateway) -> None:
    """A trusted deployment with a small window answers; the context trim's summariser
    is a third party: it is skipped (the trim goes on without a summary)."""
    small = {"max_input_tokens": 3000, "max_output_tokens": 512}
    gateway = start_gateway({"models": {
        "claude-*": {"deployments": [dep(fake_upstream, "in-house", trusted=True, **small)],
                     "context": {"summarize_with": "summarizer"}},
        "summarizer": [dep(second, "third-party")]}, "credential_guard": {}}, plugins=[clasp_credential_guard])
    history: list[dict[str, object]] = [{"role": "user", "content": f"deploy with {GITHUB}"}]
    for turn in range(10):
        history += [{"role": "assistant", "content": f"step {turn}: " + "checked the handlers and the logs. " * 40},
                    {"role": "user", "content": f"go on with step {turn + 1}"}]
    answer = messages(gateway, {**ASK, "max_tokens": 400, "messages": history})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-clasp-context"].startswith("trimmed;"), answer.headers["x-clasp-context"]
    assert second.requests == [] and len(fake_upstream.requests) == 1


def test_an_experiment_shadow_copy_of_a_credential_is_not_sent(
        fake_upstream: FakeUpstream, second: FakeUpstream, start_gateway: StartGateway) -> None:
    """clasp-router's shadow experiment copies requests to a candidate in the
    background: a trusted route answers a request carrying a key, and the third-party
    candidate gets no copy of it (a clean request's copy still goes)."""
    gateway = start_gateway({
        "models": {"m": [dep(fake_upstream, "in-house", trusted=True)], "cand": [dep(second, "third-party")]},
        "experiments": {"try": {"route": "m", "candidate": "third-party", "mode": "shadow", "shadow_rate": 1.0}},
        "credential_guard": {}}, plugins=[clasp_credential_guard])

    def ask(content: str) -> httpx.Response:
        return httpx.post(gateway.base_url + "/v1/chat/completions", headers=gateway.headers,
                          json={"model": "m", "messages": [{"role": "user", "content": content}]})

    assert ask(f"push with {GITHUB}").status_code == 200
    assert ask("hello").status_code == 200
    second.wait_for(1, timeout=5)
    time.sleep(0.3)  # a copy of the first request would have arrived by now
    assert len(second.requests) == 1 and GITHUB not in second.requests[0].raw.decode()
    assert len(fake_upstream.requests) == 2

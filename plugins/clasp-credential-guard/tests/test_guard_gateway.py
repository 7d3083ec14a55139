"""The guard in a real gateway, in front of fake providers (clasp_gateway.testing)."""

from __future__ import annotations

import clasp_credential_guard
import httpx
import pytest

from clasp_gateway import ConfigError
from clasp_gateway.testing import FakeUpstream, StartGateway

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
    assert "a private key (PEM) in messages[2] (user)" in error["error"]["message"]
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
    assert "a GitHub token in messages[1] (user)" in answer.json()["error"]["message"]
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

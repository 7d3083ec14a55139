"""The tagger in a real gateway, in front of a fake provider (fixtures: clasp_gateway.testing)."""

import clasp_example_tagger
import httpx
import pytest

from clasp_gateway import ConfigError
from clasp_gateway.testing import FakeUpstream, StartGateway, openai_models

BASH = {"type": "function", "function": {"name": "Bash", "parameters": {"type": "object"}}}


def test_coding_turns_are_tagged(fake_upstream: FakeUpstream, start_gateway: StartGateway) -> None:
    config = {"models": openai_models(fake_upstream.base_url), "tagger": {"tags": {"coding": "main-loop"}}}
    gateway = start_gateway(config, plugins=[clasp_example_tagger])
    ask = {"model": "gpt-4o", "messages": [{"role": "user", "content": "fix the build"}]}
    coding = httpx.post(gateway.base_url + "/v1/chat/completions", headers=gateway.headers, json={**ask, "tools": [BASH]})
    question = httpx.post(gateway.base_url + "/v1/chat/completions", headers=gateway.headers, json=ask)
    assert coding.status_code == question.status_code == 200
    assert coding.headers["x-clasp-tag"] == "main-loop" and "x-clasp-tag" not in question.headers
    assert fake_upstream.last.body["messages"] == ask["messages"]


def test_a_mistake_stops_the_gateway_before_it_serves(start_gateway: StartGateway) -> None:
    with pytest.raises(ConfigError, match="tagger.header: expected a lower-case header name"):
        start_gateway({"models": {}, "tagger": {"header": "X Team"}}, plugins=[clasp_example_tagger])

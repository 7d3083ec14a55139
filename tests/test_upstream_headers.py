"""Headers a plugin sets for a request's upstream calls (``set_upstream_headers``) reach
the provider on every wire, ``mode: litellm`` included, streamed or not; a client can
add none of its own, by header or by body, on any of them.

Real sockets: a gateway in a thread, OpenAI-compatible fakes recording what they
received, LiteLLM's own client on the ``litellm`` deployment.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from clasp_gateway import Deployment, RequestContext, hookimpl, set_upstream_headers
from clasp_gateway.testing import FakeUpstream, StartGateway

PLUGIN_HEADERS = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "x-plugin-mark": "1"}
CLIENT_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CLIENT_HEADERS = {"traceparent": CLIENT_TRACE, "x-evil": "1", "x-plugin-mark": "client", "openai-organization": "evil",
                  "extra-headers": "x-evil: 1", "anthropic-beta": "evil-2099-01-01"}
CLIENT_BODY = {"extra_headers": {"x-evil": "1"}, "headers": {"x-evil": "1"}, "api_base": "http://127.0.0.1:9/v1"}
UPSTREAM_KEY = "sk-upstream-Wq8ZrT4mLx0vKp3N"


class Tracer:
    """Sets the same headers before every attempt, as clasp-otel sets its traceparent."""

    @hookimpl
    def before_attempt(self, ctx: RequestContext, deployment: Deployment) -> None:
        set_upstream_headers(PLUGIN_HEADERS)


def deployment(up: FakeUpstream, mode: str, **extra: Any) -> dict[str, Any]:
    return {"model": "openai/gpt-4o", "id": mode, "api_base": up.base_url, "api_key": UPSTREAM_KEY, "mode": mode,
            **extra}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("mode", ["litellm", "direct"])
def test_plugin_headers_reach_the_provider_and_client_headers_do_not(
        fake_upstream: FakeUpstream, start_gateway: StartGateway, mode: str, stream: bool) -> None:
    gateway = start_gateway({"models": {"*": [deployment(fake_upstream, mode)]}}, plugins=[Tracer()])
    answer = httpx.post(gateway.base_url + "/v1/chat/completions", headers={**gateway.headers, **CLIENT_HEADERS},
                        json={"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": "hi"}],
                              **CLIENT_BODY})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-clasp-deployment"] == mode
    assert len(fake_upstream.requests) == 1
    sent = fake_upstream.last.headers
    assert sent["traceparent"] == PLUGIN_HEADERS["traceparent"]
    assert sent["x-plugin-mark"] == "1"
    assert sent["authorization"] == f"Bearer {UPSTREAM_KEY}"
    for name in ("x-evil", "openai-organization", "extra-headers", "anthropic-beta"):
        assert name not in sent, name
    assert CLIENT_TRACE not in str(sent)
    body = fake_upstream.last.json
    assert not {"extra_headers", "headers", "api_base"} & set(body)


def test_a_deployment_header_wins_over_a_plugin_header(fake_upstream: FakeUpstream,
                                                      start_gateway: StartGateway) -> None:
    gateway = start_gateway({"models": {"*": [deployment(fake_upstream, "litellm", headers={"x-plugin-mark": "ops"})]}},
                            plugins=[Tracer()])
    answer = httpx.post(gateway.base_url + "/v1/chat/completions", headers=gateway.headers,
                        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200, answer.text
    assert fake_upstream.last.headers["x-plugin-mark"] == "ops"
    assert fake_upstream.last.headers["traceparent"] == PLUGIN_HEADERS["traceparent"]


def test_without_a_plugin_nothing_is_added(fake_upstream: FakeUpstream, start_gateway: StartGateway) -> None:
    gateway = start_gateway({"models": {"*": [deployment(fake_upstream, "litellm")]}})
    answer = httpx.post(gateway.base_url + "/v1/chat/completions", headers={**gateway.headers, **CLIENT_HEADERS},
                        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200, answer.text
    assert "traceparent" not in fake_upstream.last.headers and "x-evil" not in fake_upstream.last.headers

"""``cheapest-capable`` through a running gateway over fake upstreams, with
clasp-fallback, clasp-claude and clasp-analytics (for ``POST /v1/feedback``) loaded:
it starts cheap, and what the gateway sees makes it escalate: an upstream error (a
fallback), invalid tool-call JSON, a retried turn, a negative feedback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from clasp_gateway.testing import GATEWAY_KEY, Error, FakeUpstream, GatewayServer, Text, ToolCalls, config_from

UPSTREAM_KEY = "sk-upstream-learning-test-1234567890"
TOOLS = [{"type": "function", "function": {"name": "edit", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def ups() -> Iterator[dict[str, FakeUpstream]]:
    with FakeUpstream("openai") as cheap, FakeUpstream("openai") as mid, FakeUpstream("openai") as dear:
        found = {"cheap": cheap, "mid": mid, "dear": dear}
        for name, up in found.items():
            up.script = (lambda n: lambda body, rec: Text(f"from {n}"))(name)
        yield found


@pytest.fixture(scope="module")
def gw(ups: dict[str, FakeUpstream], sqlite_url: str) -> Iterator[GatewayServer]:
    def d(name: str, price: float) -> dict[str, Any]:
        return {"id": name, "model": "openai/gpt-4o", "api_base": ups[name].base_url, "api_key": UPSTREAM_KEY,
                "input_cost_per_token": price, "output_cost_per_token": 4 * price,
                "timeouts": {"connect": 1, "first_byte": 2, "idle": 2, "total": 5}}

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLASP_LOAD_PLUGINS", "router,fallback,claude,analytics")
        config = config_from({
            "keys": [{"key": GATEWAY_KEY, "name": "tests", "team": "qa"}],
            "storage": {"url": sqlite_url},
            "router": {"learn": {"explore": 0, "success_target": 0.7}},
            "models": {
                "claude-*": {"pool": ["cheap", "mid", "dear"], "router": "cheapest-capable"},
                "backing": [d("cheap", 1e-7), d("mid", 1e-6), d("dear", 1e-5)],
            },
        })
        with GatewayServer(config) as server:
            yield server


def chat(gw: GatewayServer, content: Any, **body: Any) -> httpx.Response:
    payload = {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": content}], **body}
    response = httpx.post(gw.base_url + "/v1/chat/completions", json=payload, timeout=10,
                          headers={"x-api-key": GATEWAY_KEY})
    assert response.status_code == 200, response.text
    return response


def served_by(response: httpx.Response) -> str:
    return response.headers["x-clasp-route"].split(";")[0]


def test_it_starts_cheap_and_a_retried_turn_goes_a_tier_up(gw: GatewayServer) -> None:
    first = chat(gw, "what is the capital of France?")
    assert first.json()["choices"][0]["message"]["content"] == "from cheap"
    assert first.headers["x-clasp-route"].startswith("cheap; strategy=cheapest-capable; rank=1/3; question/0")
    again = chat(gw, "what is the capital of France?")  # the client did not take the answer
    assert served_by(again) == "mid" and "retry above tier 0" in again.headers["x-clasp-route"]
    assert served_by(chat(gw, "what is the capital of France?")) == "dear"


def test_an_upstream_error_falls_back_and_teaches(gw: GatewayServer, ups: dict[str, FakeUpstream]) -> None:
    ups["cheap"].script = lambda body, rec: Error(500)
    try:
        failed = chat(gw, "a title for this chat", max_tokens=20)  # a background call
        assert served_by(failed) == "mid"  # clasp-fallback went to the next in the learned order
    finally:
        ups["cheap"].script = lambda body, rec: Text("from cheap")
    assert served_by(chat(gw, "another title", max_tokens=20)) == "mid"  # cheap failed this class


def test_invalid_tool_json_teaches(gw: GatewayServer, ups: dict[str, FakeUpstream]) -> None:
    ups["cheap"].script = lambda body, rec: ToolCalls([("edit", '{"path": "a.py", ')])
    try:
        bad = chat(gw, "fix the bug in a.py", tools=TOOLS)
        assert served_by(bad) == "cheap"
    finally:
        ups["cheap"].script = lambda body, rec: Text("from cheap")
    assert served_by(chat(gw, "fix the bug in b.py", tools=TOOLS)) == "mid"


def test_a_negative_feedback_teaches(gw: GatewayServer) -> None:
    answer = chat(gw, image("what is in this picture?"))  # another class: nothing learned there yet
    assert served_by(answer) == "cheap"
    request_id = answer.headers["request-id"]
    deadline = time.monotonic() + 10
    while True:  # the analytics row is written in the background
        stored = httpx.post(gw.base_url + "/v1/feedback", json={"request_id": request_id, "score": -1},
                            headers={"x-api-key": GATEWAY_KEY}, timeout=10)
        if stored.status_code != 404 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert stored.status_code == 201, stored.text
    assert served_by(chat(gw, image("and in this one?"))) == "mid"


def image(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]

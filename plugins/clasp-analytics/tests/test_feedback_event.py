"""A stored feedback reaches every ``record`` implementation as a ``kind: "feedback"``
event (how clasp-router's learned routing hears of it), without the comment."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from clasp_gateway import RequestContext, hookimpl
from clasp_gateway.testing import GATEWAY_KEY, FakeUpstream, GatewayServer, Text, config_from, openai_models


class FeedbackEvents:
    """A plugin that keeps the feedback events it is sent."""

    def __init__(self) -> None:
        self.events: list[tuple[RequestContext, dict[str, Any]]] = []

    @hookimpl
    def record(self, ctx: RequestContext, event: dict[str, Any]) -> None:
        if event.get("kind") == "feedback":
            self.events.append((ctx, event))


@pytest.fixture(scope="module")
def setup(sqlite_url: str) -> Iterator[tuple[GatewayServer, FeedbackEvents]]:
    seen = FeedbackEvents()
    with FakeUpstream("openai") as upstream, pytest.MonkeyPatch.context() as mp:
        upstream.script = lambda body, rec: Text("an answer")
        mp.setenv("CLASP_LOAD_PLUGINS", "analytics,fallback,claude")
        config = config_from({"models": openai_models(upstream.base_url), "storage": {"url": sqlite_url}})
        with GatewayServer(config, plugins=[seen]) as server:
            yield server, seen


def test_a_stored_feedback_is_sent_to_record(setup: tuple[GatewayServer, FeedbackEvents]) -> None:
    gw, seen = setup
    headers = {"x-api-key": GATEWAY_KEY}
    answer = httpx.post(gw.base_url + "/v1/chat/completions", headers=headers, timeout=10,
                        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]})
    request_id = answer.headers["request-id"]
    body = {"request_id": request_id, "score": -1, "comment": "private words", "metrics": {"tests_passed": False}}
    deadline = time.monotonic() + 10
    while True:  # the quality row is written in the background
        stored = httpx.post(gw.base_url + "/v1/feedback", headers=headers, json=body, timeout=10)
        if stored.status_code != 404 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert stored.status_code == 201, stored.text
    assert len(seen.events) == 1
    ctx, event = seen.events[0]
    assert ctx.request_id == request_id and ctx.public_model == "gpt-4o"
    assert event["score"] == -1 and event["metrics"] == {"tests_passed": False}
    assert event["deployment"] and event["public_model"] == "gpt-4o" and event["by_admin"] is False
    assert "comment" not in event and "private words" not in repr(event)
    assert httpx.post(gw.base_url + "/v1/feedback", headers=headers, json={"request_id": "nope", "score": 1},
                      timeout=10).status_code == 404
    assert len(seen.events) == 1  # nothing stored, nothing sent

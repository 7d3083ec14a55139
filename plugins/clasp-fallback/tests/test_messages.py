"""The same guarantees on ``/v1/messages`` (clasp-claude), seen by the official anthropic SDK."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest

from clasp_gateway.testing import GATEWAY_KEY, Cut, Error, FakeUpstream, Hang, Text

MESSAGES: Any = [{"role": "user", "content": "Write a haiku about retries."}]


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "fallback,claude")


@pytest.fixture
def client_for() -> Iterator[Callable[[Any], anthropic.Anthropic]]:
    clients: list[anthropic.Anthropic] = []

    def make(gw: Any) -> anthropic.Anthropic:
        client = anthropic.Anthropic(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=10)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.mark.parametrize("fault", [lambda: Error(503), lambda: Hang(), lambda: Cut(Text("x"), before_headers=True)],
                         ids=["503", "hang", "cut-before-first-byte"])
def test_messages_fall_back_streaming_and_not(
    claude: None, serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream],
    client_for: Callable[[Any], anthropic.Anthropic], fault: Callable[[], Any],
) -> None:
    primary, secondary = up
    primary.script = lambda body, rec: fault()
    gw = serve(kit.pair(primary, secondary), fallback={"retry": {"base_delay": 0.01}})
    client = client_for(gw)
    message = client.messages.create(model="chain", max_tokens=1024, messages=MESSAGES)
    assert message.content[0].text == "from secondary"  # type: ignore[union-attr]
    with client.messages.stream(model="chain", max_tokens=1024, messages=MESSAGES) as stream:
        assert "".join(stream.text_stream) == "from secondary"
        assert stream.get_final_message().stop_reason == "end_turn"


def test_a_cut_mid_stream_ends_with_an_error_event(
    claude: None, serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream],
    client_for: Callable[[Any], anthropic.Anthropic],
) -> None:
    primary, secondary = up
    primary.queue(Cut(Text("a long answer, cut somewhere in the middle of it"), after_chunks=3))
    gw = serve(kit.pair(primary, secondary))
    client = client_for(gw)
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError, match="stream cut by the provider"):
        with client.messages.stream(model="chain", max_tokens=1024, messages=MESSAGES) as stream:
            for text in stream.text_stream:
                seen.append(text)
    assert seen and kit.chat_requests(secondary) == 0
    raw = gw.http.post("/v1/messages", json={"model": "chain", "max_tokens": 64, "messages": MESSAGES, "stream": True})
    assert "event: message_stop" in raw.text  # after a cut, the next request is whole again


def test_all_down_is_an_overloaded_error_or_the_default_response(
    claude: None, serve: Callable[..., Any], kit: Any, up: tuple[FakeUpstream, FakeUpstream],
    client_for: Callable[[Any], anthropic.Anthropic],
) -> None:
    primary, secondary = up
    primary.script = secondary.script = lambda body, rec: Error(500)
    gw = serve(kit.pair(primary, secondary), fallback={"retry": {"attempts": 0}})
    with pytest.raises(anthropic.APIStatusError) as info:
        client_for(gw).messages.create(model="chain", max_tokens=64, messages=MESSAGES)
    assert info.value.status_code == 529
    assert info.value.response.headers["x-clasp-degraded"] == "unavailable"
    body: Any = info.value.body
    assert body["error"]["type"] == "overloaded_error" and "primary: provider answered 500" in body["error"]["message"]

    degraded = serve(kit.pair(primary, secondary), fallback={"retry": {"attempts": 0},
                                                             "default_response": "We are having trouble; try again shortly."})
    client = client_for(degraded)
    with client.messages.stream(model="chain", max_tokens=64, messages=MESSAGES) as stream:
        assert "".join(stream.text_stream) == "We are having trouble; try again shortly."
    raw = client.messages.with_raw_response.create(model="chain", max_tokens=64, messages=MESSAGES)
    assert raw.headers["x-clasp-degraded"] == "default-response"
    assert raw.parse().content[0].text == "We are having trouble; try again shortly."  # type: ignore[union-attr]

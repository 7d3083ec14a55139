"""Streams whose ``on_stream_chunk`` implementations all skip plain text deltas
(``@skips_text_deltas``): on the Anthropic route the translator's own verdict
(``StreamEncoder.report_text_deltas()``) decides which chunks the hook is called for,
and that must be exactly the chunks :func:`clasp_gateway.is_text_delta` would let
through: every tool call, finish reason and usage chunk, no text delta."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import clasp_claude
import httpx
import orjson
import pytest

from clasp_gateway import hookimpl, is_text_delta, skips_text_deltas
from clasp_gateway.plugins import PluginManager
from clasp_gateway.shell import streaming
from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import (
    GATEWAY_KEY,
    FakeUpstream,
    GatewayServer,
    Reasoning,
    Text,
    ToolCalls,
    config_from,
    openai_models,
)


class Everything:
    def __init__(self) -> None:
        self.chunks: list[dict[str, Any]] = []

    @hookimpl
    def on_stream_chunk(self, chunk: Any) -> None:
        self.chunks.append(chunk)


class NoText(Everything):
    @hookimpl
    @skips_text_deltas
    def on_stream_chunk(self, chunk: Any) -> None:
        self.chunks.append(chunk)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as up:
        yield up


def _stream(up: FakeUpstream, recorder: Everything, reply: Any) -> list[dict[str, Any]]:
    pm = PluginManager()
    pm.load(entry_points=False)
    pm.register(clasp_claude, name="claude")
    pm.register(recorder, name="recorder")
    config = config_from({"models": openai_models(up.base_url)})
    up.queue(reply)
    with GatewayServer(config, create_app(config, pm)) as server:
        body = {"model": "claude-sonnet-4-5", "max_tokens": 200, "stream": True,
                "messages": [{"role": "user", "content": "read /tmp/x and tell me"}],
                "tools": [{"name": "Read", "input_schema": {"type": "object"}}]}
        answer = httpx.post(server.base_url + "/v1/messages", json=body, timeout=30,
                            headers={"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"})
    assert answer.status_code == 200 and "message_stop" in answer.text
    return recorder.chunks


def _shape(chunk: dict[str, Any]) -> bytes:
    """What a chunk says (not its per-answer ids, timestamp and fingerprint)."""
    said = orjson.dumps([chunk.get("choices"), chunk.get("usage")], option=orjson.OPT_SORT_KEYS)
    return re.sub(rb'"id":"call_[^"]*"', b'"id":"call"', said)


@pytest.mark.parametrize("reply", [
    ToolCalls([("Read", {"file_path": "/tmp/x"}), ("Read", {"file_path": "/tmp/y"})],
              text="Let me read both files first.", usage=(30, 12)),
    Text("A plain answer, in many small pieces.", chunk_size=3, usage=(20, 9)),
    Reasoning("thinking it over", "then the answer", usage=(20, 9)),
], ids=["tool-calls", "text", "reasoning"])
def test_the_hook_sees_exactly_the_chunks_that_are_not_text_deltas(
    upstream: FakeUpstream, reply: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = _stream(upstream, Everything(), reply)
    skipped = [c for c in every if is_text_delta(c)]
    assert skipped, "the answer has text deltas"
    tested: list[Any] = []
    monkeypatch.setattr(streaming, "is_text_delta", lambda chunk: tested.append(chunk) or is_text_delta(chunk))
    seen = _stream(upstream, NoText(), reply)
    assert tested == []  # the translator's verdict, not a second test per chunk
    assert [_shape(c) for c in seen] == [_shape(c) for c in every if not is_text_delta(c)]
    assert any(c["choices"] and c["choices"][0].get("finish_reason") for c in seen)

"""Issue 7, defect 7: a stream commits to its deployment at the first chunk that
carries something (text, reasoning, a tool call, a finish, usage), not at a role-only
preamble; a failure before that fails over like any failure before the first byte."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from clasp_gateway.pipeline import commits
from clasp_gateway.testing import Cut, FakeUpstream, Hang, Malformed, Reasoning, Text, ToolCalls
from tests.hardening import (
    APIS,
    BrokenStreamUpstream,
    Witness,
    answer_text,
    call,
    chain,
    chat_requests,
    ended_cleanly,
    serving,
    sse_data,
)


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return {"id": "c", "object": "chat.completion.chunk", "choices": [choice], **extra}


def test_what_commits_a_stream() -> None:
    assert not commits(_chunk({"role": "assistant"}))
    assert not commits(_chunk({"role": "assistant", "content": "", "refusal": None}))
    assert not commits(_chunk({"role": "assistant", "content": None, "reasoning_content": ""}))
    assert not commits(_chunk({"tool_calls": []}))
    assert not commits({"id": "c", "choices": [], "prompt_filter_results": [{"prompt_index": 0}]})  # Azure
    assert not commits(_chunk({}, usage=None))
    assert commits(_chunk({"content": "H"}))
    assert commits(_chunk({"content": None, "reasoning_content": "thinking"}))
    assert commits(_chunk({"reasoning": "thinking"}))
    assert commits(_chunk({"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f", "arguments": ""}}]}))
    assert commits(_chunk({}, "stop"))  # an empty answer is still an answer
    assert commits({"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 0}})
    assert commits({"anthropic_event": ("message_start", b"{}")})  # an adapter's own events commit at once


FAULTS = ["error", "garbage", "cut"]


@pytest.fixture
def secondary() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as up:
        up.script = lambda body, rec: Text("from secondary")
        yield up


@pytest.mark.parametrize("api", APIS)
def test_a_role_chunk_then_a_failure_fails_over(api: str, secondary: FakeUpstream) -> None:
    """30 streams whose primary sends a valid role chunk, then an in-stream error,
    garbage or a reset: every one is answered by the secondary, completely."""
    witness = Witness()
    with BrokenStreamUpstream("error") as primary:
        with serving(chain(primary.base_url, secondary.base_url), witness) as server:
            faults = itertools.cycle(FAULTS)
            for _ in range(30):
                primary.fault = next(faults)
                response = call(server, api, stream=True)
                assert answer_text(api, True, response) == "from secondary", (primary.fault, response.text)
                assert ended_cleanly(api, response)
                assert response.headers["x-clasp-deployment"] == "secondary"
            assert primary.calls == 30 and chat_requests(secondary) == 30
    requests = witness.kind("request")
    assert len(requests) == 30 and all(r["status"] == 200 and not r["cut"] for r in requests)
    assert all([a["deployment"] for a in r["attempts"]] == ["primary", "secondary"] for r in requests)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("fault", ["malformed", "cut"])
def test_the_standard_fakes_fail_over_after_a_role_chunk(api: str, fault: str, secondary: FakeUpstream) -> None:
    with FakeUpstream("openai") as primary:
        primary.script = lambda body, rec: Malformed() if fault == "malformed" else Cut(Text("never said"), after_chunks=1)
        with serving(chain(primary.base_url, secondary.base_url)) as server:
            for stream in (True, False):
                response = call(server, api, stream=stream)
                assert answer_text(api, stream, response) == "from secondary"


def test_a_healthy_stream_comes_through_unchanged(secondary: FakeUpstream) -> None:
    """The held role chunk is replayed first, then the content, in the upstream's order."""
    with FakeUpstream("openai") as primary:
        primary.script = lambda body, rec: Text("hello, world", chunk_size=4)
        with serving(chain(primary.base_url, secondary.base_url)) as server:
            response = call(server, "openai", stream=True)
            chunks = [c for c in sse_data(response) if isinstance(c, dict)]
            deltas = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
            assert deltas[0] == {"role": "assistant", "content": "", "refusal": None}
            assert [d.get("content") for d in deltas[1:4]] == ["hell", "o, w", "orld"]
            assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and ended_cleanly("openai", response)
            for api in APIS:
                for stream in (False, True):
                    assert answer_text(api, stream, call(server, api, stream=stream)) == "hello, world"
            # Reasoning first, or a tool call first: both commit, nothing is lost.
            primary.script = lambda body, rec: Reasoning("let me think", "the answer")
            response = call(server, "openai", stream=True)
            deltas = [c["choices"][0]["delta"] for c in sse_data(response) if isinstance(c, dict) and c.get("choices")]
            assert "".join(d.get("reasoning_content") or "" for d in deltas) == "let me think"
            assert answer_text("openai", True, response) == "the answer"
            primary.script = lambda body, rec: ToolCalls([("get_weather", {"city": "Paris"})])
            response = call(server, "anthropic", stream=True)
            assert '"name":"get_weather"' in response.text and ended_cleanly("anthropic", response)
            assert chat_requests(secondary) == 0


@pytest.mark.parametrize("api", APIS)
def test_the_first_byte_limit_covers_reaching_the_commit_point(api: str, secondary: FakeUpstream) -> None:
    """A role chunk, then silence past ``first_byte``: the next candidate answers."""
    with FakeUpstream("openai") as primary:
        primary.script = lambda body, rec: Hang(30, Text("too late"), after_chunks=1)
        models = chain(primary.base_url, secondary.base_url, timeouts={"first_byte": 0.3})
        with serving(models) as server:
            assert answer_text(api, True, call(server, api, stream=True)) == "from secondary"


@pytest.mark.parametrize("api", APIS)
def test_a_model_thinking_after_its_role_chunk_keeps_the_client_posted(
    api: str, secondary: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow model: a role chunk, then silence long enough for keep-alives, then the
    answer. The upstream is alive and working: the stream commits at the keep-alive,
    the client gets pings while it waits, and the answer is whole."""
    monkeypatch.setattr("clasp_gateway.wire.reads.PING_INTERVAL", 0.05)
    with FakeUpstream("openai") as primary:
        primary.script = lambda body, rec: Hang(0.4, Text("slow but sure"), after_chunks=1)
        with serving(chain(primary.base_url, secondary.base_url, timeouts={"first_byte": 5})) as server:
            response = call(server, api, stream=True)
            assert answer_text(api, True, response) == "slow but sure" and ended_cleanly(api, response)
            if api == "anthropic":
                assert response.text.count("event: ping") >= 3  # one after message_start, more while it thinks
            else:
                assert response.text.count(": keep-alive") >= 2
            assert chat_requests(secondary) == 0


@pytest.mark.parametrize("api", APIS)
def test_keep_alives_alone_never_commit(api: str, secondary: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """Headers, then silence (keep-alives, no chunk at all) past ``first_byte``: nothing
    was said, so the next candidate answers."""
    monkeypatch.setattr("clasp_gateway.wire.reads.PING_INTERVAL", 0.05)
    with FakeUpstream("openai") as primary:
        primary.script = lambda body, rec: Hang(30, Text("too late"), after_chunks=0)
        with serving(chain(primary.base_url, secondary.base_url, timeouts={"first_byte": 0.4})) as server:
            assert answer_text(api, True, call(server, api, stream=True)) == "from secondary"

"""The exact key and scope (what is in, what is left out) and the stored answer's shape."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from clasp_cache.answer import Answer, assemble, replay_chunks
from clasp_cache.keys import RAW_REQUEST_KEY, config_namespace, request_key

from clasp_gateway import Principal, RequestContext, RequestHints

CONVERSATION: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": [{"type": "text", "text": "You code.", "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "read main.py"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "Read", "arguments": "{\"path\": \"main.py\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "print('hi')"},
        {"role": "assistant", "content": "It prints hi."},
        {"role": "user", "content": "and what does it import?"},
    ],
    "tools": [{"type": "function", "function": {"name": "Read", "parameters": {"type": "object"}}}],
    "temperature": 0,
}


def ctx(team: str = "alpha", key: str = "k1", api: str = "openai", hints: RequestHints | None = None) -> RequestContext:
    return RequestContext("req_1", api, "gpt-4o", False, principal=Principal(key, team=team), hints=hints or RequestHints())


def key_of(body: dict[str, Any], context: RequestContext | None = None, *, scope_by: str = "team",
           route: str = "*", namespace: str = "ns") -> Any:
    return request_key(context or ctx(), body, route=route, namespace=namespace, scope_by=scope_by)


def test_what_does_not_change_the_answer_is_left_out() -> None:
    base = key_of(CONVERSATION)
    variant = copy.deepcopy(CONVERSATION)
    variant["messages"][0]["content"][0].pop("cache_control")
    variant.update(stream=True, stream_options={"include_usage": True}, user="u9", metadata={"user_id": "x"})
    variant = dict(reversed(list(variant.items())))  # key order
    assert key_of(variant) == base
    assert key_of(CONVERSATION, ctx(key="k2")) == base  # another key of the team (scope: team)


@pytest.mark.parametrize("change", ["temperature", "tools", "system", "history", "tool_result", "last_turn",
                                    "max_tokens", "route", "namespace", "team", "key_scope", "hints", "api"])
def test_what_changes_the_answer_changes_the_key(change: str) -> None:
    body = copy.deepcopy(CONVERSATION)
    context, route, namespace, scope_by = ctx(), "*", "ns", "team"
    if change == "temperature":
        body["temperature"] = 0.2
    elif change == "tools":
        body["tools"][0]["function"]["name"] = "Write"
    elif change == "system":
        body["messages"][0]["content"][0]["text"] = "You review."
    elif change == "history":
        body["messages"][1]["content"] = "read app.py"
    elif change == "tool_result":
        body["messages"][3]["content"] = "print('bye')"
    elif change == "last_turn":
        body["messages"][-1]["content"] = "and what does it export?"
    elif change == "max_tokens":
        body["max_tokens"] = 5
    elif change == "route":
        route = "claude-*"
    elif change == "namespace":
        namespace = "other"
    elif change == "team":
        context = ctx(team="beta")
    elif change == "key_scope":
        scope_by = "key"
    elif change == "hints":
        context = ctx(hints=RequestHints(reasoning_effort="high"))
    elif change == "api":
        context = ctx(api="anthropic")
    changed = request_key(context, body, route=route, namespace=namespace, scope_by=scope_by)
    base = key_of(CONVERSATION)
    assert changed.id != base.id
    same_scope = change == "last_turn"  # the scope is everything but the last user turn
    assert (changed.scope == base.scope) is same_scope


def test_anthropic_requests_are_keyed_on_the_clients_body() -> None:
    class Raw:
        def __init__(self, body: dict[str, Any]) -> None:
            self.body = body

    body = {"model": "claude-sonnet-4-5", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}
    one, two = ctx(api="anthropic"), ctx(api="anthropic")
    one.state[RAW_REQUEST_KEY] = Raw(body)
    two.state[RAW_REQUEST_KEY] = Raw({**body, "stop_sequences": ["\n\n"]})  # not in the canonical body
    canonical = {"model": "claude-sonnet-4-5", "messages": body["messages"]}
    assert key_of(canonical, one).id != key_of(canonical, two).id


def test_the_namespace_follows_the_configuration() -> None:
    raw = {"models": {"*": [{"model": "openai/gpt-4o"}]}, "cache": {"ttl": 60}, "keys": [{"key": "a"}]}
    same = {**raw, "keys": [{"key": "b"}]}  # keys do not shape answers
    assert config_namespace(raw) == config_namespace(same)
    assert config_namespace(raw) != config_namespace({**raw, "models": {"*": [{"model": "openai/gpt-4.1"}]}})


def test_an_answer_round_trips_and_replays_as_chunks() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "think"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "Read", "arguments": "{\"a\""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 9}},
    ]
    answer = Answer.decode(assemble(chunks).encode())
    assert (answer.content, answer.reasoning, answer.finish_reason) == ("Hello", "think", "tool_calls")
    assert answer.tool_calls == [{"id": "c1", "type": "function", "function": {"name": "Read", "arguments": "{\"a\": 1}"},
                                  "parts": ["{\"a\"", ": 1}"]}]
    replay = replay_chunks(answer, ident="chatcmpl-x", model="gpt-4o", created=1)
    assert assemble(replay).content == "Hello" and assemble(replay).tool_calls == answer.tool_calls
    assert [c["choices"][0]["delta"].get("content") for c in replay[:4]] == ["", None, "Hel", "lo"]  # the pieces
    assert replay[-1]["usage"]["completion_tokens"] == 0 and replay[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert assemble(chunks[:3]).finish_reason is None  # a cut answer never says how it ended

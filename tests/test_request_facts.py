"""The per-request facts plugins share (``clasp_gateway.request_facts``), the per-stream
notifier of ``on_stream_chunk`` (``plugins.notifier``) and the OpenAI route's partial
usage for a cut stream."""

from __future__ import annotations

from typing import Any

import orjson
import pluggy

from clasp_gateway import (
    RequestContext,
    estimate_tokens,
    hookimpl,
    input_estimate,
    request_fingerprint,
    skips_text_deltas,
)
from clasp_gateway.plugins import PluginManager, is_text_delta, notifier
from clasp_gateway.request_facts import fingerprint_of
from clasp_gateway.shell.openai_api import OpenAIEncoder


def ctx() -> RequestContext:
    return RequestContext(request_id="r1", api="anthropic", public_model="m", client_stream=True)


def request(text: str = "hello there") -> dict[str, Any]:
    return {"model": "gpt-4o", "stream": True, "max_tokens": 100, "metadata": {"user_id": "u1"},
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
            "tools": [{"type": "function", "function": {"name": "Read", "parameters": {"type": "object"}}}]}


def test_the_input_estimate_is_the_core_estimate_computed_once_per_request_object() -> None:
    c, body = ctx(), request("x" * 3000)
    assert input_estimate(c, body) == estimate_tokens(body)
    body["messages"].append({"role": "user", "content": "y" * 3000})  # the same object: the cached value
    assert input_estimate(c, body) < estimate_tokens(body)
    other = request("z" * 30)  # another body (a later round): its own estimate
    assert input_estimate(c, other) == estimate_tokens(other)


def test_the_fingerprint_ignores_volatile_fields_and_tells_prompts_apart() -> None:
    a, b = request(), request()
    b["stream"], b["metadata"], b["user"] = False, {"user_id": "someone else"}, "x"
    fa, fb = fingerprint_of(a), fingerprint_of(b)
    assert fa is not None and fb is not None
    assert fa == fb and len(fa.prompt) == 64 and len(fa.messages) == 16
    c = request()
    c["max_tokens"] = 200  # another prompt (it may answer differently), the same conversation
    fc = fingerprint_of(c)
    assert fc is not None and fc.prompt != fa.prompt and fc.messages == fa.messages
    d = request("another question")
    fd = fingerprint_of(d)
    assert fd is not None and fd.prompt != fa.prompt and fd.messages != fa.messages
    # Key order does not matter (sorted keys); the sender does, for conversations.
    reordered = {k: a[k] for k in reversed(list(a))}
    assert fingerprint_of(reordered) == fa
    assert fa.conversation("key1\x00u") != fa.conversation("key2\x00u")
    assert fa.conversation("key1\x00u") == fb.conversation("key1\x00u")


def test_the_fingerprint_is_computed_once_and_none_for_what_cannot_be_serialised() -> None:
    c, body = ctx(), request()
    first = request_fingerprint(c, body)
    body["messages"].append({"role": "user", "content": "more"})
    assert request_fingerprint(c, body) is first  # cached for this request object
    assert fingerprint_of({"messages": [{"content": float("nan")}], "model": object()}) is not None  # default=str
    assert fingerprint_of({"messages": [{1.5: "non-string key"}]}) is not None
    assert fingerprint_of({"messages": [{"content": 2**70}]}) is None  # an int orjson refuses


def _reference_fingerprint(body: dict[str, Any]) -> tuple[str, bytes]:
    """The fingerprint as first defined (every part serialised with all its options):
    the shared tools' serialisation must hash exactly the same bytes."""
    import hashlib

    import orjson

    option = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
    messages = orjson.dumps(body.get("messages") or [], option=option, default=str)
    rest = orjson.dumps({k: v for k, v in body.items() if k not in ("stream", "stream_options", "metadata", "user")
                         and k != "messages"}, option=option, default=str)
    digest = hashlib.blake2b(messages, digest_size=16).digest()
    return hashlib.sha256(rest + b"\x00" + digest).hexdigest(), digest


def test_the_shared_tools_serialisation_changes_neither_fingerprint_nor_estimate() -> None:
    body = request()
    body.update({"temperature": 0.5, "tool_choice": {"type": "auto"}, "top_p": 1, "thinking": {"budget": 9}})
    body["tools"].append({"type": "function", "function": {"name": "Édit", "parameters": {"z": 1, "a": [2, {"y": 3}]}}})
    odd = request()
    odd["messages"].append({"role": "user", "content": [{1: "non-string key"}]})
    no_tools = request()
    del no_tools["tools"]
    for case in (body, odd, no_tools, {**request(), "tools": [{"k": object()}]}, {**request(), "tools": []}):
        c = ctx()
        found = request_fingerprint(c, case)
        assert found is not None
        assert (found.prompt, found.messages) == _reference_fingerprint(case)
        assert fingerprint_of(case) == found
        assert input_estimate(ctx(), case) == estimate_tokens(case)  # with or without the fingerprint first
        assert input_estimate(c, case) == estimate_tokens(case)


def test_tool_lists_remembered_across_requests_are_reused_only_for_the_same_bytes() -> None:
    """A client sends the same tools every turn: their sorted bytes and the hash state
    after them are reused from an earlier request, but only for a list serialising to
    the same bytes (``1 == 1.0 == True`` in Python, not in JSON), and the digests are
    those of the whole request serialised at once."""
    def turn(value: Any, **fields: Any) -> dict[str, Any]:
        body = request()
        body["tools"][0]["function"]["parameters"] = {"type": "object", "minimum": value, "b": [1, {"z": 0, "a": 2}]}
        body.update(fields)
        return body

    seen: dict[str, tuple[str, bytes]] = {}
    for fields in ({}, {"max_tokens": 7}, {"model": "other"}, {"temperature": 0.2, "top_p": 0.5}, {"max_tokens": 7}):
        for value in (1, 1.0, True, 1, 2, True):  # each seen again after the others
            body = turn(value, **fields)
            c = ctx()
            found = request_fingerprint(c, body)
            assert found is not None and (found.prompt, found.messages) == _reference_fingerprint(body)
            assert input_estimate(c, body) == estimate_tokens(body)
            seen.setdefault(found.prompt, (repr(value), orjson.dumps(fields)))
            assert seen[found.prompt] == (repr(value), orjson.dumps(fields))  # no two prompts share a digest
    assert len(seen) == 4 * 4  # four values (1, 1.0, True, 2) by four different sets of fields


def test_a_growing_conversation_hashes_as_a_whole_whatever_earlier_turns_left() -> None:
    """Each turn resumes the messages' hash from a state an earlier turn left (the
    conversation grows by appending); the digests are those of hashing every turn
    whole, also when a client rewrites its last messages (a moved cache breakpoint),
    several conversations interleave, or one turn differs by ``1`` against ``1.0``."""
    conversations: list[list[dict[str, Any]]] = [[{"role": "system", "content": f"be brief {n}"}] for n in range(3)]
    for turn in range(12):
        for n, messages in enumerate(conversations):
            messages.append({"role": "user", "content": [{"type": "text", "text": f"q{turn}", "cache_control": {"t": 1}}]})
            if len(messages) > 3:
                messages[-3]["content"][0].pop("cache_control", None)  # the breakpoint moves on
            for variant in (messages, [*messages[:-1], {**messages[-1], "n": 1}], [*messages[:-1], {**messages[-1], "n": 1.0}]):
                body = {**request(), "messages": variant}
                found = request_fingerprint(ctx(), body)
                assert found is not None and (found.prompt, found.messages) == _reference_fingerprint(body), (turn, n)
            messages.append({"role": "assistant", "content": f"a{turn}" * (n + 1)})


def test_remembered_turns_are_forgotten_after_a_few_minutes(monkeypatch: Any) -> None:
    """Conversation bytes kept to hash the next turn faster never outlive
    ``CONVERSATION_SECONDS``: the next request after that finds none of them."""
    from clasp_gateway import request_facts

    now = [request_facts._clock()]
    monkeypatch.setattr(request_facts, "_clock", lambda: now[0])
    messages = [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"},
                {"role": "user", "content": "a secret only this turn has"}]
    request_fingerprint(ctx(), {**request(), "messages": messages})
    assert any(turn.data.find(b"a secret") >= 0 for turn, _ in request_facts._turn_order)
    now[0] += request_facts.CONVERSATION_SECONDS + 1
    body = {**request(), "messages": [{"role": "user", "content": "another"}]}
    found = request_fingerprint(ctx(), body)
    assert found is not None and (found.prompt, found.messages) == _reference_fingerprint(body)
    assert not any(turn.data.find(b"a secret") >= 0 for turn, _ in request_facts._turn_order)


class _Recorder:
    def __init__(self, name: str, calls: list[tuple[str, Any]]) -> None:
        self.name, self.calls = name, calls

    @hookimpl
    def on_stream_chunk(self, ctx: RequestContext, chunk: Any) -> None:
        self.calls.append((self.name, chunk))


class _ChunkOnly:
    def __init__(self, calls: list[tuple[str, Any]]) -> None:
        self.calls = calls

    @hookimpl(tryfirst=True)
    def on_stream_chunk(self, chunk: Any) -> None:
        self.calls.append(("chunk-only", chunk))


class _Broken:
    @hookimpl
    def on_stream_chunk(self, ctx: RequestContext, chunk: Any) -> None:
        raise RuntimeError("broken")


def test_the_notifier_calls_every_implementation_in_pluggys_order_and_isolates_failures() -> None:
    calls: list[tuple[str, Any]] = []
    pm = PluginManager()
    pm.register(_Recorder("first", calls), name="first")
    pm.register(_Broken(), name="broken")
    pm.register(_Recorder("last", calls), name="last")
    pm.register(_ChunkOnly(calls), name="chunk-only")
    failures: list[tuple[str, str]] = []
    notify = notifier(pm.hook.on_stream_chunk, lambda name, exc: failures.append((name, str(exc))), ("ctx", "chunk"))
    notify(ctx(), {"n": 1})
    order = [impl.plugin_name for impl in reversed(pm.hook.on_stream_chunk.get_hookimpls())]
    expected = [(name, {"n": 1}) for name in order if name != "broken"]
    assert calls == expected and calls[0][0] == "chunk-only"  # tryfirst first, then last registered first
    assert failures == [("broken", "broken")]


def test_the_notifier_goes_through_hook_wrappers_when_there_are_some() -> None:
    seen: list[str] = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def on_stream_chunk(self, ctx: RequestContext, chunk: Any) -> Any:
            seen.append("before")
            result = yield
            seen.append("after")
            return result

    calls: list[tuple[str, Any]] = []
    pm = PluginManager()
    pm.register(_Recorder("plain", calls), name="plain")
    pm.register(Wrapper(), name="wrapper")
    notify = notifier(pm.hook.on_stream_chunk, lambda name, exc: None, ("ctx", "chunk"))
    notify(ctx(), {"n": 2})
    assert seen == ["before", "after"] and calls == [("plain", {"n": 2})]
    assert isinstance(pm.hook.on_stream_chunk, pluggy.HookCaller)


def test_a_cut_openai_stream_reports_the_output_it_sent_as_partial_usage() -> None:
    encoder = OpenAIEncoder("m", wants_usage=False)
    assert encoder.usage is None
    for chunk in ({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
                  {"choices": [{"index": 0, "delta": {"content": "x" * 40}}]},
                  {"choices": [{"index": 0, "delta": {"reasoning_content": "y" * 8}}]},
                  {"choices": [{"index": 0, "delta": {"tool_calls": [
                      {"index": 0, "function": {"name": "Read", "arguments": '{"a": 1}'}}]}}]}):
        assert encoder.prepare(chunk) is not None
    usage = encoder.usage
    assert usage is not None and usage.output_tokens == 15  # (40 + 8 + 4 + 8) characters / 4
    encoder.prepare({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 3}})
    reported = encoder.usage
    assert reported is not None and (reported.input_tokens, reported.output_tokens) == (10, 3)  # what it reported wins


def test_text_deltas_are_skipped_only_when_every_implementation_says_it_needs_none() -> None:
    class Skipper:
        @hookimpl
        @skips_text_deltas
        def on_stream_chunk(self, ctx: RequestContext, chunk: Any) -> None:
            pass

    pm = PluginManager()
    pm.register(Skipper(), name="skipper")
    notify = notifier(pm.hook.on_stream_chunk, lambda name, exc: None, ("ctx", "chunk"))
    assert notify.skips_text_deltas is True  # type: ignore[attr-defined]
    pm.register(_Recorder("wants-all", []), name="wants-all")
    notify = notifier(pm.hook.on_stream_chunk, lambda name, exc: None, ("ctx", "chunk"))
    assert notify.skips_text_deltas is False  # type: ignore[attr-defined]


def test_what_counts_as_a_plain_text_delta() -> None:
    def chunk(delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": extra.pop("finish", None)}],
                **extra}

    assert is_text_delta(chunk({"content": "hi"}))
    assert is_text_delta(chunk({"role": "assistant", "content": ""}))
    assert is_text_delta(chunk({"reasoning_content": "hmm"}))
    assert not is_text_delta(chunk({"content": "hi"}, finish="length"))
    assert not is_text_delta(chunk({"content": None, "tool_calls": [{"index": 0}]}))
    assert not is_text_delta(chunk({"content": "x"}, usage={"completion_tokens": 3}))
    assert not is_text_delta({"choices": []}) and not is_text_delta({"usage": {"prompt_tokens": 1}})
    two = chunk({"content": "a"})
    two["choices"].append({"index": 1, "delta": {"content": "b"}, "finish_reason": None})
    assert not is_text_delta(two)

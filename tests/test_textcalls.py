"""Tool calls written as text by local models become real tool calls.

Unit tests feed :class:`TextCallFilter` the markup split at every size; gateway tests
serve a fake Ollama whose model writes its calls as text (``TextToolCalls``, streamed
in 3-character pieces that split the markup) and read the answer with the anthropic
and openai SDKs.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from clasp_gateway.config import ConfigError
from clasp_gateway.shaping.textcalls import TextCallFilter, filter_text_calls, parse_calls, text_call_names
from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import GATEWAY_KEY, FakeUpstream, GatewayServer, Text, ToolCalls, config_from
from clasp_gateway.testing.fakes.textcalls import STYLES, TextToolCalls, render_text_calls
from clasp_gateway.types import KEEPALIVE, Deployment

NAMES = {"bash": "Bash", "Bash": "Bash", "read": "Read", "Read": "Read", "mcp__git__log": "mcp__git__log"}
CALL_ID = re.compile(r"^call_[0-9a-f]{24}$")
BASH = {"command": "ls -la src/ && echo \"done <ok> [1]\" | tee out.txt", "description": "list {files}"}
READ = {"file_path": "/tmp/ünïcode 世界.py"}


def chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    d = dict(delta)
    if content is not None:
        d["content"] = content
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "qwen",
            "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


def run(text: str, size: int, names: dict[str, str] = NAMES) -> tuple[str, list[dict[str, Any]], list[str]]:
    """Feed ``text`` in pieces of ``size``; return (text out, tool calls, finish reasons)."""
    f = TextCallFilter(names)
    out: list[dict[str, Any]] = []
    pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
    for i, piece in enumerate(pieces):
        out += f.feed(chunk(piece, "stop" if i == len(pieces) - 1 else None))
    texts, calls, finishes = [], [], []
    for c in out:
        choice = c["choices"][0]
        texts.append(choice["delta"].get("content") or "")
        calls += choice["delta"].get("tool_calls") or []
        if choice["finish_reason"]:
            finishes.append(choice["finish_reason"])
    return "".join(texts), calls, finishes


# --- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"name": "Bash", "arguments": {"command": "ls"}}', [("Bash", {"command": "ls"})]),
        ('{"name": "bash", "parameters": {"command": "ls"}}', [("Bash", {"command": "ls"})]),
        ('{"tool": "Read", "args": {"file_path": "/a"}}', [("Read", {"file_path": "/a"})]),
        ('{"tool_name": "Read", "tool_input": {"file_path": "/a"}}', [("Read", {"file_path": "/a"})]),
        ('{"type": "function", "function": {"name": "Bash", "arguments": "{\\"command\\": \\"pwd\\"}"}}',
         [("Bash", {"command": "pwd"})]),
        ('{"name": "Bash", "arguments": "{\\"command\\": \\"pwd\\"}"}', [("Bash", {"command": "pwd"})]),
        ('{"name": "Bash"}', [("Bash", {})]),
        ('[{"name": "Bash", "arguments": {"command": "a"}}, {"name": "Read", "arguments": {"file_path": "b"}}]',
         [("Bash", {"command": "a"}), ("Read", {"file_path": "b"})]),
        ('{"tool_calls": [{"name": "Bash", "arguments": {}}]}', [("Bash", {})]),
        ('{"name": "Nope", "arguments": {}}', None),
        ('[{"name": "Bash", "arguments": {}}, {"name": "Nope", "arguments": {}}]', None),
        ('{"name": "Bash", "description": "Runs commands", "parameters": {}}', None),  # a tool definition
        ('{"name": "Bash", "arguments": [1, 2]}', None),
        ('{"name": "Bash", "arguments": "not json"}', None),
        ('{"name": "Bash", "arguments": {"command": "ls"}', None),
        ('"Bash"', None),
    ],
)
def test_parse_calls(text: str, expected: list[tuple[str, dict[str, Any]]] | None) -> None:
    got = parse_calls(text, NAMES)
    if expected is None:
        assert got is None
    else:
        assert got is not None and [(n, json.loads(a)) for n, a in got] == expected


# --- the streaming filter --------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 10_000])
def test_every_style_split_anywhere(style: str, size: int) -> None:
    text = render_text_calls([("Bash", BASH), ("Read", READ)], style)
    out, calls, finishes = run(text, size)
    assert out.strip() == ""
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("Bash", BASH), ("Read", READ)]
    assert [c["index"] for c in calls] == [0, 1]
    assert all(CALL_ID.match(c["id"]) and c["type"] == "function" for c in calls)
    assert len({c["id"] for c in calls}) == 2
    assert finishes == ["tool_calls"]


@pytest.mark.parametrize("style", ["hermes", "mistral", "mistral_v11"])
@pytest.mark.parametrize("size", [1, 3, 10_000])
def test_text_around_the_calls_is_kept(style: str, size: int) -> None:
    before, after = "I'll list the files <first> [then] read one.\n", "\nWaiting for the results."
    text = before + render_text_calls([("Bash", BASH)], style) + after
    out, calls, finishes = run(text, size)
    assert out == before + after
    assert [c["function"]["name"] for c in calls] == ["Bash"]
    assert finishes == ["tool_calls"]


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "John", "age": 30, "city": "Paris"}',
        '[1, 2, 3] are the first numbers; {"a": 1} is an object.',
        "[Docs](https://example.com) say <b>bold</b> and a < b, x[0] = 1",
        "```python\nprint('<tool_call>')\n```\nThat prints the tag.",
        '```json\n{"version": 2}\n```',
        '<tool_call>{"name": "Delete", "arguments": {"path": "/"}}</tool_call>',
        '{"name": "Bash", "arguments": {"command": "ls"}',  # cut short: not a call
        "Use [TOOL_CALLS] to call tools.",
        "Ends with a partial tag <tool_ca",
        '  \n{"name": "Bash", "description": "a tool definition", "parameters": {}}',
    ],
)
@pytest.mark.parametrize("size", [1, 4, 10_000])
def test_other_text_stays_text_byte_for_byte(text: str, size: int) -> None:
    out, calls, finishes = run(text, size)
    assert (out, calls, finishes) == (text, [], ["stop"])


def test_ordinary_json_and_code_are_released_early() -> None:
    """An answer that only looks like it could be a call is not held to its end."""
    f = TextCallFilter(NAMES)
    first = f.feed(chunk('{"name": "Jo'))
    assert first == []  # still undecided
    released = f.feed(chunk('hn", "bio": "'))
    assert "".join(c["choices"][0]["delta"]["content"] for c in released) == '{"name": "John", "bio": "'
    f = TextCallFilter(NAMES)
    assert f.feed(chunk("```")) == []
    assert "".join(c["choices"][0]["delta"]["content"] for c in f.feed(chunk("python\nimport os"))) == "```python\nimport os"


def test_plain_text_chunks_pass_untouched() -> None:
    f = TextCallFilter(NAMES)
    c1, c2 = chunk("Hello"), chunk(" world, no markup here.")
    assert [c["choices"][0]["delta"]["content"] for c in f.feed(c1)] == ["Hello"]
    out = f.feed(c2)
    assert len(out) == 1 and out[0] is c2  # no copy, no scan beyond two substring checks


def test_native_tool_calls_and_usage_pass_through() -> None:
    f = TextCallFilter(NAMES)
    native = chunk(tool_calls=[{"index": 0, "id": "call_native", "type": "function",
                                "function": {"name": "Bash", "arguments": "{}"}}])
    assert f.feed(native) == [native]
    out = f.feed(chunk('<tool_call>{"name": "Read", "arguments": {"file_path": "/x"}}</tool_call>', "stop"))
    calls = [c for o in out for c in o["choices"][0]["delta"].get("tool_calls") or []]
    assert [c["index"] for c in calls] == [1]  # after the native call's index
    usage = {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}}
    assert f.feed(usage) == [usage]


def test_finish_chunk_keeps_usage_and_other_delta_keys() -> None:
    f = TextCallFilter(NAMES)
    last = chunk('{"name": "Bash", "arguments": {}}', "stop", reasoning_content="thought")
    last["usage"] = {"prompt_tokens": 1, "completion_tokens": 2}
    out = f.feed(last)
    assert out[0]["choices"][0]["delta"] == {"reasoning_content": "thought"}
    assert out[-1]["choices"][0]["finish_reason"] == "tool_calls" and out[-1]["usage"]["completion_tokens"] == 2


def test_length_finish_is_kept_and_a_cut_call_stays_text() -> None:
    f = TextCallFilter(NAMES)
    out = f.feed(chunk('<tool_call>{"name": "Bash", "arguments": {"comm', "length"))
    assert out[0]["choices"][0]["delta"]["content"].startswith("<tool_call>")
    assert out[-1]["choices"][0]["finish_reason"] == "length"


def test_async_filter_passes_keepalives_and_closes_the_upstream() -> None:
    closed: list[bool] = []

    async def upstream() -> Any:
        try:
            yield chunk("<tool_")
            yield KEEPALIVE
            yield chunk('call>{"name": "Bash", "arguments": {"command": "ls"}}</tool_call>')
            yield chunk("", "stop")
        finally:
            closed.append(True)

    async def main() -> list[Any]:
        rest = upstream()
        first = await anext(rest)
        return [c async for c in filter_text_calls(first, rest, NAMES)]

    out = asyncio.run(main())
    assert out[0] is KEEPALIVE
    assert out[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "Bash"
    assert out[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert closed == [True]


def dep(provider: str, **settings: Any) -> Deployment:
    return Deployment(id="d", provider=provider, model="m", api_base="", settings=settings)


TOOL_BODY = {"tools": [{"type": "function", "function": {"name": "Bash", "parameters": {}}}]}


@pytest.mark.parametrize(
    "deployment, body, engaged",
    [
        (dep("ollama"), TOOL_BODY, True),
        (dep("hosted_vllm"), TOOL_BODY, True),
        (dep("lm_studio", text_tool_calls="auto"), TOOL_BODY, True),
        (dep("openai"), TOOL_BODY, False),
        (dep("openai", text_tool_calls=True), TOOL_BODY, True),
        (dep("openai_compatible", text_tool_calls=True), TOOL_BODY, True),
        (dep("ollama", text_tool_calls=False), TOOL_BODY, False),
        (dep("ollama"), {}, False),
        (dep("ollama"), {**TOOL_BODY, "tool_choice": "none"}, False),
    ],
)
def test_when_the_filter_engages(deployment: Deployment, body: dict[str, Any], engaged: bool) -> None:
    names = text_call_names(deployment, body)
    assert (names is not None) is engaged
    if names:
        assert names["bash"] == "Bash" and names["Bash"] == "Bash"


def test_bad_setting_fails_at_start_up() -> None:
    config = config_from({"models": {"x": [{"model": "ollama/qwen", "text_tool_calls": "yes"}]}})
    with pytest.raises(ConfigError, match=r"models\.x\.0\.text_tool_calls: expected true, false or auto"):
        create_app(config, load_plugins=False)


# --- through the gateway ---------------------------------------------------------------------------

TOOLS: list[Any] = [
    {"name": "Bash", "description": "Run a command", "input_schema": {
        "type": "object", "properties": {"command": {"type": "string"}, "description": {"type": "string"}},
        "required": ["command"]}},
    {"name": "Read", "description": "Read a file", "input_schema": {
        "type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}},
]
USER = [{"role": "user", "content": "List the files."}]


@pytest.fixture(scope="module")
def ollama() -> Iterator[FakeUpstream]:
    with FakeUpstream("ollama") as up:
        yield up


@pytest.fixture(scope="module")
def local_gateway(ollama: FakeUpstream) -> Iterator[GatewayServer]:
    # (Distinct ids: the same upstream named twice would otherwise be one deployment.)
    base = ollama.origin + "/v1"
    models = {
        "claude-*": [{"model": "ollama/qwen2.5-coder:7b", "api_base": base}],
        "hosted": [{"id": "hosted", "model": "openai/gpt-4o", "api_base": base, "api_key": "sk-x"}],
        "hosted-flagged": [{"id": "flagged", "model": "openai/gpt-4o", "api_base": base, "api_key": "sk-x",
                            "text_tool_calls": True}],
        "local-off": [{"id": "off", "model": "ollama/qwen2.5-coder:7b", "api_base": base, "text_tool_calls": False}],
    }
    with GatewayServer(config_from({"models": models})) as server:
        yield server


@pytest.fixture
def client(local_gateway: GatewayServer, ollama: FakeUpstream) -> anthropic.Anthropic:
    ollama.reset()
    return anthropic.Anthropic(base_url=local_gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)


def ask(client: anthropic.Anthropic, stream: bool, model: str = "claude-sonnet-4-5", **kw: Any) -> Any:
    params: dict[str, Any] = {"model": model, "max_tokens": 1000, "messages": USER, "tools": TOOLS, **kw}
    if stream:
        with client.messages.stream(**params) as s:
            events = [e.type for e in s]
            message = s.get_final_message()
        assert events[0] == "message_start" and events[-1] == "message_stop"
        return message
    return client.messages.create(**params)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("style", STYLES)
def test_tool_use_blocks_with_complete_input(client: anthropic.Anthropic, ollama: FakeUpstream, style: str, stream: bool) -> None:
    before = "I'll look around first.\n" if style in ("hermes", "mistral") else ""
    ollama.queue(TextToolCalls([("Bash", BASH), ("Read", READ)], style=style, before=before))
    message = ask(client, stream)
    blocks = [b for b in message.content if b.type == "tool_use"]
    assert [(b.name, b.input) for b in blocks] == [("Bash", BASH), ("Read", READ)]
    assert all(re.match(r"^[a-zA-Z0-9_-]+$", b.id) for b in blocks) and blocks[0].id != blocks[1].id
    texts = [b.text for b in message.content if b.type == "text"]
    assert texts == ([before] if before else [])
    assert message.stop_reason == "tool_use"
    sent = ollama.last.json
    assert sent["model"] == "qwen2.5-coder:7b" and [t["function"]["name"] for t in sent["tools"]] == ["Bash", "Read"]


def test_the_calls_round_trip_next_turn(client: anthropic.Anthropic, ollama: FakeUpstream) -> None:
    ollama.queue(TextToolCalls([("Bash", {"command": "ls"})]), Text("Two files."))
    first = ask(client, True)
    [call] = [b for b in first.content if b.type == "tool_use"]
    second = ask(client, True, messages=[
        *USER,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "a.py\nb.py"}]},
    ])
    assert second.content[0].text == "Two files."
    history = ollama.last.json["messages"]
    assert history[-2]["tool_calls"][0]["id"] == call.id and history[-1]["tool_call_id"] == call.id


def test_a_plain_answer_is_untouched(client: anthropic.Anthropic, ollama: FakeUpstream) -> None:
    answer = 'Use <tool_call> tags? No: here is JSON {"name": "Bash"} and a list [1, 2].'
    ollama.queue(Text(answer, chunk_size=3))
    message = ask(client, True)
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == answer
    assert message.stop_reason == "end_turn"


def test_native_tool_calls_still_work(client: anthropic.Anthropic, ollama: FakeUpstream) -> None:
    ollama.queue(ToolCalls([("Bash", BASH)]))
    message = ask(client, True)
    assert [(b.name, b.input) for b in message.content if b.type == "tool_use"] == [("Bash", BASH)]


@pytest.mark.parametrize(
    "model, parsed",
    [("hosted", False), ("hosted-flagged", True), ("local-off", False)],
)
def test_the_deployment_setting_decides(client: anthropic.Anthropic, ollama: FakeUpstream, model: str, parsed: bool) -> None:
    reply = TextToolCalls([("Bash", {"command": "ls"})])
    ollama.queue(reply)
    message = ask(client, True, model=model)
    if parsed:
        assert [b.type for b in message.content] == ["tool_use"]
    else:
        assert [b.type for b in message.content] == ["text"] and message.content[0].text == reply.text


def test_no_tools_no_parsing(client: anthropic.Anthropic, ollama: FakeUpstream) -> None:
    reply = TextToolCalls([("Bash", {"command": "ls"})])
    ollama.queue(reply)
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=USER)  # type: ignore[arg-type]
    assert message.content[0].text == reply.text  # type: ignore[union-attr]


@pytest.mark.parametrize("stream", [True, False])
def test_openai_clients_get_tool_calls(local_gateway: GatewayServer, ollama: FakeUpstream, stream: bool) -> None:
    ollama.reset()
    ollama.queue(TextToolCalls([("Bash", BASH)], style="mistral", before="Running it.\n"))
    client = openai.OpenAI(base_url=local_gateway.base_url + "/v1", api_key=GATEWAY_KEY, max_retries=0)
    tools: Any = [{"type": "function", "function": {"name": t["name"], "parameters": t["input_schema"]}} for t in TOOLS]
    messages: Any = USER
    if stream:
        calls: dict[int, dict[str, str]] = {}
        text, finish = "", None
        for c in client.chat.completions.create(model="claude-local", messages=messages, tools=tools, stream=True):
            if not c.choices:
                continue
            delta = c.choices[0].delta
            text += delta.content or ""
            for call in delta.tool_calls or []:
                slot = calls.setdefault(call.index, {"name": "", "arguments": ""})
                slot["name"] += (call.function.name or "") if call.function else ""
                slot["arguments"] += (call.function.arguments or "") if call.function else ""
            finish = c.choices[0].finish_reason or finish
        got = [(v["name"], json.loads(v["arguments"])) for _, v in sorted(calls.items())]
    else:
        answer = client.chat.completions.create(model="claude-local", messages=messages, tools=tools)
        text, finish = answer.choices[0].message.content or "", answer.choices[0].finish_reason
        got = [(c.function.name, json.loads(c.function.arguments)) for c in answer.choices[0].message.tool_calls or []]
    assert got == [("Bash", BASH)]
    assert text == "Running it.\n" and finish == "tool_calls"

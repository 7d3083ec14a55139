"""Anthropic request -> canonical OpenAI body (request.py)."""

from __future__ import annotations

import copy
import re
from typing import Any

import orjson
import pytest
from clasp_claude.request import (
    EMPTY_TOOL_OUTPUT,
    MISSING_TOOL_RESULT,
    TOOL_ERROR_PREFIX,
    estimate_input_tokens,
    to_canonical,
    upstream_tool_name,
    upstream_user,
)

from clasp_gateway import build_classifier, request_features, strip_marks
from clasp_gateway.errors import InvalidRequestError

PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="

EDIT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "file_path": {"type": "string", "description": "The absolute path to the file to modify"},
        "old_string": {"type": "string"},
        "new_string": {"type": "string"},
        "replace_all": {"type": "boolean", "default": False},
    },
    "required": ["file_path", "old_string", "new_string"],
}


def body(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "hi"}],
    }
    base.update(kw)
    return base


def msgs(**kw: Any) -> list[dict[str, Any]]:
    return to_canonical(body(**kw)).body["messages"]


# -- a realistic Claude Code conversation ---------------------------------------------


CLAUDE_CODE_REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 32000,
    "stream": True,
    "system": [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.331.abc; cc_entrypoint=cli;"},
        {
            "type": "text",
            "text": "You are Claude Code, Anthropic's official CLI for Claude.",
            "cache_control": {"type": "ephemeral"},
        },
        {
            "type": "text",
            "text": "Use the tools available to you.",
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        },
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-reminder>Today is Monday.</system-reminder>"},
                {"type": "text", "text": "Fix the typo in a.py", "cache_control": {"type": "ephemeral"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "I should read the file.", "signature": "EqQBCkYIBxgCKkBn"},
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3"},
                {"type": "text", "text": "Let me look at the file."},
                {"type": "tool_use", "id": "toolu_01A", "name": "Read", "input": {"file_path": "/r/a.py"}},
                {"type": "tool_use", "id": "toolu_01B", "name": "mcp__github__get_file.contents", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01A",
                    "content": "1\tprnt('hi')\n",
                    "cache_control": {"type": "ephemeral"},
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01B",
                    "is_error": True,
                    "content": [{"type": "text", "text": "<tool_use_error>Not found</tool_use_error>"}],
                },
            ],
        },
        {"role": "system", "content": "The user changed the working directory."},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_01C",
                    "name": "Edit",
                    "input": {"file_path": "/r/a.py", "old_string": "prnt", "new_string": "print"},
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01C", "content": ""},
                {"type": "text", "text": "Also, what is in this screenshot?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
            ],
        },
    ],
    "tools": [
        {
            "name": "Read",
            "description": "Reads a file",
            "input_schema": {
                "type": "object",
                "properties": {"file_path": {"type": "string"}},
                "required": ["file_path"],
            },
        },
        {
            "name": "Edit",
            "description": "Edits a file",
            "input_schema": EDIT_SCHEMA,
            "cache_control": {"type": "ephemeral"},
            "defer_loading": False,
            "input_examples": [{"file_path": "/x"}],
            "strict": True,
        },
        {
            "name": "mcp__github__get_file.contents",
            "description": "GitHub",
            "input_schema": {"type": "object", "properties": {}},
        },
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
    ],
    "metadata": {"user_id": "user_" + "a" * 64 + "_account__session_2b0e8f6c-6f0e-4d7e-9d55-4b2d3b7f1a11"},
    "thinking": {"type": "enabled", "budget_tokens": 31999},
    "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
    "output_config": {"effort": "medium"},
    "temperature": 1,
}

MCP_UPSTREAM = upstream_tool_name("mcp__github__get_file.contents")


def test_claude_code_conversation_exact() -> None:
    t = to_canonical(copy.deepcopy(CLAUDE_CODE_REQUEST))
    assert t.body["messages"] == [
        {
            "role": "system",
            "content": "You are Claude Code, Anthropic's official CLI for Claude.\n\nUse the tools available to you.",
            # Breakpoints in LiteLLM's convention: the last one of a message, at its end.
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        },
        {
            "role": "user",
            "content": "<system-reminder>Today is Monday.</system-reminder>\n\nFix the typo in a.py",
            "cache_control": {"type": "ephemeral"},
        },
        {
            "role": "assistant",
            "content": "Let me look at the file.",
            "tool_calls": [
                {
                    "id": "toolu_01A",
                    "type": "function",
                    "function": {"name": "Read", "arguments": '{"file_path":"/r/a.py"}'},
                },
                {"id": "toolu_01B", "type": "function", "function": {"name": MCP_UPSTREAM, "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_01A", "content": "1\tprnt('hi')\n"},
        {
            "role": "tool",
            "tool_call_id": "toolu_01B",
            "content": TOOL_ERROR_PREFIX + "<tool_use_error>Not found</tool_use_error>",
            "cache_control": {"type": "ephemeral"},  # the marked message's last part
        },
        {"role": "system", "content": "The user changed the working directory."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_01C",
                    "type": "function",
                    "function": {
                        "name": "Edit",
                        "arguments": '{"file_path":"/r/a.py","old_string":"prnt","new_string":"print"}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_01C", "content": EMPTY_TOOL_OUTPUT},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Also, what is in this screenshot?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
            ],
        },
    ]
    assert t.body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "Read",
                "description": "Reads a file",
                "parameters": {
                    "type": "object",
                    "properties": {"file_path": {"type": "string"}},
                    "required": ["file_path"],
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "Edit",
                "description": "Edits a file",
                "parameters": {k: v for k, v in EDIT_SCHEMA.items() if k != "$schema"},
            },
            "cache_control": {"type": "ephemeral"},
        },
        {
            "type": "function",
            "function": {
                "name": MCP_UPSTREAM,
                "description": "GitHub",
                "parameters": {"type": "object", "properties": {}},
            },
        },
    ]
    assert t.tool_names == {MCP_UPSTREAM: "mcp__github__get_file.contents"}
    assert t.body["stream"] is True and t.body["stream_options"] == {"include_usage": True}
    user = t.body["user"]
    assert user.startswith("clasp-") and len(user) <= 64
    assert "session" not in user and user == to_canonical(CLAUDE_CODE_REQUEST).body["user"]
    assert t.body["max_tokens"] == 32000 and t.body["temperature"] == 1
    assert t.hints.thinking_budget == 31999
    assert t.hints.reasoning_effort == "medium"  # output_config overrides the budget's "high"
    assert t.hints.task is None
    assert t.stop_sequences == []


def test_no_anthropic_only_field_leaks() -> None:
    # Breakpoints travel in the canonical request (LiteLLM's convention); the core
    # strips them for providers that reject them (tests/test_prompt_cache.py).
    dumped = orjson.dumps(strip_marks(to_canonical(copy.deepcopy(CLAUDE_CODE_REQUEST)).body)).decode()
    for word in (
        "cache_control",
        "context_management",
        "output_config",
        "defer_loading",
        "input_examples",
        "thinking",
        "signature",
        "redacted",
        "budget_tokens",
        "metadata",
        "$schema",
        "web_search",
        "billing-header",
        "ephemeral",
        '"strict"',
    ):
        assert word not in dumped, word
    assert set(to_canonical(copy.deepcopy(CLAUDE_CODE_REQUEST)).body) == {
        "model",
        "messages",
        "max_tokens",
        "stream",
        "stream_options",
        "temperature",
        "tools",
        "user",
    }


def test_input_is_not_mutated() -> None:
    original = copy.deepcopy(CLAUDE_CODE_REQUEST)
    to_canonical(original)
    assert original == CLAUDE_CODE_REQUEST


def test_unknown_top_level_keys_are_ignored() -> None:
    t = to_canonical(
        body(container="c1", mcp_servers=[{"x": 1}], service_tier="auto", betas=["x"], whatever={"a": 1}, top_k=40)
    )
    assert set(t.body) == {"model", "messages", "max_tokens", "stream"}
    assert t.hints.top_k == 40


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ([], "request body: expected a JSON object, got array"),
        ("x", "request body: expected a JSON object, got string"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model: a non-empty string is required"),
        (body(model=""), "model: a non-empty string is required"),
        (body(model=3), "model: a non-empty string is required"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens: field required"),
        (body(max_tokens=0), "max_tokens: must be at least 1, got 0"),
        (body(max_tokens=-3), "max_tokens: must be at least 1"),
        (body(max_tokens="100"), "max_tokens: expected an integer, got string"),
        (body(max_tokens=True), "max_tokens: expected an integer, got boolean"),
        (body(max_tokens=1.5), "max_tokens: expected an integer, got number"),
        (body(messages=[]), "messages: at least one message is required"),
        (body(messages={"role": "user"}), "messages: expected an array of messages, got object"),
        (body(messages=["hi"]), "messages.0: expected an object, got string"),
        (
            body(messages=[{"role": "tool", "content": "x"}]),
            "messages.0.role: expected 'user' or 'assistant', got 'tool'",
        ),
        (body(messages=[{"role": "user"}]), "messages.0.content: field required"),
        (
            body(messages=[{"role": "user", "content": 5}]),
            "messages.0.content: expected a string or an array of content blocks, got number",
        ),
        (
            body(
                messages=[
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": [{"type": "foo"}]},
                ]
            ),
            "messages.2.content.0: unknown content block type 'foo'",
        ),
        (
            body(messages=[{"role": "user", "content": [{"text": "x"}]}]),
            "messages.0.content.0.type: missing or not a string",
        ),
        (
            body(messages=[{"role": "user", "content": ["x"]}]),
            "messages.0.content.0: expected a content block object, got string",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "text", "text": 3}]}]),
            "messages.0.content.0.text: expected a string, got number",
        ),
        (
            body(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png"}}],
                    }
                ]
            ),
            "messages.0.content.0.source.data: expected a string, got null",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "ftp"}}]}]),
            "messages.0.content.0.source.type: unknown image source type 'ftp'",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "image"}]}]),
            "messages.0.content.0.source: expected an object, got null",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]}]),
            "messages.0.content.0: tool_use blocks are only allowed in assistant messages",
        ),
        (
            body(
                messages=[{"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": []}]}]
            ),
            "messages.0.content.0.input: expected an object, got array",
        ),
        (
            body(
                messages=[{"role": "assistant", "content": [{"type": "tool_use", "id": "", "name": "b", "input": {}}]}]
            ),
            "messages.0.content.0.id: must not be empty",
        ),
        (
            body(messages=[{"role": "assistant", "content": [{"type": "tool_use", "name": "b", "input": {}}]}]),
            "messages.0.content.0.id: expected a string, got null",
        ),
        (
            body(messages=[{"role": "assistant", "content": [{"type": "image", "source": {}}]}]),
            "messages.0.content.0: image blocks are only allowed in user messages",
        ),
        (
            body(messages=[{"role": "assistant", "content": [{"type": "bogus"}]}]),
            "messages.0.content.0: unknown content block type 'bogus'",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]),
            "messages.0.content.0.tool_use_id: expected a string, got null",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "content": 7}]}]),
            "messages.0.content.0.content: expected a string or an array of content blocks, got number",
        ),
        (
            body(
                messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "is_error": "yes"}]}]
            ),
            "messages.0.content.0.is_error: expected a boolean, got string",
        ),
        (
            body(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "a", "content": [{"type": "weird"}]}],
                    }
                ]
            ),
            "messages.0.content.0.content.0: unknown content block type 'weird'",
        ),
        (body(system=5), "system: expected a string or an array of text blocks, got number"),
        (body(system=[{"type": "image"}]), "system.0.type: system blocks must be of type 'text', got 'image'"),
        (body(system=[{"type": "text"}]), "system.0.text: expected a string, got null"),
        (body(temperature=1.5), "temperature: must be between 0.0 and 1.0, got 1.5"),
        (body(temperature="hot"), "temperature: expected a number, got string"),
        (body(top_p=-0.1), "top_p: must be between 0.0 and 1.0"),
        (body(top_k="5"), "top_k: expected an integer, got string"),
        (body(stop_sequences="END"), "stop_sequences: expected an array of strings, got string"),
        (body(stop_sequences=["a", 3]), "stop_sequences.1: expected a string, got number"),
        (body(stop_sequences=["  "]), "stop_sequences.0: stop sequences must contain non-whitespace characters"),
        (body(metadata="u"), "metadata: expected an object, got string"),
        (body(metadata={"user_id": 5}), "metadata.user_id: expected a string, got number"),
        (body(stream="yes"), "stream: expected a boolean, got string"),
        (body(tools={}), "tools: expected an array, got object"),
        (body(tools=[{"name": "a"}]), "tools.0.input_schema: expected an object, got null"),
        (body(tools=[{"input_schema": {}}]), "tools.0.name: expected a string, got null"),
        (body(tools=[{"name": "", "input_schema": {}}]), "tools.0.name: must not be empty"),
        (
            body(tools=[{"name": "a", "description": 3, "input_schema": {}}]),
            "tools.0.description: expected a string, got number",
        ),
        (
            body(tools=[{"name": "a", "input_schema": {}}, {"name": "a", "input_schema": {}}]),
            "tools.1.name: tool names must be unique; 'a' is repeated",
        ),
        (body(tool_choice="auto"), "tool_choice: expected an object, got string"),
        (
            body(tool_choice={"type": "maybe"}),
            "tool_choice.type: expected 'auto', 'any', 'tool' or 'none', got 'maybe'",
        ),
        (body(tool_choice={"type": "tool"}), "tool_choice.name: expected a string, got null"),
        (
            body(tool_choice={"type": "auto", "disable_parallel_tool_use": "no"}),
            "tool_choice.disable_parallel_tool_use: expected a boolean, got string",
        ),
        (body(thinking={"type": "enabled"}), "thinking.budget_tokens: expected an integer, got null"),
        (body(thinking={"type": "enabled", "budget_tokens": 0}), "thinking.budget_tokens: must be at least 1, got 0"),
        (
            body(thinking={"type": "sometimes"}),
            "thinking.type: expected 'enabled', 'adaptive' or 'disabled', got 'sometimes'",
        ),
        (body(thinking=True), "thinking: expected an object, got boolean"),
        (body(output_config={"effort": 3}), "output_config.effort: expected a string, got number"),
    ],
)
def test_validation_messages(request_body: Any, message: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        to_canonical(request_body)
    assert info.value.status == 400
    assert info.value.error_type == "invalid_request_error"
    assert info.value.message.startswith(message), info.value.message


def test_count_tokens_bodies_need_no_max_tokens() -> None:
    t = to_canonical({"model": "m", "messages": [{"role": "user", "content": "x"}]}, require_max_tokens=False)
    assert "max_tokens" not in t.body
    assert t.hints.task is None


@pytest.mark.parametrize(
    "junk",
    [
        None,
        0,
        1.5,
        "s",
        [],
        {},
        [None],
        {"messages": [None]},
        {"messages": [{"role": "user", "content": [None, 1, "x"]}]},
    ],
)
def test_junk_is_always_a_400_never_a_crash(junk: Any) -> None:
    candidates: list[Any] = [junk, body(messages=junk), body(system=junk), body(tools=junk), body(tool_choice=junk)]
    candidates += [
        body(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "content": junk}]}])
    ]
    candidates += [body(messages=[{"role": "user", "content": [{"type": "image", "source": junk}]}])]
    candidates += [body(messages=[{"role": "user", "content": [{"type": "document", "source": junk}]}])]
    candidates += [body(tools=[{"type": "bash_20250124", "name": junk}])]
    candidates += [body(metadata=junk), body(thinking=junk), body(output_config=junk)]
    for candidate in candidates:
        try:
            to_canonical(candidate)
        except InvalidRequestError:
            pass


# -- system ----------------------------------------------------------------------------


def test_system_string_and_blocks() -> None:
    assert msgs(system="Be brief.")[0] == {"role": "system", "content": "Be brief."}
    out = msgs(
        system=[
            {"type": "text", "text": "A"},
            {"type": "text", "text": ""},
            {"type": "text", "text": "B", "cache_control": {"type": "ephemeral"}},
        ]
    )
    assert out[0] == {"role": "system", "content": "A\n\nB", "cache_control": {"type": "ephemeral"}}
    assert msgs(system="")[0]["role"] == "user"
    assert msgs(system=[])[0]["role"] == "user"


def test_mid_conversation_system_message_keeps_position() -> None:
    out = msgs(
        messages=[
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "system", "content": [{"type": "text", "text": "note"}]},
            {"role": "user", "content": "c"},
        ]
    )
    assert [m["role"] for m in out] == ["user", "assistant", "system", "user"]
    assert out[2]["content"] == "note"


# -- user content ----------------------------------------------------------------------------


def test_user_string_and_text_blocks_become_strings() -> None:
    assert msgs(messages=[{"role": "user", "content": "hello"}]) == [{"role": "user", "content": "hello"}]
    out = msgs(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": ""}, {"type": "text", "text": "b"}],
            }
        ]
    )
    assert out == [{"role": "user", "content": "a\n\nb"}]


def test_images_and_documents() -> None:
    pdf = "JVBERi0xLjQK"
    out = msgs(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAA"}},
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": pdf},
                        "title": "Spec",
                        "citations": {"enabled": True},
                    },
                    {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}},
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "plain words"},
                        "title": "T",
                    },
                    {"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}},
                    {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "inner"}]}},
                    {
                        "type": "search_result",
                        "title": "R",
                        "source": "https://s",
                        "content": [{"type": "text", "text": "found"}],
                    },
                    {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
                ],
            }
        ]
    )
    assert out == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAA"}},
                {"type": "file", "file": {"filename": "Spec.pdf", "file_data": f"data:application/pdf;base64,{pdf}"}},
                {
                    "type": "file",
                    "file": {"filename": "document.pdf", "file_data": f"data:application/pdf;base64,{pdf}"},
                },
                {"type": "text", "text": "T\n\nplain words"},
                {"type": "text", "text": "[document at https://x/a.pdf]"},
                {"type": "text", "text": "inner"},
                {"type": "text", "text": "[search result: R - https://s]\nfound"},
                {"type": "text", "text": "[image file_1 from the Anthropic Files API is not available]"},
            ],
        }
    ]


@pytest.mark.parametrize(
    "block",
    [
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "x"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
        {"type": "web_fetch_tool_result", "tool_use_id": "srvtoolu_1", "content": {}},
        {"type": "code_execution_tool_result", "tool_use_id": "srvtoolu_1", "content": {}},
        {"type": "mcp_tool_use", "id": "m", "name": "x", "server_name": "s", "input": {}},
        {"type": "mcp_tool_result", "tool_use_id": "m", "content": []},
        {"type": "container_upload", "file_id": "f"},
        {"type": "thinking", "thinking": "t", "signature": "s"},
        {"type": "redacted_thinking", "data": "d"},
    ],
)
def test_server_and_thinking_blocks_are_dropped_silently(block: dict[str, Any]) -> None:
    for role in ("user", "assistant"):
        out = msgs(
            messages=[
                {"role": "user", "content": "q"},
                {"role": role, "content": [block, {"type": "text", "text": "kept"}]},
            ]
        )
        assert out[-1] == {"role": role, "content": "kept"}


def test_assistant_with_only_thinking_is_dropped() -> None:
    out = msgs(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"}]},
            {"role": "user", "content": "again"},
        ]
    )
    assert out == [{"role": "user", "content": "q"}, {"role": "user", "content": "again"}]


def test_assistant_text_blocks_join_and_prefill() -> None:
    out = msgs(
        messages=[
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "one"},
                    {"type": "text", "text": ""},
                    {"type": "text", "text": "two"},
                ],
            },
        ]
    )
    assert out[-1] == {"role": "assistant", "content": "one\n\ntwo"}
    assert msgs(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "{"}])[-1] == {
        "role": "assistant",
        "content": "{",
    }


def test_compaction_summary_is_kept_as_text() -> None:
    out = msgs(
        messages=[
            {"role": "assistant", "content": [{"type": "compaction", "content": "Summary so far."}]},
            {"role": "user", "content": "go"},
        ]
    )
    assert out[0] == {"role": "assistant", "content": "Summary so far."}


# -- tool results ----------------------------------------------------------------------------


def _call(call_id: str, name: str = "Bash") -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": {"command": "ls"}}


def test_tool_results_come_right_after_the_calls_and_before_user_text() -> None:
    out = msgs(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [_call("t1"), _call("t2")]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "before"},
                    {"type": "tool_result", "tool_use_id": "t2", "content": "two"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "more"}],
                    },
                    {"type": "text", "text": "after"},
                ],
            },
        ]
    )
    assert out[2:] == [
        {"role": "tool", "tool_call_id": "t2", "content": "two"},
        {"role": "tool", "tool_call_id": "t1", "content": "one\nmore"},
        {"role": "user", "content": "before\n\nafter"},
    ]


@pytest.mark.parametrize(
    ("result", "content"),
    [
        ({"content": "boom", "is_error": True}, "[tool error] boom"),
        ({"content": "", "is_error": True}, "[tool error] (no output)"),
        ({"content": []}, "(no output)"),
        ({}, "(no output)"),
        ({"content": "ok", "is_error": False}, "ok"),
        (
            {
                "content": [
                    {"type": "search_result", "title": "A", "source": "s", "content": [{"type": "text", "text": "x"}]}
                ]
            },
            "[search result: A - s]\nx",
        ),
        ({"content": [{"type": "tool_reference", "tool_name": "Grep"}]}, "[tool available: Grep]"),
        (
            {"content": [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}}]},
            "doc",
        ),
    ],
)
def test_tool_result_content(result: dict[str, Any], content: str) -> None:
    out = msgs(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [_call("t1")]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", **result}]},
        ]
    )
    assert out[2:] == [{"role": "tool", "tool_call_id": "t1", "content": content}]


def test_tool_result_images_follow_in_a_user_message() -> None:
    out = msgs(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [_call("t1", "Screenshot")]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [
                            {"type": "text", "text": "Captured."},
                            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
                        ],
                    },
                    {"type": "text", "text": "What do you see?"},
                ],
            },
        ]
    )
    assert out[2:] == [
        {"role": "tool", "tool_call_id": "t1", "content": "Captured.\n[image attached below]"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Attachments of tool result t1:"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                {"type": "text", "text": "What do you see?"},
            ],
        },
    ]


def test_unanswered_tool_call_gets_a_placeholder_result() -> None:
    out = msgs(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [_call("t1"), _call("t2")]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "one"},
                    {"type": "text", "text": "stop"},
                ],
            },
        ]
    )
    assert out[2:] == [
        {"role": "tool", "tool_call_id": "t1", "content": "one"},
        {"role": "tool", "tool_call_id": "t2", "content": MISSING_TOOL_RESULT},
        {"role": "user", "content": "stop"},
    ]
    # Two assistant messages in a row: the first one's calls are closed too.
    out = msgs(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [_call("t1")]},
            {"role": "assistant", "content": "done"},
        ]
    )
    assert out[1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "Bash", "arguments": '{"command":"ls"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": MISSING_TOOL_RESULT},
        {"role": "assistant", "content": "done"},
    ]


def test_orphan_tool_result_is_refused_as_anthropic_does() -> None:
    # Anthropic answers 400 for a result that answers no call of the message before;
    # it used to travel upstream as user text.
    with pytest.raises(InvalidRequestError) as caught:
        msgs(
            messages=[
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": [_call("t1")]},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "one"},
                        {"type": "tool_result", "tool_use_id": "zz", "content": "late"},
                    ],
                },
            ]
        )
    assert caught.value.status == 400 and caught.value.message == (
        "messages.2.content.1: unexpected `tool_use_id` found in `tool_result` blocks: zz. Each `tool_result` "
        "block must have a corresponding `tool_use` block in the previous message."
    )


def test_system_message_between_call_and_result_moves_after_the_results() -> None:
    out = msgs(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [_call("t1")]},
            {"role": "system", "content": "reminder"},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "r"}]},
        ]
    )
    assert [m["role"] for m in out] == ["user", "assistant", "tool", "system"]


def test_tool_call_ids_round_trip_exactly() -> None:
    odd = "call_abc:DEF.123"
    out = msgs(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [_call(odd)]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": odd, "content": "r"}]},
        ]
    )
    assert out[1]["tool_calls"][0]["id"] == odd and out[2]["tool_call_id"] == odd


# -- tools ---------------------------------------------------------------------------------


def test_tool_level_keys_never_leak_into_parameters() -> None:
    tool = {
        "name": "Edit",
        "description": "d",
        "input_schema": EDIT_SCHEMA,
        "cache_control": {"type": "ephemeral"},
        "defer_loading": True,
        "input_examples": [{}],
        "strict": True,
        "eager_input_streaming": True,
        "type": "custom",
    }
    fn = to_canonical(body(tools=[tool])).body["tools"][0]["function"]
    assert fn == {
        "name": "Edit",
        "description": "d",
        "parameters": {k: v for k, v in EDIT_SCHEMA.items() if k != "$schema"},
    }


def test_schema_without_type_gets_object_and_properties() -> None:
    fn = to_canonical(body(tools=[{"name": "x", "input_schema": {}}])).body["tools"][0]["function"]
    assert fn == {"name": "x", "parameters": {"type": "object", "properties": {}}}


@pytest.mark.parametrize(
    ("tool", "name", "required"),
    [
        ({"type": "bash_20250124", "name": "bash"}, "bash", None),
        ({"type": "bash_20241022", "name": "bash", "cache_control": {"type": "ephemeral"}}, "bash", None),
        (
            {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool", "max_characters": 10},
            "str_replace_based_edit_tool",
            ["command", "path"],
        ),
        ({"type": "text_editor_20250124", "name": "str_replace_editor"}, "str_replace_editor", ["command", "path"]),
        (
            {"type": "computer_20250124", "name": "computer", "display_width_px": 1024, "display_height_px": 768},
            "computer",
            ["action"],
        ),
        ({"type": "memory_20250818", "name": "memory"}, "memory", ["command"]),
    ],
)
def test_client_executed_anthropic_tools_become_functions(
    tool: dict[str, Any], name: str, required: list[str] | None
) -> None:
    fn = to_canonical(body(tools=[tool])).body["tools"][0]["function"]
    assert fn["name"] == name
    assert fn["parameters"]["type"] == "object" and fn["parameters"]["properties"]
    assert fn["parameters"].get("required") == required
    assert "display_width_px" not in orjson.dumps(fn["parameters"]).decode()
    if tool["type"].startswith("computer"):
        assert "1024x768" in fn["description"]


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        {"type": "web_fetch_20250910", "name": "web_fetch"},
        {"type": "code_execution_20250825", "name": "code_execution"},
        {"type": "tool_search_tool_regex_20251119", "name": "tool_search_tool_regex"},
        {"type": "mcp_toolset", "mcp_server_name": "x"},
        {"type": "computer_toolset_20260801"},
    ],
)
def test_server_tools_are_dropped(tool: dict[str, Any]) -> None:
    t = to_canonical(body(tools=[tool], tool_choice={"type": "any"}))
    assert "tools" not in t.body and "tool_choice" not in t.body


def test_client_tool_templates_are_fresh_copies() -> None:
    a = to_canonical(body(tools=[{"type": "bash_20250124", "name": "bash"}])).body["tools"][0]["function"]["parameters"]
    a["properties"]["command"]["type"] = "broken"
    b = to_canonical(body(tools=[{"type": "bash_20250124", "name": "bash"}])).body["tools"][0]["function"]["parameters"]
    assert b["properties"]["command"]["type"] == "string"


@pytest.mark.parametrize(
    "name",
    ["mcp__server__" + "x" * 80, "has.dot", "has space", "ünïcode", "a" * 65, "slash/name", "colon:name"],
)
def test_invalid_tool_names_are_mapped_consistently(name: str) -> None:
    t = to_canonical(
        body(
            messages=[
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": name, "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "r"}]},
            ],
            tools=[{"name": name, "input_schema": {"type": "object"}}],
            tool_choice={"type": "tool", "name": name},
        )
    )
    up = t.body["tools"][0]["function"]["name"]
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", up)
    assert up != name and t.tool_names == {up: name}
    assert t.body["messages"][1]["tool_calls"][0]["function"]["name"] == up
    assert t.body["tool_choice"] == {"type": "function", "function": {"name": up}}
    assert upstream_tool_name(name) == up  # deterministic across requests


def test_valid_names_are_untouched_and_similar_names_do_not_collide() -> None:
    assert upstream_tool_name("mcp__ide__getDiagnostics") == "mcp__ide__getDiagnostics"
    assert upstream_tool_name("a" * 64) == "a" * 64
    assert upstream_tool_name("a.b") != upstream_tool_name("a:b")
    t = to_canonical(body(tools=[{"name": "Read", "input_schema": {}}]))
    assert t.tool_names == {}


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        ({"type": "tool", "name": "Read"}, {"type": "function", "function": {"name": "Read"}}, None),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
        (
            {"type": "tool", "name": "Read", "disable_parallel_tool_use": True},
            {"type": "function", "function": {"name": "Read"}},
            False,
        ),
        ({"type": "auto", "disable_parallel_tool_use": False}, "auto", None),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: Any, parallel: bool | None) -> None:
    t = to_canonical(body(tools=[{"name": "Read", "input_schema": {}}], tool_choice=choice))
    assert t.body["tool_choice"] == expected
    assert t.body.get("parallel_tool_calls") is parallel
    assert len(t.body["tools"]) == 1  # "none" keeps the tools


def test_tool_choice_without_tools_is_dropped() -> None:
    t = to_canonical(body(tool_choice={"type": "any", "disable_parallel_tool_use": True}))
    assert "tool_choice" not in t.body and "parallel_tool_calls" not in t.body and "tools" not in t.body


# -- parameters and hints -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "effort", "budget"),
    [
        ({}, None, None),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "low", 1024),
        ({"thinking": {"type": "enabled", "budget_tokens": 4096}}, "medium", 4096),
        ({"thinking": {"type": "enabled", "budget_tokens": 16383}}, "medium", 16383),
        ({"thinking": {"type": "enabled", "budget_tokens": 16384}}, "high", 16384),
        ({"thinking": {"type": "adaptive"}}, "medium", None),
        ({"thinking": {"type": "disabled"}}, None, None),
        ({"output_config": {"effort": "low"}}, "low", None),
        ({"thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}}, "high", None),
        ({"thinking": {"type": "enabled", "budget_tokens": 2000}, "output_config": {"effort": "high"}}, "high", 2000),
        ({"output_config": {"effort": "future-level"}}, None, None),
        ({"output_config": {"format": {"type": "json_schema"}}}, None, None),
    ],
)
def test_thinking_and_effort_hints(extra: dict[str, Any], effort: str | None, budget: int | None) -> None:
    t = to_canonical(body(**extra))
    assert t.hints.reasoning_effort == effort
    assert t.hints.thinking_budget == budget
    assert not {"thinking", "reasoning_effort", "output_config"} & set(t.body)


def test_sampling_stop_user_stream() -> None:
    t = to_canonical(
        body(temperature=0, top_p=0.9, top_k=5, stop_sequences=["END", "STOP", "END"], metadata={"user_id": "u1"})
    )
    assert t.body["temperature"] == 0 and t.body["top_p"] == 0.9 and t.body["user"] == upstream_user("u1")
    assert "stop" not in t.body and "top_k" not in t.body
    assert t.stop_sequences == ["END", "STOP"]
    assert t.hints.top_k == 5
    assert t.body["stream"] is False and "stream_options" not in t.body
    assert "user" not in to_canonical(body(metadata={"user_id": None})).body
    assert "user" not in to_canonical(body(metadata={})).body


@pytest.mark.parametrize(
    ("max_tokens", "tools", "request_class"),
    [(1, False, "background"), (512, False, "background"), (513, False, "question"), (100, True, "coding"),
     (32000, False, "question")],
)
def test_background_calls_are_the_cores_class_not_a_hint(max_tokens: int, tools: bool, request_class: str) -> None:
    """The plugin tags nothing: the core's classifier (one threshold, ``classes:``)
    reads the translated body and finds Claude Code's helper calls by their shape."""
    extra = {"tools": [{"name": "a", "input_schema": {}}]} if tools else {}
    t = to_canonical(body(max_tokens=max_tokens, **extra))
    assert t.hints.task is None
    assert build_classifier({}).classify(request_features(t.body, t.hints))[0] == request_class


def test_an_answer_schema_is_a_hint_not_a_field_sent_upstream() -> None:
    """``output_config.format`` (Claude Code's session titles) becomes
    ``hints.structured_output`` for the core's classes; nothing of it goes upstream."""
    schema = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}
    t = to_canonical(body(max_tokens=128000, output_config={"effort": "medium", "format": {
        "type": "json_schema", "schema": schema}}))
    assert t.hints.structured_output and t.hints.reasoning_effort == "medium"
    assert "response_format" not in t.body and "output_config" not in t.body
    assert build_classifier({}).classify(request_features(t.body, t.hints))[0] == "background"
    assert not to_canonical(body(output_config={"effort": "low"})).hints.structured_output


# -- estimate ----------------------------------------------------------------------------------


def test_estimate_counts_media_as_fixed_tokens() -> None:
    big = "A" * 400_000
    with_image = body(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": big}},
                ],
            }
        ]
    )
    assert 1600 <= estimate_input_tokens(with_image) < 1700
    with_url = body(
        messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]
    )
    assert estimate_input_tokens(with_url) >= 1600
    nested = body(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [_call("t1")]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [
                            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": big}}
                        ],
                    }
                ],
            },
        ]
    )
    assert estimate_input_tokens(nested) < 1800


def test_tool_result_pdf_follows_as_a_file_part() -> None:
    out = msgs(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [_call("t1", "Fetch")]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [
                            {
                                "type": "document",
                                "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
                            },
                            {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}},
                        ],
                    }
                ],
            },
        ]
    )
    assert out[2] == {"role": "tool", "tool_call_id": "t1", "content": "[image and document attached below]"}
    assert [p["type"] for p in out[3]["content"]] == ["text", "file", "image_url"]


def test_integral_floats_are_accepted_as_integers() -> None:
    t = to_canonical(body(max_tokens=1024.0, thinking={"type": "enabled", "budget_tokens": 2048.0}))
    assert t.body["max_tokens"] == 1024 and type(t.body["max_tokens"]) is int
    assert t.hints.thinking_budget == 2048


# -- cache breakpoints ---------------------------------------------------------------------


def test_breakpoints_travel_in_litellms_convention() -> None:
    t = to_canonical(body(
        system=[{"type": "text", "text": "S", "cache_control": {"type": "ephemeral", "ttl": "1h", "extra": 1}}],
        tools=[{"name": "f", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64},
                 "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "ok", "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": [{"type": "text", "text": "q", "cache_control": {"type": "ephemeral"}}]},
        ],
    ))
    system, image_msg, answer, question = t.body["messages"]
    assert system["cache_control"] == {"type": "ephemeral", "ttl": "1h"}  # only type and ttl travel
    assert image_msg["content"][-1]["cache_control"] == {"type": "ephemeral"} and "cache_control" not in image_msg
    assert answer["cache_control"] == {"type": "ephemeral"}
    assert question == {"role": "user", "content": "q", "cache_control": {"type": "ephemeral"}}
    assert t.body["tools"][0]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in t.body["tools"][0]["function"]
    assert strip_marks(t.body)["messages"][3] == {"role": "user", "content": "q"}


@pytest.mark.parametrize(("mark", "message"), [
    ("yes", "system.0.cache_control: expected an object, got string"),
    ({"type": "persistent"}, "system.0.cache_control.type: expected 'ephemeral', got 'persistent'"),
    ({"type": "ephemeral", "ttl": "2d"}, "system.0.cache_control.ttl: expected '5m' or '1h', got '2d'"),
])
def test_bad_breakpoints_are_a_400_naming_the_field(mark: Any, message: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        to_canonical(body(system=[{"type": "text", "text": "S", "cache_control": mark}]))
    assert info.value.message == message

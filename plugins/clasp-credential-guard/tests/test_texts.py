"""Which texts of a request are scanned, where each is, and what the scanner remembers."""

from __future__ import annotations

import copy

from clasp_credential_guard.finder import Scanner, locate
from clasp_credential_guard.scan import KINDS
from clasp_credential_guard.texts import path_of, segments, texts_of

GITHUB = "ghp" + "_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
ALL = frozenset(KINDS)
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo" * 50}}


def test_what_is_text_and_what_is_not() -> None:
    message = {"role": "user", "content": [
        {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
        IMAGE,
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "out"}, IMAGE]},
        {"type": "thinking", "thinking": "hmm", "signature": "c2lnbmF0dXJl"},
        {"type": "redacted_thinking", "data": "ZW5jcnlwdGVk"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png?token=x"}},
    ]}
    assert texts_of(message) == ["look", "out", "hmm",
                                 "https://example.com/a.png?token=x"]


def test_tool_inputs_and_schemas_are_read_as_key_value() -> None:
    tool_use = {"type": "tool_use", "id": "t", "name": "sh", "input": {"env": {"password": "p"}, "argv": ["a", 1]}}
    assert texts_of(tool_use) == ["sh", "password: p", "a"]
    call = {"id": "c", "type": "function", "function": {"name": "sh", "arguments": '{"cmd": "say \\"hi\\""}'}}
    assert texts_of(call) == ["sh", 'cmd: say "hi"']  # parsed: no JSON escapes left
    assert texts_of({"function": {"arguments": "not json"}}) == ["not json"]


def test_paths_name_the_place_in_the_client_request() -> None:
    body = {"system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "messages": [
        {"role": "user", "content": [{"type": "text", "text": "x"},
                                     {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text",
                                                                                              "text": "y"}]}]}]}
    parts = list(segments(body))
    assert [p[0] for p in parts] == ["system", "messages[0]"]
    assert path_of(parts[0][1], "system", 1) == "system[1]"
    assert path_of(parts[1][1], "messages[0]", 1) == "messages[0].content[1].content[0]"
    assert parts[1][2] == " (user)"


def test_clean_segments_are_remembered_and_a_change_is_scanned_again() -> None:
    scanner = Scanner(ALL)
    body = {"tools": [{"name": "t", "description": "clean"}], "messages": [{"role": "user", "content": "hello"}]}
    assert scanner.first(segments(body)) is None
    assert len(scanner._clean) == 2
    changed = copy.deepcopy(body)
    changed["messages"].append({"role": "user", "content": f"token {GITHUB}"})
    found = scanner.first(segments(changed))
    assert found is not None and found.where == "messages[1].content (user)" and found.kind == "github_token"
    changed["tools"][0]["description"] = f"use {GITHUB}"  # one character off a remembered segment is new
    found = scanner.first(segments(changed))
    assert found is not None and found.where == "tools[0].description"
    assert scanner.first(segments(changed)) == locate(changed, ALL)  # findings are never remembered


def test_memory_is_bounded() -> None:
    scanner = Scanner(ALL, remembered=10)
    for i in range(25):
        assert scanner.first(segments({"messages": [{"role": "user", "content": f"message {i}"}]})) is None
    assert len(scanner._clean) <= 10

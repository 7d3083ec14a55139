"""Provider quirks, one place each (``catalog.ProviderProfile`` + ``quirks.py``)."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from clasp_gateway.types import Deployment, RequestHints
from clasp_gateway.wire import catalog
from clasp_gateway.wire.quirks import alnum9_id, prepare_body, response_fixer, signature_id_down, signature_id_up


def dep(provider: str, model: str = "m") -> Deployment:
    return Deployment(id=provider, provider=provider, model=model, api_base="http://x")


HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "ok", "reasoning_content": "thinking...", "tool_calls": [
        {"id": "toolu_01AbC-def_123", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "Ab3dE6gH9", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "toolu_01AbC-def_123", "content": "1"},
    {"role": "tool", "tool_call_id": "Ab3dE6gH9", "content": "2"},
]
BODY = {"model": "client", "messages": HISTORY, "max_tokens": 100, "user": "u-1", "seed": 7, "stream": True,
        "stream_options": {"include_usage": True}}


def test_alnum9_ids_are_valid_deterministic_and_keep_valid_ones() -> None:
    made = alnum9_id("toolu_01AbC-def_123")
    assert re.fullmatch(r"[a-zA-Z0-9]{9}", made) and made == alnum9_id("toolu_01AbC-def_123")
    assert alnum9_id("Ab3dE6gH9") == "Ab3dE6gH9"
    assert len({alnum9_id(f"toolu_{i}") for i in range(5000)}) == 5000


def test_mistral_history_and_params() -> None:
    out = prepare_body(BODY, dep("mistral"), RequestHints(), stream=True)
    calls = out["messages"][1]["tool_calls"]
    assert [c["id"] for c in calls] == [alnum9_id("toolu_01AbC-def_123"), "Ab3dE6gH9"]
    assert [m["tool_call_id"] for m in out["messages"][2:]] == [c["id"] for c in calls]
    assert not {"user", "seed", "stream_options"} & set(out)
    assert BODY["messages"][1]["tool_calls"][0]["id"] == "toolu_01AbC-def_123"  # the input is not edited


def test_deepseek_never_gets_reasoning_back() -> None:
    out = prepare_body(BODY, dep("deepseek"), RequestHints(), stream=True)
    assert "reasoning_content" not in out["messages"][1] and out["messages"][1]["content"] == "ok"
    assert out["messages"][1]["tool_calls"][0]["id"] == "toolu_01AbC-def_123"  # ids untouched
    assert out["stream_options"] == {"include_usage": True} and out["user"] == "u-1"


def test_other_providers_keep_history_as_is() -> None:
    out = prepare_body(BODY, dep("openai", "gpt-4o"), RequestHints(), stream=True)
    assert out["messages"] is BODY["messages"]


@pytest.mark.parametrize("raw", [bytes([0xFB, 0xFF, 0x01]) * 11, b"\x00", b"plain-signature-bytes!"])
def test_gemini_signature_ids_round_trip(raw: bytes) -> None:
    sig = base64.b64encode(raw).decode()
    original = "call_7d1c0a__thought__" + sig
    down = signature_id_down(original)
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", down)
    assert signature_id_up(down) == original
    assert signature_id_up("toolu_01abc") == "toolu_01abc" and signature_id_down("call_1") == "call_1"


def test_gemini_history_ids_are_restored_upstream() -> None:
    sig = base64.b64encode(bytes([0xFB, 0xFF]) * 20).decode()
    safe = signature_id_down("call_1__thought__" + sig)
    body = {"messages": [
        {"role": "assistant", "content": None, "tool_calls": [{"id": safe, "type": "function",
                                                               "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": safe, "content": "x"}], "max_tokens": 10}
    out = prepare_body(body, dep("gemini", "gemini-2.5-flash"), RequestHints(), stream=False)
    assert out["messages"][0]["tool_calls"][0]["id"] == "call_1__thought__" + sig
    assert out["messages"][1]["tool_call_id"] == "call_1__thought__" + sig


def test_response_fixers() -> None:
    assert response_fixer(dep("openai")) is None and response_fixer(dep("mistral")) is None
    groq = response_fixer(dep("groq"))
    assert groq is not None
    chunk = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
             "x_groq": {"id": "req_1", "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}}
    assert groq(chunk)["usage"]["prompt_tokens"] == 5
    gemini = response_fixer(dep("gemini"))
    assert gemini is not None
    fixed = gemini({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1__thought__a+b/c=="}]},
                                 "finish_reason": None}]})
    assert fixed["choices"][0]["delta"]["tool_calls"][0]["id"] == "call_1__thought__a-b_c"


def test_profiles_say_where_each_quirk_lives() -> None:
    assert catalog.provider_profile("mistral").tool_call_ids == "alnum9"
    assert not catalog.provider_profile("deepseek").accepts_reasoning_history
    assert catalog.provider_profile("groq").supports_stream_usage and catalog.provider_profile("groq").usage_field == "x_groq"
    assert catalog.provider_profile("gemini").schema_dialect == "gemini"
    assert catalog.provider_profile("gemini").thought_signatures_in_ids

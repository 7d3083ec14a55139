"""Contract tests: the LiteLLM behaviour the ``transform`` path relies on.

``clasp_gateway/transform.py`` calls LiteLLM's provider-author interface (provider
configs, Gemini's body builder and URL builder, stream parsers), which LiteLLM does
not promise to keep stable (written against 1.110.2). These tests pin, for Gemini,
Cohere, Ollama's native API and Anthropic, exactly what the gateway sends (URL,
headers, body) and what it makes of a known answer and a known stream, plus the
LiteLLM gaps the gateway works around. An upgrade that changes any of it fails
here, loudly, before it reaches a user.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from clasp_gateway.errors import UpstreamError  # noqa: E402
from clasp_gateway.types import Deployment, RequestHints  # noqa: E402
from clasp_gateway.wire import catalog  # noqa: E402
from clasp_gateway.wire.litellm_adapter import LiteLLMAdapter  # noqa: E402
from clasp_gateway.wire.quirks import prepare_body  # noqa: E402
from clasp_gateway.wire.transform import EventReader, Prepared, TransformAdapter  # noqa: E402

CANONICAL: dict[str, Any] = {
    "model": "client-model",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
    ],
    "tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
    "max_tokens": 256,
    "temperature": 0.2,
    "stream": True,
}
WEATHER_TOOL = {"name": "get_weather", "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
OPENAI_HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
]

_adapter = TransformAdapter(LiteLLMAdapter().ensure_loaded)


def prepared(provider: str, model: str, api_base: str, *, stream: bool) -> Prepared:
    deployment = Deployment(id=f"{provider}-test", provider=provider, model=model, api_base=api_base,
                            info=catalog.model_info(provider, model))
    body = prepare_body(CANONICAL, deployment, RequestHints(), stream=stream)
    return _adapter.recipe(provider).prepare(deployment, body, stream, "KEY")


def read_stream(p: Prepared, events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    reader = EventReader(p, "test")
    chunks = [chunk for event in events for chunk in reader.read(event)]
    return chunks, reader.finished


def deltas(chunks: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str | None]]:
    return [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks if c["choices"]]


def usages(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["usage"] for c in chunks if "usage" in c]


# --------------------------------------------------------------------------------------
# Which LiteLLM machinery serves each provider
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "provider, model, config_class",
    [("gemini", "gemini-2.5-flash", "GoogleAIStudioGeminiConfig"), ("cohere", "command-a-03-2025", "CohereV2ChatConfig"),
     ("ollama_chat", "llama3.2", "OllamaChatConfig"), ("anthropic", "claude-sonnet-4-5", "AnthropicConfig")],
)
def test_provider_configs(provider: str, model: str, config_class: str) -> None:
    assert type(_adapter.recipe(provider).config(model)).__name__ == config_class


def test_profiles_choose_transform_and_litellm_names() -> None:
    for name in ("gemini", "cohere", "cohere_chat", "ollama_chat", "anthropic"):
        assert catalog.provider_profile(name).mode == "transform"
    assert catalog.provider_profile("cohere").litellm_provider == "cohere_chat"
    assert catalog.provider_profile("some_new_provider").mode == "litellm"  # the catch-all stays


# --------------------------------------------------------------------------------------
# Requests: URL, headers, body
# --------------------------------------------------------------------------------------


def test_gemini_request() -> None:
    p = prepared("gemini", "gemini-2.5-flash", "", stream=True)
    assert p.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert p.headers == {"content-type": "application/json", "x-goog-api-key": "KEY"}  # never ?key= in the URL
    assert orjson.loads(p.body) == {
        "contents": [
            {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
            {"role": "model", "parts": [{"text": "Checking."},
                                        {"function_call": {"name": "get_weather", "args": {"city": "Paris"}}}]},
            {"role": "user", "parts": [{"function_response": {"name": "get_weather", "response": {"content": "21 C"}}}]},
        ],
        "system_instruction": {"parts": [{"text": "Be brief."}]},
        "tools": [{"function_declarations": [{**WEATHER_TOOL}]}],
        "generationConfig": {"temperature": 0.2, "max_output_tokens": 256},
    }
    whole = prepared("gemini", "gemini-2.5-flash", "http://127.0.0.1:9/v1beta", stream=False)
    assert whole.url == "http://127.0.0.1:9/v1beta/models/gemini-2.5-flash:generateContent"
    # Gemini 3 lives on v1alpha.
    assert prepared("gemini", "gemini-3-pro-preview", "", stream=True).url.startswith(
        "https://generativelanguage.googleapis.com/v1alpha/models/gemini-3-pro-preview:streamGenerateContent")


def test_gemini_drops_what_its_schema_subset_lacks() -> None:
    """LiteLLM also cleans tool schemas for Gemini (the gateway's "gemini" dialect
    runs first; this pins LiteLLM's own pass over what is left)."""
    litellm = LiteLLMAdapter().ensure_loaded()
    params = litellm.get_optional_params(model="gemini-2.5-flash", custom_llm_provider="gemini", drop_params=True,
                                         tools=[{"type": "function", "function": {"name": "t", "parameters": {
                                             "type": "object", "additionalProperties": False,
                                             "properties": {"u": {"type": "string", "format": "uri"}}}}}])
    declared = params["tools"][0]["function_declarations"][0]["parameters"]
    assert declared == {"type": "object", "properties": {"u": {"type": "string"}}}


def test_cohere_request() -> None:
    p = prepared("cohere", "command-a-03-2025", "https://api.cohere.com", stream=True)
    assert p.url == "https://api.cohere.com/v2/chat"
    assert p.headers == {"Request-Source": "unspecified:litellm", "accept": "application/json",
                         "content-type": "application/json", "Authorization": "Bearer KEY"}
    assert orjson.loads(p.body) == {
        "model": "command-a-03-2025", "messages": OPENAI_HISTORY, "temperature": 0.2, "stream": True,
        "max_tokens": 256, "tools": [{"type": "function", "function": WEATHER_TOOL}],
    }
    assert orjson.loads(prepared("cohere", "command-a-03-2025", "https://api.cohere.com/v2/chat", stream=False).body)[
        "stream"] is False


def test_ollama_chat_request() -> None:
    p = prepared("ollama_chat", "llama3.2", "http://localhost:11434", stream=True)
    assert p.url == "http://localhost:11434/api/chat"
    assert p.headers == {"Authorization": "Bearer KEY"}
    assert orjson.loads(p.body) == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be brief.", "images": []},
            {"role": "user", "content": "Weather in Paris?", "images": []},
            {"role": "assistant", "content": "Checking.", "images": [],
             "tool_calls": [{"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "21 C", "images": [], "tool_call_id": "call_1"},
        ],
        "options": {"temperature": 0.2, "num_predict": 256},
        "stream": True,
        "tools": [{"type": "function", "function": WEATHER_TOOL}],
    }


def test_anthropic_request_for_openai_clients() -> None:
    p = prepared("anthropic", "claude-sonnet-4-5", "https://api.anthropic.com", stream=True)
    assert p.url == "https://api.anthropic.com/v1/messages"
    assert p.headers == {"anthropic-version": "2023-06-01", "accept": "application/json",
                         "content-type": "application/json", "x-api-key": "KEY"}
    assert orjson.loads(p.body) == {
        "model": "claude-sonnet-4-5",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                                              {"type": "tool_use", "id": "call_1", "name": "get_weather",
                                               "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "21 C"}]},
        ],
        "temperature": 0.2, "stream": True, "max_tokens": 256,
        "tools": [{"name": "get_weather", "input_schema": WEATHER_TOOL["parameters"], "type": "custom",
                   "description": "Weather"}],
        "system": [{"type": "text", "text": "Be brief."}],
    }


# --------------------------------------------------------------------------------------
# Whole answers
# --------------------------------------------------------------------------------------


def parse(p: Prepared, answer: dict[str, Any]) -> dict[str, Any]:
    return p.recipe.parse_response(p, 200, {"content-type": "application/json"}, orjson.dumps(answer))


def test_whole_answers() -> None:
    gemini = parse(prepared("gemini", "gemini-2.5-flash", "", stream=False), {
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "Let me check.", "thought": True}, {"text": "Sunny."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}, "thoughtSignature": "c2ln+/=="}]},
            "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 5, "thoughtsTokenCount": 3, "totalTokenCount": 20},
        "modelVersion": "gemini-2.5-flash", "responseId": "r1"})
    message = gemini["choices"][0]["message"]
    assert message["content"] == "Sunny." and message["reasoning_content"] == "Let me check."
    [call] = message["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Rome"}'}
    assert call["id"].endswith("__thought__c2ln+/==")  # the signature rides in the id
    assert gemini["choices"][0]["finish_reason"] == "tool_calls"
    assert gemini["usage"]["prompt_tokens"] == 12 and gemini["usage"]["completion_tokens"] == 8
    assert gemini["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}

    cohere = parse(prepared("cohere", "command-a-03-2025", "https://api.cohere.com", stream=False), {
        "id": "c1", "finish_reason": "TOOL_CALL",
        "message": {"role": "assistant", "tool_plan": "I will look it up.", "tool_calls": [
            {"id": "get_weather_abc123", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        "usage": {"billed_units": {"input_tokens": 10, "output_tokens": 4}, "tokens": {"input_tokens": 17, "output_tokens": 4}}})
    message = cohere["choices"][0]["message"]
    assert message["tool_calls"] == [{"index": 0, "type": "function", "id": "get_weather_abc123",
                                      "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]
    assert message["reasoning_content"] == "I will look it up."  # the gateway's addition (LiteLLM drops it)
    assert cohere["choices"][0]["finish_reason"] == "tool_calls"
    assert (cohere["usage"]["prompt_tokens"], cohere["usage"]["completion_tokens"]) == (17, 4)

    ollama = parse(prepared("ollama_chat", "llama3.2", "http://localhost:11434", stream=False), {
        "model": "llama3.2", "created_at": "2025-01-01T00:00:00Z", "done": True, "done_reason": "stop",
        "message": {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        "prompt_eval_count": 30, "eval_count": 9})
    [call] = ollama["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Rome"}'}
    assert ollama["choices"][0]["finish_reason"] == "tool_calls"  # Ollama says "stop"
    assert (ollama["usage"]["prompt_tokens"], ollama["usage"]["completion_tokens"]) == (30, 9)

    claude = parse(prepared("anthropic", "claude-sonnet-4-5", "https://api.anthropic.com", stream=False), {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "thinking", "thinking": "Hmm.", "signature": "sig"}, {"type": "text", "text": "Rome."}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 40, "output_tokens": 6, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 0}})
    message = claude["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == ("Rome.", "Hmm.")
    assert claude["usage"]["prompt_tokens"] == 50 and claude["usage"]["prompt_tokens_details"] == {"cached_tokens": 10}


# --------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------


def test_gemini_stream() -> None:
    p = prepared("gemini", "gemini-2.5-flash", "", stream=True)
    head = {"modelVersion": "gemini-2.5-flash", "responseId": "r1"}
    chunks, finished = read_stream(p, [
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Think.", "thought": True}]}, "index": 0}],
         "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}, **head},
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}],
         "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}, **head},
        {"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}, "thoughtSignature": "c2ln"}]},
            "finishReason": "STOP", "index": 0}],
         "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 4, "totalTokenCount": 13}, **head},
    ])
    got = deltas(chunks)
    assert got[0] == ({"reasoning_content": "Think."}, None)
    # LiteLLM marks every Gemini chunk "stop"; only the one with finishReason keeps it.
    assert got[1] == ({"content": "Hel"}, None)
    delta, finish = got[2]
    assert finish == "tool_calls" and finished
    [call] = delta["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Rome"}'}
    assert call["id"].endswith("__thought__c2ln") and call["index"] == 0
    assert usages(chunks)[-1]["completion_tokens"] == 4


def test_gemini_stream_error_event() -> None:
    p = prepared("gemini", "gemini-2.5-flash", "", stream=True)
    with pytest.raises(UpstreamError) as info:
        read_stream(p, [{"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}}])
    assert info.value.upstream_status == 429 and "Resource exhausted" in info.value.message


def test_cohere_stream() -> None:
    p = prepared("cohere", "command-a-03-2025", "https://api.cohere.com", stream=True)
    chunks, finished = read_stream(p, [
        {"id": "c1", "type": "message-start", "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "",
                                                                     "tool_calls": [], "citations": []}}},
        {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will"}}},
        {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {
            "id": "get_weather_x1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}}}},
        {"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": '{"city":'}}}}},
        {"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": '"Rome"}'}}}}},
        {"type": "tool-call-end", "index": 0},
        {"type": "message-end", "delta": {"finish_reason": "TOOL_CALL", "usage": {
            "billed_units": {"input_tokens": 5, "output_tokens": 3}, "tokens": {"input_tokens": 50, "output_tokens": 30}}}},
    ])
    assert deltas(chunks) == [
        ({"reasoning_content": "I will"}, None),
        ({"tool_calls": [{"index": 0, "type": "function", "id": "get_weather_x1",
                          "function": {"name": "get_weather", "arguments": ""}}]}, None),
        ({"tool_calls": [{"index": 0, "type": "function", "function": {"arguments": '{"city":'}}]}, None),
        ({"tool_calls": [{"index": 0, "type": "function", "function": {"arguments": '"Rome"}'}}]}, None),
        ({}, "tool_calls"),
    ]
    assert finished and usages(chunks) == [{"prompt_tokens": 50, "completion_tokens": 30, "total_tokens": 80}]


def test_litellm_cohere_parser_still_misses_the_real_message_end() -> None:
    """The gap the gateway's Cohere adapter covers. When LiteLLM reads type-keyed
    ``message-end`` events itself, this fails: drop ``_cohere_event``'s rewrite."""
    p = prepared("cohere", "command-a-03-2025", "https://api.cohere.com", stream=True)
    parser = p.recipe.stream_parser(p)
    parsed = parser.chunk_parser({"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": {
        "tokens": {"input_tokens": 1, "output_tokens": 1}}}})
    assert parsed["is_finished"] is False and parsed["usage"] is None
    thinking = parser.chunk_parser({"type": "content-delta", "index": 0,
                                    "delta": {"message": {"content": {"thinking": "hmm"}}}})
    assert thinking["text"] == ""  # reasoning content is dropped too (the gateway reads it)


def test_ollama_chat_stream() -> None:
    p = prepared("ollama_chat", "llama3.2", "http://localhost:11434", stream=True)
    chunks, finished = read_stream(p, [
        {"model": "llama3.2", "created_at": "t", "message": {"role": "assistant", "content": "", "thinking": "Hm."}, "done": False},
        {"model": "llama3.2", "created_at": "t", "message": {"role": "assistant", "content": "Ok. "}, "done": False},
        {"model": "llama3.2", "created_at": "t", "message": {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]}, "done": False},
        {"model": "llama3.2", "created_at": "t", "message": {"role": "assistant", "content": ""}, "done": True,
         "done_reason": "stop", "prompt_eval_count": 30, "eval_count": 9},
    ])
    got = deltas(chunks)
    assert got[0] == ({"reasoning_content": "Hm."}, None)
    assert got[1] == ({"content": "Ok. "}, None)
    [call] = got[2][0]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Rome"}'} and call["id"]
    assert got[3] == ({}, "tool_calls") and finished
    assert usages(chunks) == [{"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}]


def test_anthropic_stream_for_openai_clients() -> None:
    p = prepared("anthropic", "claude-sonnet-4-5", "https://api.anthropic.com", stream=True)
    chunks, finished = read_stream(p, [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
                                              "content": [], "stop_reason": None,
                                              "usage": {"input_tokens": 20, "output_tokens": 1}}},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "SIG"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1",
                                                                      "name": "get_weather", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city":"Rome"}'}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 15}},
        {"type": "message_stop"},
    ])
    got = deltas(chunks)
    assert ({"reasoning_content": "Hmm"}, None) in got
    calls = [d["tool_calls"][0] for d, _ in got if "tool_calls" in d]
    assert calls[0]["id"] == "toolu_1" and calls[0]["function"]["name"] == "get_weather"
    assert "".join(c["function"].get("arguments", "") for c in calls) == '{"city":"Rome"}'
    assert got[-1][1] == "tool_calls" and finished
    assert usages(chunks)[-1]["completion_tokens"] == 15 and usages(chunks)[-1]["prompt_tokens"] == 20
    with pytest.raises(UpstreamError) as info:
        read_stream(p, [{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}])
    assert info.value.upstream_status == 529


def test_thought_signature_separator() -> None:
    """The gateway makes Gemini's signature-carrying ids URL-safe around this separator."""
    from litellm.litellm_core_utils.prompt_templates.factory import THOUGHT_SIGNATURE_SEPARATOR

    from clasp_gateway.wire.quirks import THOUGHT_SEPARATOR

    assert THOUGHT_SIGNATURE_SEPARATOR == THOUGHT_SEPARATOR


@pytest.mark.parametrize(
    "provider, model, base, events",
    [
        ("gemini", "gemini-2.5-flash", "", [
            {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}],
             "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}, "modelVersion": "m", "responseId": "r"},
            {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hmm", "thought": True}]}, "index": 0}],
             "modelVersion": "m", "responseId": "r"},
            {"candidates": [{"content": {"role": "model", "parts": [{"text": "lo \u00fc\U0001F600"}]}, "index": 0}],
             "modelVersion": "m", "responseId": "r"},
        ]),
        ("anthropic", "claude-sonnet-4-5", "https://api.anthropic.com", [
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo \U0001F600"}},
        ]),
        ("ollama_chat", "llama3.2", "http://localhost:11434", [
            {"model": "llama3.2", "created_at": "t", "message": {"role": "assistant", "content": "Hel"}, "done": False},
            {"model": "llama3.2", "created_at": "t", "message": {"role": "assistant", "content": "lo"}, "done": False},
            {"model": "llama3.2", "created_at": "t", "message": {"role": "assistant", "content": "",
                                                                 "thinking": "hm"}, "done": False},
            {"model": "llama3.2", "created_at": "t", "message": {"role": "assistant", "content": "<think>x"}, "done": False},
        ]),
    ],
)
def test_fast_text_paths_agree_with_litellm(provider: str, model: str, base: str, events: list[dict[str, Any]]) -> None:
    """The gateway reads plain text deltas itself (LiteLLM's parsers build pydantic
    objects per chunk); what it reads must be what LiteLLM would have read."""
    p = prepared(provider, model, base, stream=True)
    fast, _ = read_stream(p, events)
    reader = EventReader(p, "test", fast=False)
    slow = [chunk for event in events for chunk in reader.read(event)]
    assert deltas(fast) == deltas(slow)

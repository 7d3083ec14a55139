"""Wire formats: how each provider spells a reply, byte for byte.

A *wire* turns a content reply (:class:`~clasp_gateway.testing.fakes.replies.Text`,
:class:`~clasp_gateway.testing.fakes.replies.ToolCalls`, :class:`~clasp_gateway.testing.fakes.replies.Reasoning`)
into either a complete response body or a list of stream events, and knows the
provider's error bodies.  It does no I/O: :mod:`clasp_gateway.testing.fakes.server` decides
when and how the bytes are written (delays, cuts, fragmentation).

Formats reproduced (from real captures):

* :class:`OpenAIWire` – api.openai.com ``/v1/chat/completions``: compact JSON,
  ``data: {...}\\n\\n`` SSE, a first ``{"role":"assistant","content":""}``
  delta, an empty-delta finish chunk, an optional ``choices: []`` usage chunk
  (``stream_options.include_usage``, with ``"usage":null`` on every other
  chunk), ``data: [DONE]``.
* :class:`AzureWire` – Azure OpenAI: alphabetically sorted keys, a first
  stream event with ``choices: []`` and ``prompt_filter_results``,
  ``content_filter_results`` on every choice, no ``service_tier``, dated model
  names, ``{"error":{"code","message"}}`` errors.
* :class:`OllamaWire` – Ollama's OpenAI-compatible endpoint: no empty first
  delta, ``role`` on every delta, tool calls whole in one chunk
  (``call_<8 lowercase alnum>``, with ``index``), ``finish_reason: "stop"``
  after streamed tool calls, ``fp_ollama``, Go-style HTML escaping
  (``\\u003c``) and sorted-key tool arguments.
* :class:`OllamaNativeWire` – Ollama ``/api/chat``: NDJSON lines, arguments
  as objects, ``done``/``done_reason`` and ``*_count`` statistics.
"""

from __future__ import annotations

import json
import random
import string
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from .prompt_cache import CacheUse
from .replies import Reasoning, Text, ToolCalls

__all__ = [
    "AzureWire",
    "Call",
    "Ctx",
    "OllamaNativeWire",
    "OllamaWire",
    "OpenAIWire",
    "Turn",
    "Wire",
    "html_page",
]

_ALNUM = string.ascii_letters + string.digits
_LOWER_ALNUM = string.ascii_lowercase + string.digits

SSE_DONE = b"data: [DONE]\n\n"


# --------------------------------------------------------------------------
# Request context and the normalised reply
# --------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a wire needs to know about the request being answered."""

    model: str
    messages: list[Any]
    stream: bool
    include_usage: bool
    rng: random.Random
    fragmented: bool = False
    api_version: str = ""
    extra_headers: dict[str, str] = field(default_factory=dict)
    """Added to the response headers (``FakeUpstream(response_headers=...)``)."""
    cache: CacheUse | None = None
    """What the provider's prompt cache did for this request (``FakeUpstream(prompt_cache=...)``)."""


@dataclass
class Call:
    """One tool call, with its arguments both as sent and as an object."""

    id: str
    name: str
    arguments: str
    parsed: Any


@dataclass
class Turn:
    """A content reply normalised for encoding: pieces, ids and token counts."""

    content: str | None
    text_pieces: list[str]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    reasoning: str | None = None
    reasoning_field: str = "reasoning_content"
    reasoning_pieces: list[str] = field(default_factory=list)
    reasoning_tokens: int = 0
    calls: list[Call] = field(default_factory=list)
    call_pieces: list[list[str]] = field(default_factory=list)
    interleave: bool = False
    cache_read: int = 0
    """Prompt tokens read from the provider's prompt cache (included in ``prompt_tokens``)."""
    cache_write: int = 0
    """Prompt tokens written to it (breakpoint caches; included in ``prompt_tokens``)."""


def _rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choices(alphabet, k=n))


def split_fixed(text: str, size: int) -> list[str]:
    """Split ``text`` into pieces of ``size`` characters (last may be shorter)."""
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)]


def split_random(text: str, rng: random.Random, lo: int, hi: int) -> list[str]:
    """Split ``text`` into pieces of random length in ``[lo, hi]`` characters."""
    out: list[str] = []
    i = 0
    while i < len(text):
        n = rng.randint(lo, hi)
        out.append(text[i : i + n])
        i += n
    return out


_ENCODERS = {
    (ascii_only, sort_keys): json.JSONEncoder(separators=(",", ":"), ensure_ascii=ascii_only, sort_keys=sort_keys)
    for ascii_only in (False, True)
    for sort_keys in (False, True)
}


def _compact(obj: Any, *, ascii_only: bool = False, sort_keys: bool = False) -> str:
    """Compact JSON (reusing encoder instances: this is the hot path)."""
    return _ENCODERS[ascii_only, sort_keys].encode(obj)


def _go_escape(s: str) -> str:
    """Apply Go ``encoding/json``'s HTML escaping to an already-encoded JSON text."""
    return (
        s.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


# --------------------------------------------------------------------------
# Base wire
# --------------------------------------------------------------------------


class Wire:
    """Common machinery; subclasses define the provider's spelling."""

    name = "base"
    json_content_type = "application/json"
    stream_content_type = "text/event-stream; charset=utf-8"
    terminator: bytes | None = SSE_DONE
    default_model = "gpt-4o-mini"
    text_piece = 4
    args_piece = 7

    def __init__(self, model_override: str | None = None) -> None:
        self.model_override = model_override

    # ----- reply normalisation -------------------------------------------

    def response_model(self, ctx: Ctx) -> str:
        """The ``model`` field of the response."""
        return self.model_override or ctx.model or self.default_model

    def call_id(self, rng: random.Random) -> str:
        """A tool call id in this provider's style."""
        return "call_" + _rand(rng, _ALNUM, 24)

    def dump_args(self, args: dict, ctx: Ctx) -> str:
        """Serialise dict arguments the way this provider's model emits them."""
        return _compact(args, ascii_only=ctx.fragmented)

    def _pieces(self, text: str, size: int | None, ctx: Ctx, lo: int, hi: int, default: int) -> list[str]:
        if size is not None:
            return split_fixed(text, size)
        if ctx.fragmented:
            return split_random(text, ctx.rng, lo, hi)
        return split_fixed(text, default)

    def turn(self, reply: Text | ToolCalls | Reasoning, ctx: Ctx) -> Turn:
        """Normalise a content reply: ids, argument strings, pieces, usage (the
        prompt cache's figures when the fake has one and the reply sets no usage)."""
        turn = self._turn(reply, ctx)
        if ctx.cache is not None and reply.usage is None:
            turn.prompt_tokens = ctx.cache.prompt_tokens
            turn.cache_read = ctx.cache.read
            turn.cache_write = ctx.cache.written
        return turn

    def _turn(self, reply: Text | ToolCalls | Reasoning, ctx: Ctx) -> Turn:
        prompt = len(json.dumps(ctx.messages)) // 4
        if isinstance(reply, Text):
            completion = max(1, len(reply.text) // 4)
            p, c = reply.usage or (prompt, completion)
            return Turn(
                content=reply.text,
                text_pieces=self._pieces(reply.text, reply.chunk_size, ctx, 1, 3, self.text_piece),
                finish_reason=reply.finish_reason,
                prompt_tokens=p,
                completion_tokens=c,
            )
        if isinstance(reply, Reasoning):
            completion = max(1, len(reply.reasoning + reply.text) // 4)
            p, c = reply.usage or (prompt, completion)
            return Turn(
                content=reply.text,
                text_pieces=self._pieces(reply.text, reply.chunk_size, ctx, 1, 3, self.text_piece),
                finish_reason="stop",
                prompt_tokens=p,
                completion_tokens=c,
                reasoning=reply.reasoning,
                reasoning_field=reply.field,
                reasoning_pieces=self._pieces(reply.reasoning, reply.chunk_size, ctx, 1, 3, self.text_piece),
                reasoning_tokens=min(c, max(1, len(reply.reasoning) // 4)),
            )
        if isinstance(reply, ToolCalls):
            calls: list[Call] = []
            for name, args in reply.calls:
                if isinstance(args, str):
                    try:
                        parsed = json.loads(args)
                    except ValueError:
                        parsed = args
                    calls.append(Call(self.call_id(ctx.rng), name, args, parsed))
                else:
                    calls.append(Call(self.call_id(ctx.rng), name, self.dump_args(args, ctx), args))
            size = sum(len(c.name) + len(c.arguments) for c in calls) + len(reply.text or "")
            p, c = reply.usage or (prompt, max(1, size // 4))
            return Turn(
                content=reply.text,
                text_pieces=self._pieces(reply.text or "", None, ctx, 1, 3, self.text_piece),
                finish_reason=reply.finish_reason,
                prompt_tokens=p,
                completion_tokens=c,
                calls=calls,
                call_pieces=[self._pieces(c.arguments, None, ctx, 1, 4, self.args_piece) for c in calls],
                interleave=reply.interleave,
            )
        raise TypeError(f"not a content reply: {reply!r}")

    # ----- encoding --------------------------------------------------------

    def encode(self, obj: Any) -> bytes:
        """Encode a JSON body / event payload."""
        return _compact(obj).encode()

    def event(self, obj: Any) -> bytes:
        """One stream event carrying ``obj``."""
        return b"data: " + self.encode(obj) + b"\n\n"

    def completion(self, turn: Turn, ctx: Ctx) -> dict:
        """The non-stream response object."""
        raise NotImplementedError

    def chunks(self, turn: Turn, ctx: Ctx) -> list[dict]:
        """The stream chunk objects, in order (terminator excluded)."""
        raise NotImplementedError

    def events(self, turn: Turn, ctx: Ctx) -> list[bytes]:
        """The encoded stream events (terminator excluded)."""
        return [self.event(c) for c in self.chunks(turn, ctx)]

    def malformed_event(self, turn: Turn, ctx: Ctx) -> bytes:
        """A stream event whose JSON payload is cut off half way."""
        payload = self.encode(self.chunks(turn, ctx)[-1])
        return b"data: " + payload[: max(1, len(payload) // 2)] + b"\n\n"

    def error(self, status: int, ctx: Ctx) -> dict | str:
        """The provider's default error body for ``status``."""
        raise NotImplementedError

    def headers(self, ctx: Ctx) -> dict[str, str]:
        """Extra response headers this provider always sends."""
        return {}


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# --------------------------------------------------------------------------
# OpenAI
# --------------------------------------------------------------------------


class OpenAIWire(Wire):
    """api.openai.com Chat Completions."""

    name = "openai"

    def completion_id(self, ctx: Ctx) -> str:
        """``chatcmpl-`` + 29 alphanumerics."""
        return "chatcmpl-" + _rand(ctx.rng, _ALNUM, 29)

    def fingerprint(self, ctx: Ctx) -> str:
        """``fp_`` + 10 hex digits."""
        return "fp_" + _rand(ctx.rng, "0123456789abcdef", 10)

    def usage(self, turn: Turn) -> dict:
        """The ``usage`` object with the detail blocks OpenAI sends."""
        return {
            "prompt_tokens": turn.prompt_tokens,
            "completion_tokens": turn.completion_tokens,
            "total_tokens": turn.prompt_tokens + turn.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": turn.cache_read, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": turn.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def message(self, turn: Turn) -> dict:
        """``choices[0].message`` of a non-stream response."""
        msg: dict[str, Any] = {"role": "assistant", "content": turn.content}
        if turn.reasoning is not None:
            msg[turn.reasoning_field] = turn.reasoning
        if turn.calls:
            msg["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in turn.calls
            ]
        msg["refusal"] = None
        msg["annotations"] = []
        return msg

    def completion(self, turn: Turn, ctx: Ctx) -> dict:
        return {
            "id": self.completion_id(ctx),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.response_model(ctx),
            "choices": [
                {"index": 0, "message": self.message(turn), "logprobs": None, "finish_reason": turn.finish_reason}
            ],
            "usage": self.usage(turn),
            "service_tier": "default",
            "system_fingerprint": self.fingerprint(ctx),
        }

    def call_deltas(self, turn: Turn) -> list[dict]:
        """``tool_calls`` delta entries: a header per call, then argument pieces."""
        per_call: list[list[dict]] = []
        for i, (call, pieces) in enumerate(zip(turn.calls, turn.call_pieces, strict=True)):
            items: list[dict] = [
                {"index": i, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
            ]
            items += [{"index": i, "function": {"arguments": p}} for p in pieces]
            per_call.append(items)
        if not turn.interleave:
            return [item for items in per_call for item in items]
        out: list[dict] = []
        for r in range(max((len(items) for items in per_call), default=0)):
            out += [items[r] for items in per_call if r < len(items)]
        return out

    def deltas(self, turn: Turn) -> Iterator[dict]:
        """The ``delta`` of every chunk before the finish chunk."""
        if turn.reasoning is not None:
            f = turn.reasoning_field
            yield {"role": "assistant", "content": None, f: ""}
            for p in turn.reasoning_pieces:
                yield {"content": None, f: p}
            for p in turn.text_pieces:
                yield {"content": p, f: None}
            return
        calls = self.call_deltas(turn)
        if turn.content is None and calls:
            yield {"role": "assistant", "content": None, "tool_calls": [calls[0]], "refusal": None}
            calls = calls[1:]
        else:
            yield {"role": "assistant", "content": "", "refusal": None}
            for p in turn.text_pieces:
                yield {"content": p}
        for c in calls:
            yield {"tool_calls": [c]}

    def chunk_head(self, ctx: Ctx) -> dict:
        """The fields shared by every chunk of one stream."""
        return {
            "id": self.completion_id(ctx),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.response_model(ctx),
            "service_tier": "default",
            "system_fingerprint": self.fingerprint(ctx),
        }

    def chunks(self, turn: Turn, ctx: Ctx) -> list[dict]:
        head = self.chunk_head(ctx)
        tail = {"usage": None} if ctx.include_usage else {}

        def chunk(delta: dict, finish: str | None) -> dict:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**head, "choices": [choice], **tail}

        out = [chunk(d, None) for d in self.deltas(turn)]
        out.append(chunk({}, turn.finish_reason))
        if ctx.include_usage:
            out.append({**head, "choices": [], "usage": self.usage(turn)})
        return out

    def events(self, turn: Turn, ctx: Ctx) -> list[bytes]:
        """Same bytes as encoding :meth:`chunks`, from a pre-encoded template.

        Streaming is the benchmark's hot path: only the delta is encoded per
        event (``test_openai_fast_events_match_chunks`` pins the equality).
        """
        head = self.chunk_head(ctx)
        prefix = b"data: " + self.encode(head)[:-1] + b',"choices":[{"index":0,"delta":'
        tail = (b',"usage":null}' if ctx.include_usage else b"}") + b"\n\n"
        middle = b',"logprobs":null,"finish_reason":null}]' + tail
        enc = _ENCODERS[False, False].encode
        out = [prefix + enc(d).encode() + middle for d in self.deltas(turn)]
        out.append(prefix + b'{},"logprobs":null,"finish_reason":' + enc(turn.finish_reason).encode() + b"}]" + tail)
        if ctx.include_usage:
            out.append(self.event({**head, "choices": [], "usage": self.usage(turn)}))
        return out

    _ERRORS: dict[int, tuple[str, str | None, str]] = {
        400: ("invalid_request_error", None, "Invalid request: the request body could not be processed."),
        401: (
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided: sk-fake***********. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
        ),
        403: (
            "request_forbidden",
            "unsupported_country_region_territory",
            "Country, region, or territory not supported",
        ),
        404: (
            "invalid_request_error",
            "model_not_found",
            "The model `{model}` does not exist or you do not have access to it.",
        ),
        429: (
            "requests",
            "rate_limit_exceeded",
            "Rate limit reached for {model} in organization org-fake on requests per min (RPM): "
            "Limit 3, Used 3, Requested 1. Please try again in 20s. Visit "
            "https://platform.openai.com/account/rate-limits to learn more.",
        ),
        500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
        502: ("server_error", None, "Bad gateway."),
        503: ("server_error", None, "The engine is currently overloaded, please try again later"),
    }

    def error(self, status: int, ctx: Ctx) -> dict | str:
        kind, code, message = self._ERRORS.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None, _reason(status))
        )
        message = message.replace("{model}", ctx.model or self.default_model)
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def missing_key_error(self) -> dict:
        """OpenAI's 401 when no ``Authorization`` header is sent."""
        return {
            "error": {
                "message": "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as "
                "the password field (with blank username) if you're accessing the API from your "
                "browser and are prompted for a username and password. You can obtain an API key "
                "from https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }

    def headers(self, ctx: Ctx) -> dict[str, str]:
        return {
            "x-request-id": "req_" + _rand(ctx.rng, "0123456789abcdef", 32),
            "openai-processing-ms": str(ctx.rng.randint(80, 900)),
            "openai-version": "2020-10-01",
        }


# --------------------------------------------------------------------------
# Azure OpenAI
# --------------------------------------------------------------------------

_SAFE = {"filtered": False, "severity": "safe"}
_PROMPT_FILTERS = {
    "hate": _SAFE,
    "jailbreak": {"filtered": False, "detected": False},
    "self_harm": _SAFE,
    "sexual": _SAFE,
    "violence": _SAFE,
}
_OUTPUT_FILTERS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
_COMPLETION_FILTERS = {
    **_OUTPUT_FILTERS,
    "protected_material_code": {"filtered": False, "detected": False},
    "protected_material_text": {"filtered": False, "detected": False},
}


class AzureWire(OpenAIWire):
    """Azure OpenAI ``/openai/deployments/{dep}/chat/completions``."""

    name = "azure"
    default_model = "gpt-4o-2024-08-06"

    def response_model(self, ctx: Ctx) -> str:
        # Azure reports the deployed model version, never the request's name.
        return self.model_override or self.default_model

    def encode(self, obj: Any) -> bytes:
        return _compact(obj, sort_keys=True).encode()

    def completion(self, turn: Turn, ctx: Ctx) -> dict:
        body = super().completion(turn, ctx)
        body.pop("service_tier", None)
        body["choices"][0]["content_filter_results"] = _COMPLETION_FILTERS
        body["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": _PROMPT_FILTERS}]
        return body

    def events(self, turn: Turn, ctx: Ctx) -> list[bytes]:
        return [self.event(c) for c in self.chunks(turn, ctx)]

    def chunks(self, turn: Turn, ctx: Ctx) -> list[dict]:
        out: list[dict] = [
            {
                "choices": [],
                "created": 0,
                "id": "",
                "model": "",
                "object": "",
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _PROMPT_FILTERS}],
            }
        ]
        for chunk in super().chunks(turn, ctx):
            chunk.pop("service_tier", None)
            chunk["choices"] = [
                {**c, "content_filter_results": _OUTPUT_FILTERS if c["delta"].get("content") else {}}
                for c in chunk["choices"]
            ]
            out.append(chunk)
        return out

    def error(self, status: int, ctx: Ctx) -> dict | str:
        version = ctx.api_version or "2024-10-21"
        messages = {
            401: (
                "401",
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
                "provide a valid key for an active subscription and use a correct regional API "
                "endpoint for your resource.",
            ),
            404: ("404", "Resource not found"),
            429: (
                "429",
                f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
                f"{version} have exceeded token rate limit of your current OpenAI S0 pricing tier. "
                "Please retry after 1 second. Please go here: https://aka.ms/oai/quotaincrease if you "
                "would like to further increase the default rate limit.",
            ),
            500: (
                "InternalServerError",
                "The service is temporarily unable to process your request. Please try again later.",
            ),
        }
        if status == 400:
            return super().error(status, ctx)
        code, message = messages.get(status, (str(status), _reason(status)))
        return {"error": {"code": code, "message": message}}

    def deployment_not_found(self) -> dict:
        """Azure's 404 for an unknown deployment name."""
        return {
            "error": {
                "code": "DeploymentNotFound",
                "message": "The API deployment for this resource does not exist. If you created the "
                "deployment within the last 5 minutes, please wait a moment and try again.",
            }
        }

    def headers(self, ctx: Ctx) -> dict[str, str]:
        rid = str(uuid.UUID(int=ctx.rng.getrandbits(128), version=4))
        return {"apim-request-id": rid, "x-request-id": rid, "x-ms-region": "East US 2"}


# --------------------------------------------------------------------------
# Ollama (OpenAI-compatible endpoint)
# --------------------------------------------------------------------------


class OllamaWire(Wire):
    """Ollama's ``/v1/chat/completions`` (OpenAI compatibility layer)."""

    name = "ollama"
    default_model = "llama3.2"

    def call_id(self, rng: random.Random) -> str:
        return "call_" + _rand(rng, _LOWER_ALNUM, 8)

    def dump_args(self, args: dict, ctx: Ctx) -> str:
        # Go's json.Marshal of map[string]any: sorted keys, compact, HTML-escaped.
        return _go_escape(_compact(args, sort_keys=True))

    def encode(self, obj: Any) -> bytes:
        return _go_escape(_compact(obj)).encode()

    def _head(self, ctx: Ctx, obj: str) -> dict:
        return {
            "id": f"chatcmpl-{ctx.rng.randint(0, 999)}",
            "object": obj,
            "created": int(time.time()),
            "model": self.response_model(ctx),
            "system_fingerprint": "fp_ollama",
        }

    def usage(self, turn: Turn) -> dict:
        return {
            "prompt_tokens": turn.prompt_tokens,
            "completion_tokens": turn.completion_tokens,
            "total_tokens": turn.prompt_tokens + turn.completion_tokens,
        }

    def tool_calls(self, turn: Turn) -> list[dict]:
        """Whole tool calls, each with its ``index`` (Ollama sends it even non-stream)."""
        return [
            {"id": c.id, "index": i, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for i, c in enumerate(turn.calls)
        ]

    def completion(self, turn: Turn, ctx: Ctx) -> dict:
        msg: dict[str, Any] = {"role": "assistant", "content": turn.content or ""}
        if turn.reasoning is not None:
            msg[turn.reasoning_field] = turn.reasoning
        if turn.calls:
            msg["tool_calls"] = self.tool_calls(turn)
        # Non-stream responses do report "tool_calls"; only the stream says "stop".
        finish = "tool_calls" if turn.calls else turn.finish_reason
        return {
            **self._head(ctx, "chat.completion"),
            "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
            "usage": self.usage(turn),
        }

    def chunks(self, turn: Turn, ctx: Ctx) -> list[dict]:
        head = self._head(ctx, "chat.completion.chunk")

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        out: list[dict] = []
        if turn.reasoning is not None:
            out += [chunk({"role": "assistant", "content": "", turn.reasoning_field: p}) for p in turn.reasoning_pieces]
        out += [chunk({"role": "assistant", "content": p}) for p in turn.text_pieces]
        if turn.calls:
            out.append(chunk({"role": "assistant", "content": "", "tool_calls": self.tool_calls(turn)}))
        finish = "stop" if turn.finish_reason == "tool_calls" else turn.finish_reason
        out.append(chunk({"role": "assistant", "content": ""}, finish))
        if ctx.include_usage:
            out.append({**head, "choices": [], "usage": self.usage(turn)})
        return out

    def error(self, status: int, ctx: Ctx) -> dict | str:
        messages = {
            400: "invalid request",
            404: f'model "{ctx.model or self.default_model}" not found, try pulling it first',
            500: "llama runner process has terminated: exit status 2",
            503: "server busy, please try again.  maximum pending requests exceeded",
        }
        kind = "invalid_request_error" if 400 <= status < 500 else "api_error"
        message = messages.get(status, _reason(status).lower())
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class OllamaNativeWire(Wire):
    """Ollama's native ``/api/chat`` (NDJSON streaming, the default)."""

    name = "ollama-native"
    default_model = "llama3.2"
    stream_content_type = "application/x-ndjson"
    terminator = None

    def dump_args(self, args: dict, ctx: Ctx) -> str:
        return _go_escape(_compact(args, sort_keys=True))

    def encode(self, obj: Any) -> bytes:
        return _go_escape(_compact(obj)).encode()

    def event(self, obj: Any) -> bytes:
        return self.encode(obj) + b"\n"

    def malformed_event(self, turn: Turn, ctx: Ctx) -> bytes:
        payload = self.encode(self.chunks(turn, ctx)[-1])
        return payload[: max(1, len(payload) // 2)] + b"\n"

    @staticmethod
    def created_at() -> str:
        """Go ``time.Time`` RFC 3339 with nanoseconds."""
        now = time.time_ns()
        dt = datetime.fromtimestamp(now // 1_000_000_000, tz=UTC)
        return f"{dt:%Y-%m-%dT%H:%M:%S}.{now % 1_000_000_000:09d}Z"

    def _done(self, turn: Turn, ctx: Ctx, message: dict) -> dict:
        return {
            "model": self.response_model(ctx),
            "created_at": self.created_at(),
            "message": message,
            "done_reason": "length" if turn.finish_reason == "length" else "stop",
            "done": True,
            "total_duration": 1_234_567_890,
            "load_duration": 12_345_678,
            "prompt_eval_count": turn.prompt_tokens,
            "prompt_eval_duration": 123_456_789,
            "eval_count": turn.completion_tokens,
            "eval_duration": 987_654_321,
        }

    def _tool_calls(self, turn: Turn) -> list[dict]:
        return [{"function": {"name": c.name, "arguments": c.parsed}} for c in turn.calls]

    def completion(self, turn: Turn, ctx: Ctx) -> dict:
        msg: dict[str, Any] = {"role": "assistant", "content": turn.content or ""}
        if turn.reasoning is not None:
            msg["thinking"] = turn.reasoning
        if turn.calls:
            msg["tool_calls"] = self._tool_calls(turn)
        return self._done(turn, ctx, msg)

    def chunks(self, turn: Turn, ctx: Ctx) -> list[dict]:
        model = self.response_model(ctx)

        def line(message: dict) -> dict:
            return {"model": model, "created_at": self.created_at(), "message": message, "done": False}

        out: list[dict] = []
        if turn.reasoning is not None:
            out += [line({"role": "assistant", "content": "", "thinking": p}) for p in turn.reasoning_pieces]
        out += [line({"role": "assistant", "content": p}) for p in turn.text_pieces]
        if turn.calls:
            out.append(line({"role": "assistant", "content": "", "tool_calls": self._tool_calls(turn)}))
        out.append(self._done(turn, ctx, {"role": "assistant", "content": ""}))
        return out

    def error(self, status: int, ctx: Ctx) -> dict | str:
        messages = {
            400: "invalid request",
            404: f'model "{ctx.model or self.default_model}" not found, try pulling it first',
            500: "llama runner process has terminated: exit status 2",
            503: "server busy, please try again.  maximum pending requests exceeded",
        }
        return {"error": messages.get(status, _reason(status).lower())}


# --------------------------------------------------------------------------
# Misconfigured proxies
# --------------------------------------------------------------------------


def html_page(status: int) -> str:
    """An HTML page such as a proxy or captive portal would answer."""
    if status >= 400:
        title = f"{status} {_reason(status)}"
        return (
            f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
        "<title>Sign in – Corporate Proxy</title></head>\n<body>\n"
        "<h1>Authentication required</h1>\n<p>Please sign in to continue to the requested site.</p>\n"
        '<form method="post" action="/login"><input name="user"><input name="pass" type="password">'
        "<button>Sign in</button></form>\n</body>\n</html>\n"
    )

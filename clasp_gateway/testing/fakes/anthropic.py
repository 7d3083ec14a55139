"""Anthropic's Messages API as a fake upstream: flavor ``"anthropic"``.

- ``POST /v1/messages`` (the query string, e.g. ``?beta=true``, is ignored as by
  the real API) with ``x-api-key`` (or ``Authorization: Bearer``) and a required
  ``anthropic-version`` header; ``anthropic-beta`` is recorded as sent.
- Requests are checked like the real API: ``max_tokens`` and ``messages`` are
  required, roles are ``user``/``assistant``, and a ``thinking`` block replayed in
  history must carry a ``signature`` this server issued (a 400
  ``Invalid `signature` in `thinking` block`` otherwise), which is what breaks
  when a gateway rewrites or invents thinking history.
- Answers: ``thinking`` blocks (for :class:`Reasoning`) closed by a
  ``signature_delta``, ``text`` blocks, ``tool_use`` blocks (``toolu_01...`` ids,
  ``input_json_delta`` pieces), ``message_delta`` with ``stop_reason`` and usage,
  ``message_stop``; ``event: NAME`` lines, a ``ping`` after ``message_start``.
  Non-stream answers are the whole ``message`` object.
- Errors: ``{"type": "error", "error": {"type", "message"}, "request_id"}`` with
  ``request-id``, ``anthropic-ratelimit-*`` and (429/529) ``retry-after`` headers.
"""

from __future__ import annotations

import base64
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from .flavors import FlavorSpec, register_flavor
from .record import Recorded
from .replies import Error, Reply
from .wire import _ALNUM, Ctx, Turn, Wire, _rand

__all__ = ["AnthropicWire", "issued_signatures"]

_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error",
}
_STOP = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}

_ISSUED: set[str] = set()
_LOCK = threading.Lock()


def issued_signatures() -> set[str]:
    """Thinking signatures issued by any fake Anthropic in this process."""
    with _LOCK:
        return set(_ISSUED)


def anthropic_error(status: int, message: str, request_id: str = "req_011CfakeRequest") -> dict[str, Any]:
    """Anthropic's error body."""
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message},
            "request_id": request_id}


class AnthropicWire(Wire):
    """Messages API answers and SSE streams."""

    name = "anthropic"
    default_model = "claude-sonnet-4-5-20250929"
    stream_content_type = "text/event-stream; charset=utf-8"
    terminator = None
    text_piece = 6

    def call_id(self, rng: Any) -> str:
        return "toolu_01" + _rand(rng, _ALNUM, 22)

    def signature(self, ctx: Ctx) -> str:
        sig = base64.b64encode(bytes(ctx.rng.getrandbits(8) for _ in range(96))).decode()
        with _LOCK:
            _ISSUED.add(sig)
        return sig

    def event(self, obj: Any) -> bytes:
        return b"event: " + obj["type"].encode() + b"\ndata: " + self.encode(obj) + b"\n\n"

    def malformed_event(self, turn: Turn, ctx: Ctx) -> bytes:
        payload = self.encode(self.chunks(turn, ctx)[-2])
        return b"event: message_delta\ndata: " + payload[: max(1, len(payload) // 2)] + b"\n\n"

    def _message_id(self, ctx: Ctx) -> str:
        return "msg_01" + _rand(ctx.rng, _ALNUM, 22)

    def usage(self, turn: Turn, output: int | None = None) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "input_tokens": turn.prompt_tokens - turn.cache_read - turn.cache_write,
            "cache_creation_input_tokens": turn.cache_write,
            "cache_read_input_tokens": turn.cache_read,
            "output_tokens": turn.completion_tokens if output is None else output,
            "service_tier": "standard",
        }
        if turn.cache_write:
            usage["cache_creation"] = {"ephemeral_5m_input_tokens": turn.cache_write, "ephemeral_1h_input_tokens": 0}
        return usage

    def _blocks(self, turn: Turn, ctx: Ctx) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if turn.reasoning is not None:
            blocks.append({"type": "thinking", "thinking": turn.reasoning, "signature": self.signature(ctx)})
        if turn.content:
            blocks.append({"type": "text", "text": turn.content})
        for call in turn.calls:
            blocks.append({"type": "tool_use", "id": call.id, "name": call.name,
                           "input": call.parsed if isinstance(call.parsed, dict) else {}})
        return blocks

    def completion(self, turn: Turn, ctx: Ctx) -> dict[str, Any]:
        return {
            "id": self._message_id(ctx), "type": "message", "role": "assistant", "model": self.response_model(ctx),
            "content": self._blocks(turn, ctx), "stop_reason": _STOP.get(turn.finish_reason, "end_turn"),
            "stop_sequence": None, "usage": self.usage(turn),
        }

    def chunks(self, turn: Turn, ctx: Ctx) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [
            {"type": "message_start", "message": {
                "id": self._message_id(ctx), "type": "message", "role": "assistant", "model": self.response_model(ctx),
                "content": [], "stop_reason": None, "stop_sequence": None, "usage": self.usage(turn, output=1)}},
            {"type": "ping"},
        ]
        index = 0

        def delta(kind: str, **fields: Any) -> dict[str, Any]:
            return {"type": "content_block_delta", "index": index, "delta": {"type": kind, **fields}}

        if turn.reasoning is not None:
            out.append({"type": "content_block_start", "index": index,
                        "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
            out += [delta("thinking_delta", thinking=p) for p in turn.reasoning_pieces]
            out.append(delta("signature_delta", signature=self.signature(ctx)))
            out.append({"type": "content_block_stop", "index": index})
            index += 1
        if turn.content:
            out.append({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
            out += [delta("text_delta", text=p) for p in turn.text_pieces]
            out.append({"type": "content_block_stop", "index": index})
            index += 1
        for call, pieces in zip(turn.calls, turn.call_pieces, strict=True):
            out.append({"type": "content_block_start", "index": index,
                        "content_block": {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}})
            out.append(delta("input_json_delta", partial_json=""))
            out += [delta("input_json_delta", partial_json=p) for p in pieces]
            out.append({"type": "content_block_stop", "index": index})
            index += 1
        out.append({"type": "message_delta",
                    "delta": {"stop_reason": _STOP.get(turn.finish_reason, "end_turn"), "stop_sequence": None},
                    "usage": {"output_tokens": turn.completion_tokens}})
        out.append({"type": "message_stop"})
        return out

    def error(self, status: int, ctx: Ctx) -> dict | str:
        messages = {
            400: "messages: at least one message is required",
            404: f"model: {ctx.model or self.default_model}",
            413: "Request exceeds the maximum allowed number of bytes.",
            429: "This request would exceed the rate limit for your organization of 50 requests per minute.",
            500: "Internal server error",
            529: "Overloaded",
        }
        return anthropic_error(status, messages.get(status, "Error"), self.request_id(ctx))

    def error_headers(self, status: int, ctx: Ctx) -> dict[str, str]:
        """Anthropic says when to retry a 429 or a 529."""
        return {"retry-after": "9", "anthropic-ratelimit-requests-remaining": "0"} if status in (429, 529) else {}

    def request_id(self, ctx: Ctx) -> str:
        return "req_011C" + _rand(ctx.rng, _ALNUM, 20)

    def headers(self, ctx: Ctx) -> dict[str, str]:
        reset = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "request-id": self.request_id(ctx),
            "anthropic-organization-id": "00000000-0000-4000-8000-000000000000",
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": reset,
            "anthropic-ratelimit-input-tokens-limit": "30000",
            "anthropic-ratelimit-input-tokens-remaining": "29000",
            "anthropic-ratelimit-input-tokens-reset": reset,
            "anthropic-ratelimit-output-tokens-limit": "8000",
            "anthropic-ratelimit-output-tokens-remaining": "8000",
            "anthropic-ratelimit-output-tokens-reset": reset,
        }


# --- requests -------------------------------------------------------------------------


def _invalid(message: str) -> Error:
    return Error(400, body=anthropic_error(400, message))


def _check(rec: Recorded, ctx: Ctx) -> Reply | None:
    if not rec.headers.get("anthropic-version"):
        return _invalid("anthropic-version: header is required")
    body = rec.json
    if not isinstance(body.get("max_tokens"), int):
        return _invalid("max_tokens: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _invalid("messages: at least one message is required")
    issued = issued_signatures()
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            return _invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = msg.get("content")
        for j, block in enumerate(content if isinstance(content, list) else ()):
            if isinstance(block, dict) and block.get("type") == "thinking" and block.get("signature") not in issued:
                return _invalid(f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block")
    return None


def _credential(rec: Recorded) -> str | None:
    return rec.headers.get("x-api-key") or rec.bearer


def _unauthorized(rec: Recorded, given: str | None) -> tuple[int, Any]:
    return 401, anthropic_error(401, "invalid x-api-key" if given else "x-api-key header is required")


register_flavor(FlavorSpec(
    name="anthropic", wire=AnthropicWire,
    route=lambda method, path: "chat" if (method, path) == ("POST", "/v1/messages") else None,
    credential=_credential, unauthorized=_unauthorized, models=("claude-sonnet-4-5-20250929",), check=_check,
    not_found=lambda rec: (404, anthropic_error(404, "Not found")),
))

"""Cohere's v2 Chat API as a fake upstream: flavor ``"cohere"``.

- ``POST /v2/chat`` with ``Authorization: Bearer``; errors are
  ``{"id": "<uuid>", "message": "..."}`` (``invalid api token``, ``no api key
  supplied``, ``invalid request: ...``, trial-key 429s), with the trial rate-limit
  headers Cohere sends.
- Requests are checked like the real API: top-level keys outside v2's set are a
  400 (``stream_options``, ``user`` and other OpenAI-only keys), roles must be
  ``system``/``user``/``assistant``/``tool``, every ``tool`` message must answer a
  ``tool_calls`` id of the assistant message before it, tools must be
  ``{"type": "function", "function": {...}}``.
- Non-stream answers: ``message.content`` as ``[{"type": "text", "text"}]``,
  ``tool_plan``, ``tool_calls`` with ids like ``get_weather_k4x9...``,
  ``finish_reason`` ``COMPLETE``/``TOOL_CALL``/``MAX_TOKENS``, ``usage`` with
  ``billed_units`` and ``tokens``.
- Streams: SSE with ``event:`` lines, typed JSON events and no terminator::

      message-start  (content-start content-delta* content-end)
      tool-plan-delta*  (tool-call-start tool-call-delta* tool-call-end)*  message-end

  A :class:`Reasoning` reply streams a ``thinking`` content block first (Command A
  Reasoning's ``content.thinking`` deltas).
"""

from __future__ import annotations

import uuid
from typing import Any

from .flavors import FlavorSpec, register_flavor
from .record import Recorded
from .replies import Error, Reply
from .wire import Ctx, Turn, Wire, _rand

__all__ = ["CohereWire"]

_LOWER_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_V2_KEYS = frozenset(
    {
        "model", "messages", "tools", "documents", "citation_options", "response_format", "safety_mode",
        "max_tokens", "stop_sequences", "temperature", "seed", "frequency_penalty", "presence_penalty", "k", "p",
        "return_prompt", "logprobs", "tool_choice", "strict_tools", "stream", "thinking", "priority",
    }
)
_FINISH = {"stop": "COMPLETE", "tool_calls": "TOOL_CALL", "length": "MAX_TOKENS"}


def _uuid(ctx: Ctx) -> str:
    return str(uuid.UUID(int=ctx.rng.getrandbits(128), version=4))


def cohere_error(ctx: Ctx | None, message: str) -> dict[str, Any]:
    """Cohere's error body."""
    ident = _uuid(ctx) if ctx is not None else str(uuid.uuid4())
    return {"id": ident, "message": message}


class CohereWire(Wire):
    """``/v2/chat`` answers and typed SSE streams."""

    name = "cohere"
    default_model = "command-a-03-2025"
    stream_content_type = "text/event-stream"
    terminator = None
    text_piece = 5

    def call_id(self, rng: Any) -> str:
        return "tool_" + _rand(rng, _LOWER_ALNUM, 12)

    def turn(self, reply: Any, ctx: Ctx) -> Turn:
        turn = super().turn(reply, ctx)
        for call in turn.calls:  # Cohere names its call ids after the tool
            call.id = f"{call.name}_{call.id[5:]}"
        return turn

    def event(self, obj: Any) -> bytes:
        return b"event: " + obj["type"].encode() + b"\ndata: " + self.encode(obj) + b"\n\n"

    def malformed_event(self, turn: Turn, ctx: Ctx) -> bytes:
        payload = self.encode(self.chunks(turn, ctx)[-1])
        return b"event: message-end\ndata: " + payload[: max(1, len(payload) // 2)] + b"\n\n"

    def usage(self, turn: Turn) -> dict[str, Any]:
        return {
            "billed_units": {"input_tokens": turn.prompt_tokens, "output_tokens": turn.completion_tokens},
            "tokens": {"input_tokens": turn.prompt_tokens + 7, "output_tokens": turn.completion_tokens},
        }

    def _tool_calls(self, turn: Turn) -> list[dict[str, Any]]:
        return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in turn.calls]

    def completion(self, turn: Turn, ctx: Ctx) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant"}
        if turn.calls:
            message["tool_plan"] = turn.content or "I will use the tools."
            message["tool_calls"] = self._tool_calls(turn)
        else:
            content: list[dict[str, Any]] = []
            if turn.reasoning:
                content.append({"type": "thinking", "thinking": turn.reasoning})
            content.append({"type": "text", "text": turn.content or ""})
            message["content"] = content
        return {
            "id": _uuid(ctx),
            "message": message,
            "finish_reason": _FINISH.get(turn.finish_reason, "COMPLETE"),
            "usage": self.usage(turn),
        }

    def chunks(self, turn: Turn, ctx: Ctx) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{
            "id": _uuid(ctx), "type": "message-start",
            "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}},
        }]
        if turn.calls:
            out += [{"type": "tool-plan-delta", "delta": {"message": {"tool_plan": p}}} for p in turn.text_pieces]
            for i, (call, pieces) in enumerate(zip(turn.calls, turn.call_pieces, strict=True)):
                out.append({"type": "tool-call-start", "index": i, "delta": {"message": {"tool_calls": {
                    "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}}}})
                out += [{"type": "tool-call-delta", "index": i,
                         "delta": {"message": {"tool_calls": {"function": {"arguments": p}}}}} for p in pieces]
                out.append({"type": "tool-call-end", "index": i})
        else:
            index = 0
            if turn.reasoning is not None:
                out.append({"type": "content-start", "index": 0,
                            "delta": {"message": {"content": {"type": "thinking", "thinking": ""}}}})
                out += [{"type": "content-delta", "index": 0,
                         "delta": {"message": {"content": {"thinking": p}}}} for p in turn.reasoning_pieces]
                out.append({"type": "content-end", "index": 0})
                index = 1
            out.append({"type": "content-start", "index": index,
                        "delta": {"message": {"content": {"type": "text", "text": ""}}}})
            out += [{"type": "content-delta", "index": index, "delta": {"message": {"content": {"text": p}}}}
                    for p in turn.text_pieces]
            out.append({"type": "content-end", "index": index})
        out.append({"type": "message-end", "delta": {
            "finish_reason": _FINISH.get(turn.finish_reason, "COMPLETE"), "usage": self.usage(turn)}})
        return out

    def error(self, status: int, ctx: Ctx) -> dict | str:
        model = ctx.model or self.default_model
        messages = {
            400: "invalid request: the request could not be processed.",
            404: f"model '{model}' not found, make sure the correct model ID was used and that you have access "
                 "to the model.",
            429: "You are using a Trial key, which is limited to 10 API calls / minute. You can continue to use the "
                 "Trial key for free or upgrade to a Production key with higher rate limits at "
                 "'https://dashboard.cohere.com/api-keys'. Contact us on 'https://discord.gg/XW44jPfYJu' or email us "
                 "at support@cohere.com with any questions",
            500: "internal server error, this has been reported to our developers",
            503: "service unavailable, please try again later",
        }
        return cohere_error(ctx, messages.get(status, "unknown error"))

    def headers(self, ctx: Ctx) -> dict[str, str]:
        return {
            "x-trial-endpoint-call-limit": "10",
            "x-trial-endpoint-call-remaining": str(ctx.rng.randint(1, 9)),
            "x-debug-trace-id": "".join(ctx.rng.choices("0123456789abcdef", k=32)),
            "num_tokens": str(ctx.rng.randint(10, 999)),
        }


# --- requests -------------------------------------------------------------------------


def _invalid(message: str) -> Error:
    return Error(400, body=cohere_error(None, f"invalid request: {message}"))


def _check(rec: Recorded, ctx: Ctx) -> Reply | None:
    body = rec.json
    for key in body:
        if key not in _V2_KEYS:
            return _invalid(f"unknown field: parameter {key} is not a valid field")
    if not isinstance(body.get("model"), str):
        return _invalid("model must be a string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _invalid("messages must not be empty")
    open_calls: set[Any] = set()
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in ("system", "user", "assistant", "tool"):
            return _invalid(f"messages[{i}].role: invalid role {role!r}")
        if role == "assistant":
            open_calls = {c.get("id") for c in msg.get("tool_calls") or () if isinstance(c, dict)}
        elif role == "tool":
            call_id = msg.get("tool_call_id")
            if call_id not in open_calls:
                return _invalid(f"messages[{i}]: tool_call_id {call_id!r} does not match a tool call of the "
                                "previous assistant message")
            if msg.get("content") in (None, "", []):
                return _invalid(f"messages[{i}].content: tool message content must not be empty")
        elif role == "user":
            open_calls = set()
    for i, tool in enumerate(body.get("tools") or ()):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict) or not fn.get("name"):
            return _invalid(f"tools[{i}]: expected {{\"type\": \"function\", \"function\": {{\"name\", ...}}}}")
    return None


def _unauthorized(rec: Recorded, given: str | None) -> tuple[int, Any]:
    return 401, cohere_error(None, "invalid api token" if given else "no api key supplied")


register_flavor(FlavorSpec(
    name="cohere", wire=CohereWire,
    route=lambda method, path: "chat" if (method, path) == ("POST", "/v2/chat") else None,
    credential=lambda rec: rec.bearer, unauthorized=_unauthorized, models=("command-a-03-2025",), check=_check,
    not_found=lambda rec: (404, cohere_error(None, f"404 page not found: {rec.path}")),
))

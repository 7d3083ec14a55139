"""AI21 Studio's Jamba chat API as a fake upstream: flavor ``"ai21"``.

The wire as AI21 documents and answers it (docs.ai21.com, "Chat request" / "Chat
response", and captured answers of ``jamba-1.5-large``), and as LiteLLM 1.110.2
sends it (``litellm/llms/ai21/chat``: an OpenAI-like config, sent by the openai SDK):

- ``POST /studio/v1/chat/completions`` (``FakeUpstream.base_url`` is
  ``http://127.0.0.1:PORT/studio/v1``, what ``api_base`` is set to) with
  ``Authorization: Bearer <key>``. A missing or wrong key: ``401
  {"detail": "Forbidden: Bad or missing API token."}``. Other errors are FastAPI's
  ``{"detail": "..."}`` (``422`` with the list of validation problems).
- Requests are checked for top-level keys outside the documented set (``model``,
  ``messages``, ``tools``, ``documents``, ``response_format``, ``max_tokens``,
  ``temperature``, ``top_p``, ``stop``, ``n``, ``stream``, ``seed``,
  ``tool_choice``): a ``422`` naming them, so a test sees any client field that
  leaks through the gateway and LiteLLM (stricter than the API may be; what the
  gateway sends must pass it).
- A non-streamed answer: ``{"id": "chat-<32 hex>", "choices": [{"index": 0,
  "message": {"role": "assistant", "content": ..., "tool_calls": null | [...]},
  "logprobs": null, "finish_reason": ...}], "usage": {"prompt_tokens",
  "completion_tokens", "total_tokens"}, "meta": {"requestDurationMillis": N}}``:
  no ``object``, ``created`` or ``model``; tool calls are ``{"id", "type":
  "function", "function": {"name", "arguments": "<JSON text>"}}``.
- A stream: SSE ``data:`` chunks ``{"id", "choices": [{"index": 0, "delta",
  "logprobs": null, "finish_reason"}], "usage": null}``: first ``{"role":
  "assistant"}``, then one ``{"content": token}`` per token, then a chunk with the
  ``finish_reason``, an empty delta and the usage (the only one with usage), then
  ``data: [DONE]``. AI21 documents no streamed tool-call deltas: tool calls come
  whole in one delta (id, name and complete arguments), as Mistral and Ollama send
  theirs.
"""

from __future__ import annotations

from typing import Any

from .flavors import FlavorSpec, register_flavor
from .record import Recorded
from .replies import Error, Reply
from .wire import Ctx, OpenAIWire, Turn, _rand

__all__ = ["AI21Wire", "ai21_error"]

_HEX = "0123456789abcdef"
_CHAT_KEYS = frozenset({
    "model", "messages", "tools", "documents", "response_format", "max_tokens", "temperature", "top_p", "stop", "n",
    "stream", "seed", "tool_choice",
})
BAD_TOKEN = "Forbidden: Bad or missing API token."


def ai21_error(detail: Any) -> dict[str, Any]:
    """AI21's (FastAPI's) error body."""
    return {"detail": detail}


class AI21Wire(OpenAIWire):
    """api.ai21.com/studio/v1 chat completions (Jamba)."""

    name = "ai21"
    default_model = "jamba-large-1.7"
    text_piece = 3

    def completion_id(self, ctx: Ctx) -> str:
        return "chat-" + _rand(ctx.rng, _HEX, 32)

    def call_id(self, rng: Any) -> str:
        return "call_" + _rand(rng, _HEX, 24)

    def usage(self, turn: Turn) -> dict:
        return {"prompt_tokens": turn.prompt_tokens, "completion_tokens": turn.completion_tokens,
                "total_tokens": turn.prompt_tokens + turn.completion_tokens}

    def message(self, turn: Turn) -> dict:
        calls = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                 for c in turn.calls]
        return {"role": "assistant", "content": turn.content or "", "tool_calls": calls or None}

    def completion(self, turn: Turn, ctx: Ctx) -> dict:
        return {
            "id": self.completion_id(ctx),
            "choices": [{"index": 0, "message": self.message(turn), "logprobs": None,
                         "finish_reason": turn.finish_reason}],
            "usage": self.usage(turn),
            "meta": {"requestDurationMillis": ctx.rng.randint(200, 2000)},
        }

    def chunks(self, turn: Turn, ctx: Ctx) -> list[dict]:
        ident = self.completion_id(ctx)

        def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> dict:
            return {"id": ident, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                    "usage": usage}

        out = [chunk({"role": "assistant"})]
        out += [chunk({"content": p}) for p in turn.text_pieces]
        if turn.calls:
            out.append(chunk({"tool_calls": [
                {"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for i, c in enumerate(turn.calls)]}))
        out.append(chunk({}, turn.finish_reason, self.usage(turn)))
        return out

    def events(self, turn: Turn, ctx: Ctx) -> list[bytes]:
        return [self.event(c) for c in self.chunks(turn, ctx)]

    def error(self, status: int, ctx: Ctx) -> dict | str:
        details = {
            400: "Bad request",
            401: BAD_TOKEN,
            403: "Forbidden",
            404: "Not Found",
            422: [{"loc": ["body"], "msg": "Invalid request", "type": "value_error"}],
            429: "Too many requests",
            500: "Internal server error",
            503: "Service Unavailable",
        }
        return ai21_error(details.get(status, "Error"))

    def headers(self, ctx: Ctx) -> dict[str, str]:
        return {"request-id": "-".join(_rand(ctx.rng, _HEX, n) for n in (8, 4, 4, 4, 12))}


def _check(rec: Recorded, ctx: Ctx) -> Reply | None:
    body = rec.json
    extra = sorted(k for k in body if k not in _CHAT_KEYS)
    if extra:
        return Error(422, body=ai21_error([{"loc": ["body", k], "msg": "extra fields not permitted",
                                            "type": "value_error.extra"} for k in extra]))
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return Error(422, body=ai21_error([{"loc": ["body", "messages"], "msg": "field required",
                                            "type": "value_error.missing"}]))
    return None


register_flavor(FlavorSpec(
    name="ai21", wire=AI21Wire,
    route=lambda method, path: "chat" if (method, path) == ("POST", "/studio/v1/chat/completions") else None,
    credential=lambda rec: rec.bearer,
    unauthorized=lambda rec, given: (401, ai21_error(BAD_TOKEN)),
    base_path="/studio/v1",
    models=("jamba-large-1.7", "jamba-mini-1.7", "jamba-1.5-large", "jamba-1.5-mini"),
    check=_check,
    not_found=lambda rec: (404, ai21_error("Not Found")),
))

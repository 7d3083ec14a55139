"""OpenAI-compatible providers with their own quirks, as fake upstreams.

Flavors (each the OpenAI chat wire of :class:`~clasp_gateway.testing.fakes.wire.OpenAIWire` plus
what the real service does differently):

- ``"deepseek"``: ``/chat/completions`` and ``/v1/chat/completions``;
  ``reasoning_content`` deltas for :class:`Reasoning`; a 400 when an assistant
  message in the history carries ``reasoning_content`` (DeepSeek documents it);
  ``call_00_`` tool ids; ``prompt_cache_hit_tokens``/``prompt_cache_miss_tokens``
  usage; a ``: keep-alive`` comment before the first event; 401/402 bodies.
- ``"mistral"``: ``/v1/chat/completions``; refuses (400, code ``3280``) tool-call
  ids that are not exactly 9 of ``[a-zA-Z0-9]`` and (422, ``extra_forbidden``)
  top-level keys outside its API (``user``, ``stream_options``...); sends tool
  calls whole in one delta with 9-character ids and usage on the last chunk
  without being asked; ``{"object": "error", ...}`` errors.
- ``"groq"``: ``/openai/v1/chat/completions``; ``x_groq`` on the first chunk (id)
  and on the finish chunk (usage, with Groq's timing fields); the
  ``include_usage`` chunk; ``x-ratelimit-*`` headers with ``2m59.56s``-style
  resets and ``retry-after`` on 429.
- ``"vllm"``: a self-hosted vLLM server (``/v1/chat/completions``, no key unless
  ``require_key``); ``chatcmpl-tool-<hex>`` ids, ``stop_reason``/``prompt_logprobs``
  fields, ``{"object": "error", "type": "BadRequestError", "code": 400}`` errors.
"""

from __future__ import annotations

import re
from typing import Any

from .flavors import FlavorSpec, register_flavor
from .record import Recorded
from .replies import Error, Reply
from .wire import _ALNUM, Ctx, OpenAIWire, Turn, _rand

__all__ = ["DeepSeekWire", "GroqWire", "MistralWire", "VLLMWire"]


def _openai_routes(*paths: str) -> Any:
    def route(method: str, path: str) -> str | None:
        if method == "POST" and path in paths:
            return "chat"
        if method == "GET" and path.endswith("/models"):
            return "models"
        return None

    return route


def _models(route: str, models: list[str]) -> tuple[int, Any]:
    return 200, {"object": "list", "data": [{"id": m, "object": "model", "created": 1715367049, "owned_by": "system"}
                                            for m in models]}


# --------------------------------------------------------------------------------------
# DeepSeek
# --------------------------------------------------------------------------------------

REASONING_HISTORY_MESSAGE = (
    "The `reasoning_content` field is an intermediate result for display purposes only and must not be sent back: "
    "if the reasoning_content field is included in the sequence of input messages, the API returns a 400 error. "
    "Please remove the reasoning_content from your input messages."
)


class DeepSeekWire(OpenAIWire):
    """api.deepseek.com."""

    name = "deepseek"
    default_model = "deepseek-reasoner"

    def call_id(self, rng: Any) -> str:
        return "call_00_" + _rand(rng, _ALNUM, 24)

    def usage(self, turn: Turn) -> dict:
        usage = super().usage(turn)
        usage["prompt_cache_hit_tokens"] = turn.cache_read
        usage["prompt_cache_miss_tokens"] = turn.prompt_tokens - turn.cache_read
        usage.pop("prompt_tokens_details", None)
        usage["completion_tokens_details"] = {"reasoning_tokens": turn.reasoning_tokens}
        return usage

    def events(self, turn: Turn, ctx: Ctx) -> list[bytes]:
        # DeepSeek keeps slow connections open with SSE comments.
        events = [self.event(c) for c in self.chunks(turn, ctx)]
        return [b": keep-alive\n\n" + events[0], *events[1:]]

    def error(self, status: int, ctx: Ctx) -> dict | str:
        messages = {
            400: ("Invalid request body format.", "invalid_request_error"),
            401: ("Authentication Fails, Your api key: ****1234 is invalid", "authentication_error"),
            402: ("Insufficient Balance", "unknown_error"),
            422: ("Invalid parameters.", "invalid_request_error"),
            429: ("Rate Limit Reached", "rate_limit_error"),
            500: ("Internal Server Error", "api_error"),
            503: ("Server overloaded, please try again later.", "api_error"),
        }
        message, kind = messages.get(status, ("Error", "api_error"))
        return {"error": {"message": message, "type": kind, "param": None, "code": "invalid_request_error"}}

    def headers(self, ctx: Ctx) -> dict[str, str]:
        return {"x-ds-trace-id": _rand(ctx.rng, "0123456789abcdef", 32)}


def _deepseek_check(rec: Recorded, ctx: Ctx) -> Reply | None:
    for msg in rec.json.get("messages") or ():
        if isinstance(msg, dict) and msg.get("role") == "assistant" and "reasoning_content" in msg:
            return Error(400, body={"error": {"message": REASONING_HISTORY_MESSAGE, "type": "invalid_request_error",
                                              "param": None, "code": "invalid_request_error"}})
    return None


def _bearer_401(wire: OpenAIWire) -> Any:
    def unauthorized(rec: Recorded, given: str | None) -> tuple[int, Any]:
        if not given and isinstance(wire, OpenAIWire):
            return 401, wire.missing_key_error()
        return 401, wire.error(401, Ctx("", [], False, False, __import__("random").Random(0)))

    return unauthorized


register_flavor(FlavorSpec(
    name="deepseek", wire=DeepSeekWire, route=_openai_routes("/chat/completions", "/v1/chat/completions"),
    credential=lambda rec: rec.bearer, unauthorized=_bearer_401(DeepSeekWire()),
    models=("deepseek-chat", "deepseek-reasoner"), check=_deepseek_check, info=_models,
))


# --------------------------------------------------------------------------------------
# Mistral
# --------------------------------------------------------------------------------------

_MISTRAL_KEYS = frozenset(
    {
        "model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop", "random_seed",
        "response_format", "tools", "tool_choice", "presence_penalty", "frequency_penalty", "n", "prediction",
        "parallel_tool_calls", "prompt_mode", "safe_prompt", "reasoning_effort",
    }
)
_MISTRAL_ID = re.compile(r"^[a-zA-Z0-9]{9}$")


def mistral_error(message: Any, kind: str, code: str | None, status: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"object": "error", "message": message, "type": kind, "param": None, "code": code}
    if status is not None:
        body["raw_status_code"] = status
    return body


class MistralWire(OpenAIWire):
    """api.mistral.ai."""

    name = "mistral"
    default_model = "mistral-large-latest"

    def call_id(self, rng: Any) -> str:
        return _rand(rng, _ALNUM, 9)

    def usage(self, turn: Turn) -> dict:
        return {"prompt_tokens": turn.prompt_tokens, "total_tokens": turn.prompt_tokens + turn.completion_tokens,
                "completion_tokens": turn.completion_tokens}

    def call_deltas(self, turn: Turn) -> list[dict]:
        # Mistral sends each call whole: id, name and complete arguments at once.
        return [{"id": c.id, "function": {"name": c.name, "arguments": c.arguments}, "index": i}
                for i, c in enumerate(turn.calls)]

    def deltas(self, turn: Turn) -> Any:
        if turn.calls:
            yield {"role": "assistant", "content": turn.content or ""}
            yield {"tool_calls": self.call_deltas(turn)}
            return
        yield from super().deltas(turn)

    def chunks(self, turn: Turn, ctx: Ctx) -> list[dict]:
        head = {"id": _rand(ctx.rng, "0123456789abcdef", 32), "object": "chat.completion.chunk",
                "created": 1750000000, "model": self.response_model(ctx)}
        out = [{**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in self.deltas(turn)]
        # Usage always rides on the last chunk, with the finish reason.
        out.append({**head, "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": turn.finish_reason}],
                    "usage": self.usage(turn)})
        return out

    def events(self, turn: Turn, ctx: Ctx) -> list[bytes]:
        return [self.event(c) for c in self.chunks(turn, ctx)]

    def completion(self, turn: Turn, ctx: Ctx) -> dict:
        body = super().completion(turn, ctx)
        for key in ("service_tier", "system_fingerprint"):
            body.pop(key, None)
        msg = body["choices"][0]["message"]
        for key in ("refusal", "annotations"):
            msg.pop(key, None)
        msg["prefix"] = False
        return body

    def error(self, status: int, ctx: Ctx) -> dict | str:
        if status == 401:
            return {"message": "Unauthorized", "request_id": _rand(ctx.rng, "0123456789abcdef", 32)}
        messages = {
            400: ("Invalid model: " + (ctx.model or self.default_model), "invalid_model", "1500"),
            429: ("Requests rate limit exceeded", "rate_limited", "1300"),
            500: ("Internal server error", "internal_server_error", None),
            503: ("Service unavailable", "service_unavailable", None),
        }
        message, kind, code = messages.get(status, ("Error", "invalid_request_error", None))
        return mistral_error(message, kind, code, status)

    def headers(self, ctx: Ctx) -> dict[str, str]:
        return {
            "mistral-correlation-id": _rand(ctx.rng, "0123456789abcdef", 32),
            "x-ratelimitbysize-limit-minute": "500000",
            "x-ratelimitbysize-remaining-minute": str(ctx.rng.randint(1000, 499999)),
            "x-ratelimitbysize-limit-month": "1000000000",
        }


def _mistral_check(rec: Recorded, ctx: Ctx) -> Reply | None:
    body = rec.json
    extra = [k for k in body if k not in _MISTRAL_KEYS]
    if extra:
        detail = [{"type": "extra_forbidden", "loc": ["body", k], "msg": "Extra inputs are not permitted",
                   "input": body[k]} for k in extra]
        return Error(422, body=mistral_error({"detail": detail}, "invalid_request_error", None))
    for msg in body.get("messages") or ():
        if not isinstance(msg, dict):
            continue
        ids = [c.get("id") for c in msg.get("tool_calls") or () if isinstance(c, dict)]
        if msg.get("role") == "tool":
            ids.append(msg.get("tool_call_id"))
        for ident in ids:
            if not isinstance(ident, str) or not _MISTRAL_ID.match(ident):
                return Error(400, body=mistral_error(
                    f"Tool call id was {ident} but must be a-z, A-Z, 0-9, with a length of 9.",
                    "invalid_function_call", "3280", 400))
    return None


register_flavor(FlavorSpec(
    name="mistral", wire=MistralWire, route=_openai_routes("/v1/chat/completions"),
    credential=lambda rec: rec.bearer,
    unauthorized=lambda rec, given: (401, {"message": "Unauthorized", "request_id": "0" * 32}),
    base_path="/v1", models=("mistral-large-latest", "devstral-medium-latest"), check=_mistral_check, info=_models,
))


# --------------------------------------------------------------------------------------
# Groq
# --------------------------------------------------------------------------------------


class GroqWire(OpenAIWire):
    """api.groq.com/openai/v1."""

    name = "groq"
    default_model = "llama-3.3-70b-versatile"

    def groq_usage(self, turn: Turn) -> dict:
        return {
            "queue_time": 0.019, "prompt_tokens": turn.prompt_tokens, "prompt_time": 0.004,
            "completion_tokens": turn.completion_tokens, "completion_time": 0.033,
            "total_tokens": turn.prompt_tokens + turn.completion_tokens, "total_time": 0.037,
        }

    def chunks(self, turn: Turn, ctx: Ctx) -> list[dict]:
        out = super().chunks(turn, ctx)
        request_id = "req_" + _rand(ctx.rng, "0123456789abcdefghjkmnpqrstvwxyz", 26)
        for chunk in out:
            chunk.pop("service_tier", None)
        out[0]["x_groq"] = {"id": request_id}
        finish = next(c for c in out if c.get("choices") and c["choices"][0]["finish_reason"])
        finish["x_groq"] = {"id": request_id, "usage": self.groq_usage(turn)}
        if ctx.include_usage:
            out[-1]["x_groq"] = {"id": request_id, "usage": self.groq_usage(turn)}
        return out

    def events(self, turn: Turn, ctx: Ctx) -> list[bytes]:
        return [self.event(c) for c in self.chunks(turn, ctx)]

    def error(self, status: int, ctx: Ctx) -> dict | str:
        model = ctx.model or self.default_model
        messages = {
            400: ("Failed to call a function. Please adjust your prompt. See 'failed_generation' for more details.",
                  "invalid_request_error", "tool_use_failed"),
            401: ("Invalid API Key", "invalid_request_error", "invalid_api_key"),
            404: (f"The model `{model}` does not exist or you do not have access to it.", "invalid_request_error",
                  "model_not_found"),
            413: ("Request too large for model", "tokens", "rate_limit_exceeded"),
            429: (f"Rate limit reached for model `{model}` in organization `org_01fake` service tier `on_demand` on "
                  "tokens per minute (TPM): Limit 6000, Used 5800, Requested 900. Please try again in 7.66s. Need more "
                  "tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing",
                  "tokens", "rate_limit_exceeded"),
            500: ("Internal Server Error", "internal_server_error", None),
            503: ("Service Unavailable", "internal_server_error", "service_unavailable"),
        }
        message, kind, code = messages.get(status, ("Error", "invalid_request_error", None))
        return {"error": {"message": message, "type": kind, "code": code}}

    def error_headers(self, status: int, ctx: Ctx) -> dict[str, str]:
        """Groq's 429 says when to retry, and which limit ran out."""
        if status != 429:
            return {}
        return {"retry-after": "7", "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "7.66s"}

    def headers(self, ctx: Ctx) -> dict[str, str]:
        return {
            "x-groq-region": "us-east-1",
            "x-request-id": "req_" + _rand(ctx.rng, "0123456789abcdefghjkmnpqrstvwxyz", 26),
            "x-ratelimit-limit-requests": "1000",
            "x-ratelimit-limit-tokens": "6000",
            "x-ratelimit-remaining-requests": "999",
            "x-ratelimit-remaining-tokens": "5800",
            "x-ratelimit-reset-requests": "2m59.56s",
            "x-ratelimit-reset-tokens": "7.66s",
        }


register_flavor(FlavorSpec(
    name="groq", wire=GroqWire, route=_openai_routes("/openai/v1/chat/completions"),
    credential=lambda rec: rec.bearer,
    unauthorized=lambda rec, given: (401, {"error": {"message": "Invalid API Key", "type": "invalid_request_error",
                                                     "code": "invalid_api_key"}}),
    base_path="/openai/v1", models=("llama-3.3-70b-versatile", "openai/gpt-oss-120b"), info=_models,
))


# --------------------------------------------------------------------------------------
# vLLM (a generic self-hosted OpenAI-compatible server)
# --------------------------------------------------------------------------------------


class VLLMWire(OpenAIWire):
    """``vllm serve`` with ``--enable-auto-tool-choice``."""

    name = "vllm"
    default_model = "Qwen/Qwen2.5-Coder-32B-Instruct"

    def call_id(self, rng: Any) -> str:
        return "chatcmpl-tool-" + _rand(rng, "0123456789abcdef", 32)

    def completion(self, turn: Turn, ctx: Ctx) -> dict:
        body = super().completion(turn, ctx)
        body.pop("service_tier", None)
        body["system_fingerprint"] = None
        body["prompt_logprobs"] = None
        body["kv_transfer_params"] = None
        body["choices"][0]["stop_reason"] = None
        body["usage"]["prompt_tokens_details"] = None
        return body

    def chunks(self, turn: Turn, ctx: Ctx) -> list[dict]:
        out = super().chunks(turn, ctx)
        for chunk in out:
            chunk.pop("service_tier", None)
            chunk.pop("system_fingerprint", None)
            for choice in chunk.get("choices") or ():
                choice["stop_reason"] = None
        return out

    def events(self, turn: Turn, ctx: Ctx) -> list[bytes]:
        return [self.event(c) for c in self.chunks(turn, ctx)]

    def error(self, status: int, ctx: Ctx) -> dict | str:
        kinds = {400: "BadRequestError", 401: "Unauthorized", 404: "NotFoundError", 500: "InternalServerError",
                 503: "ServiceUnavailableError"}
        message = f"The model `{ctx.model}` does not exist." if status == 404 else kinds.get(status, "Error")
        return {"object": "error", "message": message, "type": kinds.get(status, "BadRequestError"), "param": None,
                "code": status}


register_flavor(FlavorSpec(
    name="vllm", wire=VLLMWire, route=_openai_routes("/v1/chat/completions"), credential=lambda rec: rec.bearer,
    unauthorized=lambda rec, given: (401, {"error": "Unauthorized"}), base_path="/v1", requires_key=False,
    models=("Qwen/Qwen2.5-Coder-32B-Instruct",), info=_models,
))

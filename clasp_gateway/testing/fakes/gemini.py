"""Google AI Studio (Gemini API) as a fake upstream: flavor ``"gemini"``.

- ``POST /v1beta/models/{model}:generateContent`` (one JSON answer) and
  ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` (SSE, ``\\r\\n``
  line ends, no terminator: the stream ends after the chunk carrying
  ``finishReason`` and ``usageMetadata``). ``/v1alpha/`` is served the same way.
- The key travels in ``x-goog-api-key`` (or ``?key=``); none is a 403
  ``PERMISSION_DENIED``, a wrong one a 400 ``API_KEY_INVALID``, as Google answers.
- Requests are checked the way the real API checks them, so a gateway that sends
  what Gemini refuses fails here too: roles other than ``user``/``model``, function
  names outside ``^[a-zA-Z_][a-zA-Z0-9_.-]{0,63}$``, schema keywords outside
  Gemini's OpenAPI subset (``additionalProperties``, ``$schema``, ``$ref``,
  ``default``...), ``format`` other than ``enum``/``date-time`` on strings, an empty
  ``properties`` on an object, a function-response turn that does not answer every
  call of the turn before it, and, for ``gemini-3*`` models, a ``functionCall``
  replayed without the ``thoughtSignature`` this server issued for it.
- Answers: text parts, ``thought: true`` parts for :class:`Reasoning`, whole
  ``functionCall`` parts (several in one chunk for parallel calls) each with a
  base64 ``thoughtSignature`` that contains ``+`` and ``/``; errors are
  ``{"error": {"code", "message", "status", "details"}}`` with a ``RetryInfo`` on
  429 (Gemini sends no ``retry-after`` header).

:func:`openai_view` turns a Gemini request into the OpenAI-shaped body the e2e
scripts read.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from typing import Any
from urllib.parse import unquote

from .flavors import FlavorSpec, register_flavor
from .record import Recorded
from .replies import Error, Reply
from .wire import Ctx, Turn, Wire, _compact

__all__ = ["GeminiWire", "openai_view"]

_PATH = re.compile(r"^/(v1beta|v1alpha|v1)/models/([^/:]+):(generateContent|streamGenerateContent)$")
_FN_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.-]{0,63}$")
_SCHEMA_KEYS = frozenset(
    {
        "type", "format", "title", "description", "nullable", "enum", "items", "minItems", "maxItems",
        "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern",
        "minimum", "maximum", "anyOf", "propertyOrdering", "example",
    }
)
_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object", "null",
                    "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"})
_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
           500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_FINISH = {"stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}

# Signatures this process issued (any fake instance), to check they come back intact.
_ISSUED: set[str] = set()
_ISSUED_LOCK = threading.Lock()


def google_error(status: int, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Google's error body."""
    err: dict[str, Any] = {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}
    if details:
        err["details"] = details
    return {"error": err}


class GeminiWire(Wire):
    """``generateContent`` answers and ``alt=sse`` streams."""

    name = "gemini"
    default_model = "gemini-2.5-flash"
    stream_content_type = "text/event-stream"
    terminator = None

    def event(self, obj: Any) -> bytes:
        return b"data: " + self.encode(obj) + b"\r\n\r\n"

    def malformed_event(self, turn: Turn, ctx: Ctx) -> bytes:
        payload = self.encode(self.chunks(turn, ctx)[-1])
        return b"data: " + payload[: max(1, len(payload) // 2)] + b"\r\n\r\n"

    def signature(self, ctx: Ctx) -> str:
        """A thought signature: base64 that always holds ``+``, ``/`` and padding."""
        raw = bytes([0xFB, 0xFF]) + bytes(ctx.rng.getrandbits(8) for _ in range(40)) + b"\x3e\xff"
        sig = base64.b64encode(raw).decode()
        with _ISSUED_LOCK:
            _ISSUED.add(sig)
        return sig

    def usage(self, turn: Turn) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "promptTokenCount": turn.prompt_tokens,
            "candidatesTokenCount": turn.completion_tokens,
            "totalTokenCount": turn.prompt_tokens + turn.completion_tokens + turn.reasoning_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": turn.prompt_tokens}],
        }
        if turn.reasoning_tokens:
            usage["thoughtsTokenCount"] = turn.reasoning_tokens
        if turn.cache_read:  # implicit (or explicit) context caching
            usage["cachedContentTokenCount"] = turn.cache_read
            usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": turn.cache_read}]
        return usage

    def _call_parts(self, turn: Turn, ctx: Ctx) -> list[dict[str, Any]]:
        return [
            {"functionCall": {"name": c.name, "args": c.parsed if isinstance(c.parsed, dict) else {}},
             "thoughtSignature": self.signature(ctx)}
            for c in turn.calls
        ]

    def _candidate(self, parts: list[dict[str, Any]], finish: str | None) -> dict[str, Any]:
        cand: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            cand["finishReason"] = finish
        return cand

    def _head(self, ctx: Ctx) -> dict[str, Any]:
        return {"modelVersion": self.response_model(ctx), "responseId": "".join(ctx.rng.choices("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", k=22))}

    def completion(self, turn: Turn, ctx: Ctx) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        if turn.reasoning:
            parts.append({"text": turn.reasoning, "thought": True})
        if turn.content:
            parts.append({"text": turn.content})
        parts += self._call_parts(turn, ctx)
        return {
            "candidates": [self._candidate(parts, _FINISH.get(turn.finish_reason, "STOP"))],
            "usageMetadata": self.usage(turn),
            **self._head(ctx),
        }

    def chunks(self, turn: Turn, ctx: Ctx) -> list[dict[str, Any]]:
        head = self._head(ctx)
        running = {"promptTokenCount": turn.prompt_tokens, "totalTokenCount": turn.prompt_tokens,
                   "promptTokensDetails": [{"modality": "TEXT", "tokenCount": turn.prompt_tokens}]}
        out: list[dict[str, Any]] = []
        pieces: list[dict[str, Any]] = [{"text": p, "thought": True} for p in turn.reasoning_pieces]
        pieces += [{"text": p} for p in turn.text_pieces]
        calls = self._call_parts(turn, ctx)
        finish = _FINISH.get(turn.finish_reason, "STOP")
        if not calls and pieces:
            last = pieces.pop()
            for part in pieces:
                out.append({"candidates": [self._candidate([part], None)], "usageMetadata": running, **head})
            out.append({"candidates": [self._candidate([last], finish)], "usageMetadata": self.usage(turn), **head})
            return out
        for part in pieces:
            out.append({"candidates": [self._candidate([part], None)], "usageMetadata": running, **head})
        # Gemini sends function calls whole, all of a turn in one chunk, with the finish.
        out.append({"candidates": [self._candidate(calls or [{"text": ""}], finish)],
                    "usageMetadata": self.usage(turn), **head})
        return out

    def error(self, status: int, ctx: Ctx) -> dict | str:
        model = ctx.model or self.default_model
        messages = {
            400: "Request contains an invalid argument.",
            404: f"models/{model} is not found for API version v1beta, or is not supported for generateContent. "
                 "Call ListModels to see the list of available models and their supported methods.",
            429: "You exceeded your current quota, please check your plan and billing details. For more information "
                 "on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
            500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
            503: "The model is overloaded. Please try again later.",
        }
        details: list[dict[str, Any]] | None = None
        if status == 429:
            details = [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                    {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                     "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                     "quotaDimensions": {"location": "global", "model": model}, "quotaValue": "10"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"},
            ]
        return google_error(status, messages.get(status, "Unknown error."), details)

    def headers(self, ctx: Ctx) -> dict[str, str]:
        return {"server": "scaffolding on HTTPServer2", "x-gemini-service-tier": "standard",
                "server-timing": f"gfet4t7; dur={ctx.rng.randint(200, 900)}"}


# --- requests -------------------------------------------------------------------------


def _route(method: str, path: str) -> str | None:
    if method == "POST" and _PATH.match(unquote(path)):
        return "chat"
    if method == "GET" and path in ("/v1beta/models", "/v1/models"):
        return "models"
    return None


def _credential(rec: Recorded) -> str | None:
    return rec.headers.get("x-goog-api-key") or rec.query.get("key")


def _unauthorized(rec: Recorded, given: str | None) -> tuple[int, Any]:
    if not given:
        return 403, google_error(
            403, "Method doesn't allow unregistered callers (callers without established identity). "
                 "Please use API Key or other form of API consumer identity to call this API.")
    return 400, google_error(400, "API key not valid. Please pass a valid API key.", [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
         "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}])


def _adjust(rec: Recorded, ctx: Ctx) -> Ctx:
    match = _PATH.match(unquote(rec.path))
    if match:
        ctx.model = match.group(2)
        ctx.stream = match.group(3) == "streamGenerateContent" and rec.query.get("alt") == "sse"
    contents = rec.json.get("contents")
    ctx.messages = contents if isinstance(contents, list) else []
    return ctx


def _invalid(message: str, field: str | None = None) -> Error:
    details = None
    if field is not None:
        details = [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": field, "description": message}]}]
    return Error(400, body=google_error(400, message, details))


def _check_schema(schema: Any, path: str) -> str | None:
    if not isinstance(schema, dict):
        return f"* GenerateContentRequest.{path}: must be an object\n"
    for key in schema:
        if key not in _SCHEMA_KEYS:
            return f"Invalid JSON payload received. Unknown name \"{key}\" at '{path}': Cannot find field."
    stype = schema.get("type")
    if stype is not None and (not isinstance(stype, str) or stype not in _TYPES):
        return f"Invalid JSON payload received. Invalid value at '{path}.type' ({json.dumps(stype)})"
    fmt = schema.get("format")
    if fmt is not None and str(stype).lower() == "string" and fmt not in ("enum", "date-time"):
        return (f"* GenerateContentRequest.{path}.format: only 'enum' and 'date-time' are supported for STRING type\n")
    props = schema.get("properties")
    if str(stype).lower() == "object" and props is not None:
        if not props:
            return f"* GenerateContentRequest.{path}.properties: should be non-empty for OBJECT type\n"
        for name, sub in props.items():
            problem = _check_schema(sub, f"{path}.properties[{name}]")
            if problem:
                return problem
    if "items" in schema:
        problem = _check_schema(schema["items"], f"{path}.items")
        if problem:
            return problem
    for i, sub in enumerate(schema.get("anyOf") or ()):
        problem = _check_schema(sub, f"{path}.any_of[{i}]")
        if problem:
            return problem
    return None


def _parts(content: Any) -> list[dict[str, Any]]:
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _check(rec: Recorded, ctx: Ctx) -> Reply | None:
    body = rec.json
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return _invalid("* GenerateContentRequest.contents: contents is not specified\n")
    for i, tool in enumerate(body.get("tools") or ()):
        decls = tool.get("functionDeclarations", tool.get("function_declarations")) if isinstance(tool, dict) else None
        key = "function_declarations" if isinstance(tool, dict) and "function_declarations" in tool else "functionDeclarations"
        for j, decl in enumerate(decls or ()):
            name = decl.get("name", "")
            if not _FN_NAME.match(str(name)):
                return _invalid(
                    f"* GenerateContentRequest.tools[{i}].function_declarations[{j}].name: Invalid function name. "
                    "Must start with a letter or an underscore. Must be alphameric (a-z, A-Z, 0-9), underscores (_), "
                    "dots (.) or dashes (-), with a maximum length of 64.\n")
            params = decl.get("parameters")
            if params is not None:
                problem = _check_schema(params, f"tools[{i}].{key}[{j}].parameters")
                if problem:
                    return _invalid(problem, f"tools[{i}].{key}[{j}].parameters")
    signatures = ctx.model.startswith("gemini-3")
    previous_calls = 0
    for i, content in enumerate(contents):
        role = content.get("role") if isinstance(content, dict) else None
        if role not in ("user", "model"):
            return _invalid(f"Please use a valid role: user, model. (contents[{i}].role = {role!r})")
        parts = _parts(content)
        if not parts:
            return _invalid(f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n")
        calls = [p for p in parts if "functionCall" in p or "function_call" in p]
        responses = [p for p in parts if "functionResponse" in p or "function_response" in p]
        if responses and previous_calls and len(responses) != previous_calls:
            return _invalid(
                "Please ensure that the number of function response parts is equal to the number of function "
                "call parts of the function call turn.")
        for part in responses:
            resp = part.get("functionResponse", part.get("function_response"))
            if not isinstance(resp, dict) or not isinstance(resp.get("response"), dict):
                return _invalid(f"* GenerateContentRequest.contents[{i}].parts: functionResponse.response must be an object\n")
        for k, part in enumerate(calls):
            call = part.get("functionCall", part.get("function_call"))
            if not isinstance(call, dict) or not isinstance(call.get("args", {}), dict):
                return _invalid(f"* GenerateContentRequest.contents[{i}].parts[{k}].function_call.args: must be an object\n")
            if signatures:
                sig = part.get("thoughtSignature", part.get("thought_signature"))
                with _ISSUED_LOCK:
                    known = sig in _ISSUED
                if not known:
                    return _invalid(
                        "Function call is missing a thought_signature in functionCall parts. This is required for "
                        "tools to work correctly, and missing thought_signature may lead to degraded model "
                        f"performance. Additional data, function call `default_api:{call.get('name')}` , position "
                        f"{i + 1}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more "
                        "details.")
        previous_calls = len(calls) if role == "model" else 0
    return None


def _info(route: str, models: list[str]) -> tuple[int, Any]:
    return 200, {"models": [
        {"name": f"models/{m}", "displayName": m, "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
         "supportedGenerationMethods": ["generateContent", "countTokens"]} for m in models]}


register_flavor(FlavorSpec(
    name="gemini", wire=GeminiWire, route=_route, credential=_credential, unauthorized=_unauthorized,
    base_path="/v1beta", models=("gemini-2.5-flash", "gemini-3-pro-preview"), adjust=_adjust, check=_check,
    not_found=lambda rec: (404, google_error(404, "Requested entity was not found.")), info=_info,
))


# --- for scripts written against OpenAI bodies --------------------------------------------


def openai_view(body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat body equivalent to a Gemini request (for e2e scripts).

    ``model`` turns become ``assistant`` messages with ``tool_calls`` (ids
    ``gemini_call_<n>``), ``functionResponse`` parts become ``tool`` messages.
    """
    messages: list[dict[str, Any]] = []
    system = body.get("systemInstruction") or body.get("system_instruction")
    if isinstance(system, dict):
        messages.append({"role": "system", "content": "".join(p.get("text", "") for p in _parts(system))})
    n = 0
    pending: list[str] = []
    for content in body.get("contents") or ():
        parts = _parts(content)
        if content.get("role") == "model":
            calls: list[dict[str, Any]] = []
            for p in parts:
                call = p.get("functionCall", p.get("function_call"))
                if isinstance(call, dict):
                    ident = f"gemini_call_{n}"
                    n += 1
                    calls.append({"id": ident, "type": "function",
                                  "function": {"name": call.get("name"), "arguments": _compact(call.get("args") or {})}})
            said = "".join(p.get("text", "") for p in parts if "text" in p and not p.get("thought"))
            msg: dict[str, Any] = {"role": "assistant", "content": said or None}
            if calls:
                msg["tool_calls"] = calls
                pending = [c["id"] for c in calls]
            messages.append(msg)
            continue
        texts: list[str] = []
        for p in parts:
            resp = p.get("functionResponse", p.get("function_response"))
            if isinstance(resp, dict):
                value = resp.get("response")
                text = value.get("content") if isinstance(value, dict) and isinstance(value.get("content"), str) else _compact(value)
                messages.append({"role": "tool", "tool_call_id": pending.pop(0) if pending else "?", "content": text})
            elif "text" in p:
                texts.append(p["text"])
        if texts:
            messages.append({"role": "user", "content": "\n".join(texts)})
    tools = []
    for tool in body.get("tools") or ():
        for decl in tool.get("functionDeclarations", tool.get("function_declarations")) or ():
            tools.append({"type": "function", "function": {"name": decl.get("name"), "parameters": decl.get("parameters", {})}})
    out: dict[str, Any] = {"model": "gemini", "messages": messages}
    if tools:
        out["tools"] = tools
    return out

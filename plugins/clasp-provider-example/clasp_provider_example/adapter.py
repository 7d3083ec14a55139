"""The Acme Generate API as a clasp provider: translate, call, stream back.

The Acme Generate API (an in-house inference service, invented for this example) has one
endpoint, ``POST {api_base}/v1/generate``, authenticated with ``Authorization: Bearer``::

    {"model": "acme-coder-1",
     "system": "You are...",
     "messages": [{"role": "user", "content": "list files"},
                  {"role": "model", "content": "", "tool_calls": [
                      {"id": "tc_1", "name": "Bash", "input": {"command": "ls"}}]},
                  {"role": "tool", "tool_call_id": "tc_1", "content": "a.txt"}],
     "tools": [{"name": "Bash", "description": "...", "input_schema": {...}}],
     "tool_choice": "auto" | "any" | "none" | {"name": "Bash"},
     "max_output_tokens": 4096, "temperature": 0.2, "top_p": 0.9, "stop": ["###"]}

It always streams ``application/x-ndjson``, one event per line::

    {"event": "start", "id": "gen_8f2c", "model": "acme-coder-1"}
    {"event": "text", "text": "Let me look."}
    {"event": "tool_call", "id": "tc_2", "name": "Bash", "input": {"command": "ls -la"}}
    {"event": "heartbeat"}                          (while the model thinks, every few seconds)
    {"event": "end", "stop_reason": "end" | "tool_use" | "max_tokens" | "stop_sequence",
     "usage": {"input_tokens": 812, "cached_input_tokens": 512, "output_tokens": 40}}
    {"event": "error", "error": {"type": "overloaded", "message": "..."}}   (mid-stream)

Errors before the stream are HTTP statuses with ``{"error": {"type", "message"}}`` (429
with ``Retry-After``). The adapter turns all of this into the gateway's canonical format
(OpenAI chat chunks) and :class:`~clasp_gateway.errors.UpstreamError`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from clasp_gateway import (
    KEEPALIVE,
    CanonicalRequest,
    Chunk,
    Deployment,
    NDJSONDecoder,
    Providers,
    Upstream,
    UpstreamError,
    UpstreamRequest,
    parse_retry_after,
    redact,
)

__all__ = ["AcmeProvider", "chunks_from_events", "to_acme"]

IMAGE_OMITTED = "[image omitted: this model accepts text only]"
STOP_REASONS = {"end": "stop", "tool_use": "tool_calls", "max_tokens": "length", "stop_sequence": "stop"}
# Acme error types -> the HTTP status they stand for (so the gateway maps and retries them).
ERROR_STATUS = {"invalid_request": 400, "unauthorized": 401, "not_found": 404, "rate_limited": 429,
                "overloaded": 503, "timeout": 504}


# --- canonical (OpenAI chat) -> Acme ---------------------------------------------------------


def _text(content: Any) -> str:
    """OpenAI message content (a string or a list of parts) as Acme's plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    out: list[str] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            out.append(part["text"])
        elif part.get("type") in ("image_url", "input_audio", "file"):
            out.append(IMAGE_OMITTED)
    return "\n".join(out)


def _input(arguments: Any) -> dict[str, Any]:
    """A tool call's JSON-string arguments as the object Acme wants."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"_raw": arguments}


def to_acme(body: CanonicalRequest, model: str) -> dict[str, Any]:
    """The Acme request for a canonical (OpenAI chat-completions) body."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in body.get("messages") or ():
        role = message.get("role")
        content = _text(message.get("content"))
        if role in ("system", "developer"):
            system.append(content)  # Acme has one system prompt: later ones join it
        elif role == "user":
            messages.append({"role": "user", "content": content})
        elif role == "assistant":
            out: dict[str, Any] = {"role": "model", "content": content}
            calls = [
                {"id": c.get("id") or "", "name": (c.get("function") or {}).get("name", ""),
                 "input": _input((c.get("function") or {}).get("arguments"))}
                for c in message.get("tool_calls") or () if isinstance(c, dict)
            ]
            if calls:
                out["tool_calls"] = calls
            messages.append(out)
        elif role == "tool":
            messages.append({"role": "tool", "tool_call_id": message.get("tool_call_id") or "", "content": content})
    acme: dict[str, Any] = {"model": model, "messages": messages}
    if system:
        acme["system"] = "\n\n".join(s for s in system if s)
    tools = [
        {"name": fn.get("name", ""), "description": fn.get("description", ""),
         "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
        for fn in (t.get("function") or {} for t in body.get("tools") or () if isinstance(t, dict))
    ]
    if tools:
        acme["tools"] = tools
        choice = body.get("tool_choice")
        if choice in ("auto", "none"):
            acme["tool_choice"] = choice
        elif choice == "required":
            acme["tool_choice"] = "any"
        elif isinstance(choice, dict) and (choice.get("function") or {}).get("name"):
            acme["tool_choice"] = {"name": choice["function"]["name"]}
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit:
        acme["max_output_tokens"] = limit
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            acme[key] = body[key]
    stop = body.get("stop")
    if stop:
        acme["stop"] = [stop] if isinstance(stop, str) else list(stop)
    return acme


# --- Acme events -> canonical chunks ---------------------------------------------------------


def _usage(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    cached = int(usage.get("cached_input_tokens") or 0)
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


class _Events:
    """Turns Acme events into chunks, one stream at a time."""

    __slots__ = ("label", "id", "model", "calls", "ended")

    def __init__(self, label: str, model: str) -> None:
        self.label = label
        self.id = "acme-" + str(int(time.time() * 1000))
        self.model = model
        self.calls = 0
        self.ended = False

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> Chunk:
        return {"id": self.id, "object": "chat.completion.chunk", "created": int(time.time()), "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def convert(self, event: Any) -> Chunk | None:
        if not isinstance(event, dict):
            raise self.protocol("an event that is not a JSON object")
        kind = event.get("event")
        if kind == "start":
            self.id = str(event.get("id") or self.id)
            self.model = str(event.get("model") or self.model)
            return self.chunk({"role": "assistant", "content": ""})
        if kind == "text":
            return self.chunk({"content": str(event.get("text") or "")})
        if kind == "tool_call":
            call = {"index": self.calls, "id": str(event.get("id") or f"acme_call_{self.calls}"), "type": "function",
                    "function": {"name": str(event.get("name") or ""),
                                 "arguments": orjson.dumps(event.get("input") or {}).decode()}}
            self.calls += 1
            return self.chunk({"tool_calls": [call]})
        if kind == "heartbeat":
            return KEEPALIVE
        if kind == "end":
            self.ended = True
            reason = STOP_REASONS.get(str(event.get("stop_reason")), "stop")
            chunk = self.chunk({}, "tool_calls" if self.calls and reason == "stop" else reason)
            usage = _usage(event.get("usage"))
            if usage:
                chunk["usage"] = usage
            return chunk
        if kind == "error":
            raw = event.get("error")
            err: dict[str, Any] = raw if isinstance(raw, dict) else {}
            etype = str(err.get("type") or "internal")
            raise UpstreamError(
                f"{self.label}: Acme error mid-stream ({etype}): {redact(str(err.get('message') or ''))}",
                upstream_status=ERROR_STATUS.get(etype, 500), deployment=self.label,
            )
        return None  # an event type this adapter does not know yet: ignore it

    def protocol(self, what: str) -> UpstreamError:
        return UpstreamError(f"{self.label}: Acme sent {what}", upstream_status=502, deployment=self.label,
                             kind="protocol")


def chunks_from_events(events: list[dict[str, Any]], label: str = "acme", model: str = "") -> list[Chunk]:
    """The canonical chunks for a list of Acme events (for tests and tools)."""
    decoder = _Events(label, model)
    return [c for c in (decoder.convert(e) for e in events) if c is not None and c is not KEEPALIVE]


# --- the adapter -----------------------------------------------------------------------------


class AcmeProvider:
    """A clasp provider adapter (``register_providers``) for the Acme Generate API.

    Translation only: the gateway's :class:`~clasp_gateway.Upstream` (handed over by
    ``bind``) sends each request over its pooled session with the deployment's
    timeouts, rotates its API keys when Acme refuses one, bounds what is read, and
    turns an HTTP error into an :class:`UpstreamError` (:func:`_http_error` words it).
    ``open`` yields canonical chunks and raises for every failure, including a stream
    that stops early. Outside a gateway (tests, tools) it makes its own ``Upstream``.
    """

    def __init__(self) -> None:
        self._upstream = Upstream()
        self._bound = False

    def bind(self, providers: Providers) -> None:
        """Use the gateway's wire (called once, when the gateway is built)."""
        self._upstream = providers.upstream
        self._bound = True

    async def start(self) -> None:
        """Nothing to prepare: the session opens on the first call."""

    async def close(self) -> None:
        if not self._bound:  # the gateway closes its own wire
            await self._upstream.close()

    @staticmethod
    def request_for(deployment: Deployment, body: CanonicalRequest, key: str | None) -> UpstreamRequest:
        """The Acme call for ``body`` with API key ``key``."""
        headers = {"content-type": "application/json", "accept": "application/x-ndjson",
                   "user-agent": "clasp-provider-example"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        headers.update(deployment.headers)
        payload = to_acme(body, deployment.model)
        payload.update(deployment.extra_body)  # clasp.yaml `extra_body:` wins, as for built-in providers
        return UpstreamRequest(f"{deployment.api_base}/v1/generate", orjson.dumps(payload), headers)

    async def open(self, deployment: Deployment, body: CanonicalRequest, *, stream: bool) -> AsyncIterator[Chunk]:
        # Acme always streams; for a non-streaming client the gateway aggregates the chunks.
        label = deployment.id
        upstream = self._upstream
        response = await upstream.send(deployment, lambda key: self.request_for(deployment, body, key),
                                       error=_http_error, name="Acme")
        try:
            ctype = response.headers.get("content-type", "")
            if "ndjson" not in ctype:
                raise UpstreamError(f"{label}: Acme answered {ctype or 'no content type'}, not NDJSON "
                                    "(is api_base right?)", upstream_status=502, deployment=label, kind="protocol")
            decoder = _Events(label, deployment.model)
            async for lines in upstream.frames(response, deployment, NDJSONDecoder(upstream.limits.max_line_bytes)):
                if lines is None:  # silent but connected: the gateway sends the client a ping
                    yield KEEPALIVE
                    continue
                for line in lines:
                    try:
                        event = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        raise UpstreamError(f"{label}: Acme sent a malformed event", upstream_status=502,
                                            deployment=label, kind="protocol") from None
                    chunk = decoder.convert(event)
                    if chunk is not None:
                        yield chunk
                    if decoder.ended:
                        return
            raise UpstreamError(f"{label}: the Acme stream ended before its end event", upstream_status=0,
                                deployment=label, kind="protocol")
        finally:
            response.release()


def _http_error(response: aiohttp.ClientResponse, raw: bytes, label: str) -> UpstreamError:
    """An Acme error answer (``{"error": {"type", "message"}}``) as the gateway's error;
    ``retry_after`` from Acme's ``Retry-After``."""
    message = ""
    try:
        data = orjson.loads(raw)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            message = f"{err.get('type', 'error')}: {err.get('message', '')}"
    except orjson.JSONDecodeError:
        message = " ".join(raw.decode("utf-8", "replace").split())[:300]
    return UpstreamError(
        f"{label}: Acme answered {response.status}: {redact(message) or '(empty body)'}",
        upstream_status=response.status, deployment=label, retry_after=parse_retry_after(response.headers),
    )

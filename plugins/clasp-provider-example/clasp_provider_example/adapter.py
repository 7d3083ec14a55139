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

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from clasp_gateway.errors import UpstreamError
from clasp_gateway.redact import redact
from clasp_gateway.types import KEEPALIVE, CanonicalRequest, Chunk, Deployment
from clasp_gateway.wire.upstream import parse_retry_after

__all__ = ["AcmeProvider", "chunks_from_events", "to_acme"]

IMAGE_OMITTED = "[image omitted: this model accepts text only]"
STOP_REASONS = {"end": "stop", "tool_use": "tool_calls", "max_tokens": "length", "stop_sequence": "stop"}
# Acme error types -> the HTTP status they stand for (so the gateway maps and retries them).
ERROR_STATUS = {"invalid_request": 400, "unauthorized": 401, "not_found": 404, "rate_limited": 429,
                "overloaded": 503, "timeout": 504}
_MAX_ERROR_BODY = 64 * 1024


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

    One pooled HTTP session per gateway, opened by :meth:`start` and closed by
    :meth:`close` (the gateway calls both); ``open`` yields canonical chunks and raises
    :class:`UpstreamError` for every failure, including a stream that stops early.
    """

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=200, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=None),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @staticmethod
    def request_for(deployment: Deployment, body: CanonicalRequest) -> tuple[str, dict[str, str], bytes]:
        """URL, headers and JSON payload of the Acme call for ``body``."""
        headers = {"content-type": "application/json", "accept": "application/x-ndjson",
                   "user-agent": "clasp-provider-example"}
        key = next((k.value for k in deployment.keys if k.value), None)
        if key:
            headers["authorization"] = f"Bearer {key}"
        headers.update(deployment.headers)
        payload = to_acme(body, deployment.model)
        payload.update(deployment.extra_body)  # clasp.yaml `extra_body:` wins, as for built-in providers
        return f"{deployment.api_base}/v1/generate", headers, orjson.dumps(payload)

    async def open(self, deployment: Deployment, body: CanonicalRequest, *, stream: bool) -> AsyncIterator[Chunk]:
        # Acme always streams; for a non-streaming client the gateway aggregates the chunks.
        if self._session is None:
            await self.start()
        assert self._session is not None
        label = deployment.id
        url, headers, payload = self.request_for(deployment, body)
        t = deployment.timeouts
        try:
            response = await self._session.post(
                url, data=payload, headers=headers,
                timeout=aiohttp.ClientTimeout(total=t.total, connect=t.connect, sock_connect=t.connect),
            )
        except TimeoutError:
            raise UpstreamError(f"{label}: timed out connecting to Acme", upstream_status=0, deployment=label,
                                kind="timeout") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{label}: cannot reach Acme ({redact(str(exc)) or type(exc).__name__})",
                                upstream_status=0, deployment=label, kind="connect") from None
        try:
            if response.status >= 400:
                raise await self._http_error(response, label, t.idle)
            ctype = response.headers.get("content-type", "")
            if "ndjson" not in ctype:
                raise UpstreamError(f"{label}: Acme answered {ctype or 'no content type'}, not NDJSON "
                                    "(is api_base right?)", upstream_status=502, deployment=label, kind="protocol")
            decoder = _Events(label, deployment.model)
            async for event in self._lines(response, label, t.idle):
                chunk = decoder.convert(event)
                if chunk is not None:
                    yield chunk
                if decoder.ended:
                    return
            raise UpstreamError(f"{label}: the Acme stream ended before its end event", upstream_status=0,
                                deployment=label, kind="protocol")
        finally:
            response.release()

    @staticmethod
    async def _lines(response: aiohttp.ClientResponse, label: str, idle: float | None) -> AsyncIterator[Any]:
        """NDJSON events, read in pieces (a tool call with a whole file can exceed any line limit)."""
        buffer = b""
        while True:
            try:
                async with asyncio.timeout(idle):
                    piece = await response.content.readany()
            except TimeoutError:
                raise UpstreamError(f"{label}: Acme sent nothing for {idle:.0f}s", upstream_status=0,
                                    deployment=label, kind="timeout") from None
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"{label}: the Acme stream broke ({type(exc).__name__})", upstream_status=0,
                                    deployment=label, kind="protocol") from None
            if not piece:
                if buffer.strip():
                    raise UpstreamError(f"{label}: the Acme stream ended inside an event", upstream_status=0,
                                        deployment=label, kind="protocol")
                return
            buffer += piece
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    try:
                        yield orjson.loads(line)
                    except orjson.JSONDecodeError:
                        raise UpstreamError(f"{label}: Acme sent a malformed event", upstream_status=502,
                                            deployment=label, kind="protocol") from None

    @staticmethod
    async def _http_error(response: aiohttp.ClientResponse, label: str, idle: float | None) -> UpstreamError:
        try:
            async with asyncio.timeout(idle):
                raw = await response.content.read(_MAX_ERROR_BODY)
        except (TimeoutError, aiohttp.ClientError):
            raw = b""
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

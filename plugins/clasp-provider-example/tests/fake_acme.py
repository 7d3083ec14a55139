"""A fake Acme Generate API server for tests: strict about requests, scriptable answers.

It validates requests as the real service would (unknown fields, roles, tool-call ids
answered in order) and answers with what a test queued, then what ``script`` returns,
then ``Answer("ok")``. It runs on 127.0.0.1 in a daemon thread with its own event loop,
so synchronous tests and a gateway in another thread can all talk to it::

    with FakeAcme() as api:
        api.queue(Answer(calls=[("Bash", {"command": "ls"})]), Answer("Done."))
        ...  # a deployment `model: acme/acme-coder-1`, `api_base: api.base_url`
        assert api.requests[1].body["messages"][-1]["role"] == "tool"

Tests load this file by path (``--import-mode=importlib`` lets test files import no
siblings): see ``load_fake_acme`` in ``test_acme_provider.py``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from clasp_gateway.testing import AppThread

__all__ = ["Answer", "FakeAcme", "Failure", "Received", "Reply"]

API_KEY = "acme-test-key-0123456789"
_TOP_LEVEL = {"model", "system", "messages", "tools", "tool_choice", "max_output_tokens", "temperature", "top_p",
              "stop"}


@dataclass
class Answer:
    """A streamed answer: optional text, then tool calls, then the end event.

    ``usage`` is ``(input_tokens, output_tokens)`` (default: a rough count of the
    request and the answer). ``end=False`` stops the stream without its end event (a
    cut connection); ``error=(type, message)`` sends an error event instead of the end.
    """

    text: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    stop_reason: str | None = None
    usage: tuple[int, int] | None = None
    cached: int = 0
    heartbeats: int = 0
    chunk: int = 6
    delay: float = 0.0
    end: bool = True
    error: tuple[str, str] | None = None


@dataclass
class Failure:
    """An HTTP error before any event: ``{"error": {"type", "message"}}``."""

    status: int
    type: str
    message: str
    retry_after: float | None = None


Reply = Answer | Failure


@dataclass
class Received:
    """One request as the fake received it."""

    path: str
    headers: dict[str, str]
    body: Any


def validate(body: Any) -> str | None:
    """What the real API would reject in ``body`` (a message), or None."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    unknown = sorted(set(body) - _TOP_LEVEL)
    if unknown:
        return f"unknown field(s): {', '.join(unknown)}"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: required"
    if "system" in body and not isinstance(body["system"], str):
        return "system: must be a string"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: required, a non-empty list"
    if messages[0].get("role") != "user":
        return "messages.0: the conversation must start with a user message"
    pending: list[str] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "model", "tool"):
            return f"messages.{i}.role: expected user, model or tool, got {role!r}"
        if not isinstance(message.get("content"), str):
            return f"messages.{i}.content: must be a string"
        if role != "tool" and pending:
            return f"messages.{i}: tool call(s) {pending} were not answered"
        if role == "model":
            for j, call in enumerate(message.get("tool_calls") or []):
                if not (isinstance(call.get("id"), str) and call["id"] and isinstance(call.get("name"), str)
                        and isinstance(call.get("input"), dict)):
                    return f"messages.{i}.tool_calls.{j}: needs id, name and an input object"
                pending.append(call["id"])
        if role == "tool":
            if not pending or message.get("tool_call_id") != pending[0]:
                return f"messages.{i}.tool_call_id: {message.get('tool_call_id')!r} does not answer {pending[:1]}"
            pending.pop(0)
    for i, tool in enumerate(body.get("tools") or []):
        schema = tool.get("input_schema") if isinstance(tool, dict) else None
        if not isinstance(tool.get("name"), str) or not isinstance(schema, dict) or schema.get("type") != "object":
            return f"tools.{i}: needs a name and an input_schema of type object"
    limit = body.get("max_output_tokens")
    if limit is not None and (not isinstance(limit, int) or not 1 <= limit <= 32768):
        return "max_output_tokens: must be between 1 and 32768"
    return None


class FakeAcme:
    """The fake server. ``requests`` records every call, ``queue``/``script`` decide answers."""

    def __init__(self, *, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.requests: list[Received] = []
        self.script: Callable[[dict[str, Any]], Reply | None] | None = None
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._server = AppThread(self._app, name="FakeAcme")
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def queue(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    def _next(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        reply = self.script(body) if self.script is not None else None
        return reply if reply is not None else Answer("ok")

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append(Received(request.path, dict(request.headers), body))
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return self._error(Failure(401, "unauthorized", "invalid or missing API key"))
        problem = validate(body)
        if problem:
            return self._error(Failure(400, "invalid_request", problem))
        reply = self._next(body)
        if isinstance(reply, Failure):
            return self._error(reply)
        response = web.StreamResponse(headers={"content-type": "application/x-ndjson"})
        await response.prepare(request)
        for event in self._events(reply, body):
            await response.write(json.dumps(event).encode() + b"\n")
            if reply.delay:
                await asyncio.sleep(reply.delay)
        await response.write_eof()
        return response

    @staticmethod
    def _events(reply: Answer, body: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = [{"event": "start", "id": "gen_fake01", "model": body["model"]}]
        events += [{"event": "heartbeat"}] * reply.heartbeats
        text = reply.text
        events += [{"event": "text", "text": text[i:i + reply.chunk]} for i in range(0, len(text), reply.chunk)]
        for n, (name, arguments) in enumerate(reply.calls):
            events.append({"event": "tool_call", "id": f"tc_{len(body['messages'])}_{n}", "name": name,
                           "input": arguments})
        if reply.error is not None:
            events.append({"event": "error", "error": {"type": reply.error[0], "message": reply.error[1]}})
        elif reply.end:
            used = reply.usage or (len(json.dumps(body)) // 4, max(1, (len(text) + len(json.dumps(reply.calls))) // 4))
            events.append({
                "event": "end",
                "stop_reason": reply.stop_reason or ("tool_use" if reply.calls else "end"),
                "usage": {"input_tokens": used[0], "cached_input_tokens": reply.cached, "output_tokens": used[1]},
            })
        return events

    @staticmethod
    def _error(failure: Failure) -> web.Response:
        headers = {"retry-after": f"{failure.retry_after:g}"} if failure.retry_after is not None else {}
        return web.json_response({"error": {"type": failure.type, "message": failure.message}},
                                 status=failure.status, headers=headers)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/generate", self._generate)
        return app

    def start(self) -> FakeAcme:
        self.port = self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FakeAcme:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

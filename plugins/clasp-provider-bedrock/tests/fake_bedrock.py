"""A fake AWS Bedrock runtime for tests: verifies SigV4, speaks real event-stream framing.

- Every request's ``Authorization`` header is checked as AWS checks it: the access key
  must be known, the scope must name the region and ``bedrock``, and the signature is
  recomputed with botocore from what arrived (method, raw path, signed headers, body)
  and the key's secret. A wrong one is a 403 ``InvalidSignatureException``; a session
  token the fake was told has expired is a 403 ``ExpiredTokenException``.
- ``POST /model/{id}/converse`` answers JSON; ``/converse-stream`` answers
  ``application/vnd.amazon.eventstream``, encoded here byte by byte (prelude with total
  and header lengths, its CRC32, typed headers, JSON payload, message CRC32) and written
  in small pieces so the client's decoder sees messages split anywhere.
- Faults: :class:`Failure` (an HTTP error with ``x-amzn-ErrorType``), an answer whose
  stream ends with an exception event (``Answer(error=...)``), or just stops
  (``Answer(end=False)``).

Tests load this file by path (``--import-mode=importlib``): see ``load_fake`` in the tests.
"""

from __future__ import annotations

import asyncio
import binascii
import dataclasses
import hmac
import re
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from clasp_gateway.testing import AppThread, PromptCache

__all__ = ["Answer", "FakeBedrock", "Failure", "Received", "encode_message"]

ACCESS_KEY = "AKIACLASPTEST0000001"
SECRET_KEY = "clasp-test-secret/0123456789abcdefghijklmn"
REGION = "us-east-1"
MODEL = "anthropic.claude-3-5-sonnet-20241022-v2:0"

_AUTH = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([a-z0-9;\-]+), Signature=([0-9a-f]{64})$")
_BLOCKS = {"text", "image", "document", "toolUse", "toolResult", "reasoningContent", "cachePoint", "video"}


# --- event-stream framing --------------------------------------------------------------------


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude (total length, headers length, CRC32),
    string-typed headers (type 7), payload, CRC32 of everything before it."""
    encoded = b""
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        encoded += struct.pack("!B", len(raw_name)) + raw_name + struct.pack("!BH", 7, len(raw_value)) + raw_value
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack("!II", total, len(encoded))
    prelude += struct.pack("!I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + encoded + payload
    return message + struct.pack("!I", binascii.crc32(message) & 0xFFFFFFFF)


def event(kind: str, data: dict[str, Any]) -> bytes:
    return encode_message({":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
                          orjson.dumps(data))


def exception(kind: str, message: str) -> bytes:
    return encode_message({":exception-type": kind, ":content-type": "application/json",
                           ":message-type": "exception"}, orjson.dumps({"message": message}))


# --- scripted answers ------------------------------------------------------------------------


@dataclass
class Answer:
    """A Converse answer: reasoning, text, tool calls, then messageStop and metadata.

    ``usage`` is ``(inputTokens, outputTokens)``; ``cache_read``/``cache_write`` add
    cache counts. ``end=False`` stops the stream before messageStop (a cut connection);
    ``error=(exceptionType, message)`` sends that exception event instead of the end.
    """

    text: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    reasoning: str = ""
    stop_reason: str | None = None
    usage: tuple[int, int] = (25, 5)
    cache_read: int = 0
    cache_write: int = 0
    end: bool = True
    error: tuple[str, str] | None = None
    piece: int = 7
    """Bytes per network write of the first message (later ones go whole)."""
    corrupt: bool = False
    """Flip one payload byte of the second message (its CRC no longer matches)."""


@dataclass
class Failure:
    """An HTTP error before any event, as AWS sends it."""

    status: int
    type: str
    message: str


Reply = Answer | Failure


@dataclass
class Received:
    """One request as the fake received it (signature already verified)."""

    path: str
    model: str
    stream: bool
    headers: dict[str, str]
    body: Any


def validate(body: Any) -> str | None:
    """What the real Converse API would reject in ``body`` (a message), or None."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    unknown = set(body) - {"messages", "system", "inferenceConfig", "toolConfig", "additionalModelRequestFields",
                           "guardrailConfig", "additionalModelResponseFieldPaths", "promptVariables",
                           "requestMetadata", "performanceConfig"}
    if unknown:
        return f"unknown fields {sorted(unknown)}"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    pending: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role")
        if role != ("user" if i % 2 == 0 else "assistant"):
            return f"messages.{i}: roles must alternate user/assistant starting with user, got {role!r}"
        content = message.get("content")
        if not isinstance(content, list) or not content:
            return f"messages.{i}.content must be a non-empty list"
        for block in content:
            if not isinstance(block, dict) or len(set(block) & _BLOCKS) != 1 or set(block) - _BLOCKS:
                return f"messages.{i}: malformed content block {block!r}"[:200]
            if "toolUse" in block:
                pending.add(block["toolUse"]["toolUseId"])
                if not isinstance(block["toolUse"].get("input"), dict):
                    return f"messages.{i}: toolUse.input must be an object"
            if "toolResult" in block:
                if block["toolResult"]["toolUseId"] not in pending:
                    return f"messages.{i}: toolResult for an unknown toolUseId"
                pending.discard(block["toolResult"]["toolUseId"])
    inference = body.get("inferenceConfig") or {}
    if set(inference) - {"maxTokens", "temperature", "topP", "stopSequences"}:
        return f"inferenceConfig: unknown fields {sorted(set(inference))}"
    return None


class FakeBedrock:
    """The fake, on 127.0.0.1 in a daemon thread (``with FakeBedrock() as aws:``).

    ``keys`` maps access key ids to secrets; ``tokens``, when not ``None``, is the set
    of session tokens accepted (a request without one of them is refused);
    ``expired`` are tokens answered with ``ExpiredTokenException``; ``denied`` are
    model ids the credentials have no access to.
    """

    def __init__(self, *, keys: dict[str, str] | None = None) -> None:
        self.keys = dict(keys or {ACCESS_KEY: SECRET_KEY})
        self.tokens: set[str] | None = None
        self.expired: set[str] = set()
        self.denied: set[str] = set()
        self.requests: list[Received] = []
        self.rejected: list[str] = []
        """Why each refused request was refused (signature, token...)."""
        self.script: Callable[[Received], Reply] | None = None
        self.prompt_cache: PromptCache | None = None
        """When set, Bedrock's prompt caching (``cachePoint`` blocks) decides the usage of
        every answer that does not set its own cache counts."""
        self._queue: deque[Reply] = deque()
        self._server = AppThread(self._app, name="FakeBedrock")
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def queue(self, *replies: Reply) -> None:
        self._queue.extend(replies)

    # --- the checks AWS makes --------------------------------------------------------------------

    def _verify(self, request: web.Request, body: bytes) -> tuple[int, str, str] | None:
        """``(status, error type, message)`` when AWS would refuse the request."""
        match = _AUTH.match(request.headers.get("Authorization", ""))
        if match is None:
            return 403, "MissingAuthenticationTokenException", "Missing Authentication Token"
        key, day, region, service, signed, signature = match.groups()
        amz_date = request.headers.get("X-Amz-Date", "")
        if key not in self.keys:
            return 403, "UnrecognizedClientException", "The security token included in the request is invalid."
        if region != REGION or service != "bedrock" or not amz_date.startswith(day):
            return 403, "InvalidSignatureException", f"Credential should be scoped to a valid region/service ({region}/{service})"
        names = signed.split(";")
        if "host" not in names or "x-amz-date" not in names:
            return 403, "InvalidSignatureException", "host and x-amz-date must be signed"
        token = request.headers.get("X-Amz-Security-Token")
        if token is not None and "x-amz-security-token" not in names:
            return 403, "InvalidSignatureException", "x-amz-security-token must be signed"
        signed_headers = {name: request.headers.get(name, "") for name in names}
        aws_request = AWSRequest(method=request.method, url=f"http://{request.host}{request.raw_path}",
                                 data=body, headers=signed_headers)
        aws_request.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(key, self.keys[key], token), "bedrock", region)
        canonical = signer.canonical_request(aws_request)
        expected = signer.signature(signer.string_to_sign(aws_request, canonical), aws_request)
        if not hmac.compare_digest(expected, signature):
            return 403, "InvalidSignatureException", ("The request signature we calculated does not match the "
                                                      "signature you provided.")
        if token is not None and token in self.expired:
            return 403, "ExpiredTokenException", "The security token included in the request is expired"
        if self.tokens is not None and token not in self.tokens:
            return 403, "UnrecognizedClientException", "The security token included in the request is invalid."
        return None

    # --- handlers --------------------------------------------------------------------------------

    async def _converse(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        refused = self._verify(request, raw)
        if refused is not None:
            self.rejected.append(refused[1])
            return self._error(Failure(*refused))
        if request.headers.get("Content-Type") != "application/json":
            return self._error(Failure(400, "ValidationException", "Content-Type must be application/json"))
        model = request.match_info["model"]
        stream = request.match_info["op"] == "converse-stream"
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._error(Failure(400, "SerializationException", "malformed JSON"))
        received = Received(request.raw_path, model, stream, dict(request.headers), body)
        self.requests.append(received)
        if model in self.denied:
            return self._error(Failure(403, "AccessDeniedException",
                                       "You don't have access to the model with the specified model ID."))
        problem = validate(body)
        if problem is not None:
            return self._error(Failure(400, "ValidationException", problem))
        reply = self._queue.popleft() if self._queue else (self.script(received) if self.script else Answer("ok"))
        if isinstance(reply, Failure):
            return self._error(reply)
        if self.prompt_cache is not None and not (reply.cache_read or reply.cache_write):
            use = self.prompt_cache.account(body, model)
            reply = dataclasses.replace(reply, usage=(use.prompt_tokens - use.read - use.written, reply.usage[1]),
                                        cache_read=use.read, cache_write=use.written)
        if not stream:
            return web.json_response(self._whole(reply))
        response = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream"})
        await response.prepare(request)
        for i, message in enumerate(self._stream(reply)):
            if i == 1 and reply.corrupt:
                message = message[:-6] + bytes([message[-6] ^ 0x20]) + message[-5:]
            if i == 0:
                for start in range(0, len(message), reply.piece):
                    await response.write(message[start:start + reply.piece])
                    await asyncio.sleep(0)
            else:
                await response.write(message)
        await response.write_eof()
        return response

    @staticmethod
    def _usage(reply: Answer) -> dict[str, int]:
        usage = {"inputTokens": reply.usage[0], "outputTokens": reply.usage[1],
                 "totalTokens": sum(reply.usage) + reply.cache_read + reply.cache_write}
        if reply.cache_read or reply.cache_write:
            usage["cacheReadInputTokens"] = reply.cache_read
            usage["cacheWriteInputTokens"] = reply.cache_write
        return usage

    def _whole(self, reply: Answer) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if reply.reasoning:
            content.append({"reasoningContent": {"reasoningText": {"text": reply.reasoning, "signature": "sig"}}})
        if reply.text:
            content.append({"text": reply.text})
        for n, (name, arguments) in enumerate(reply.calls):
            content.append({"toolUse": {"toolUseId": f"tooluse_{n}{len(self.requests)}", "name": name,
                                        "input": arguments}})
        stop = reply.stop_reason or ("tool_use" if reply.calls else "end_turn")
        return {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop,
                "usage": self._usage(reply), "metrics": {"latencyMs": 12}}

    def _stream(self, reply: Answer) -> list[bytes]:
        out = [event("messageStart", {"role": "assistant"})]
        block = 0
        if reply.reasoning:
            out.append(event("contentBlockDelta", {"contentBlockIndex": block,
                                                   "delta": {"reasoningContent": {"text": reply.reasoning}}}))
            out.append(event("contentBlockDelta", {"contentBlockIndex": block,
                                                   "delta": {"reasoningContent": {"signature": "sig"}}}))
            out.append(event("contentBlockStop", {"contentBlockIndex": block}))
            block += 1
        if reply.text:
            for start in range(0, len(reply.text), 5):
                out.append(event("contentBlockDelta", {"contentBlockIndex": block,
                                                       "delta": {"text": reply.text[start:start + 5]}}))
            out.append(event("contentBlockStop", {"contentBlockIndex": block}))
            block += 1
        if reply.error is not None:
            out.append(exception(*reply.error))
            return out
        for n, (name, arguments) in enumerate(reply.calls):
            out.append(event("contentBlockStart", {"contentBlockIndex": block, "start": {
                "toolUse": {"toolUseId": f"tooluse_{n}{len(self.requests)}", "name": name}}}))
            text = orjson.dumps(arguments).decode()
            for start in range(0, len(text), 8):
                out.append(event("contentBlockDelta", {"contentBlockIndex": block,
                                                       "delta": {"toolUse": {"input": text[start:start + 8]}}}))
            out.append(event("contentBlockStop", {"contentBlockIndex": block}))
            block += 1
        if not reply.end:
            return out
        stop = reply.stop_reason or ("tool_use" if reply.calls else "end_turn")
        out.append(event("messageStop", {"stopReason": stop}))
        out.append(event("metadata", {"usage": self._usage(reply), "metrics": {"latencyMs": 12}}))
        return out

    @staticmethod
    def _error(failure: Failure) -> web.Response:
        return web.json_response(
            {"message": failure.message}, status=failure.status,
            headers={"x-amzn-ErrorType": f"{failure.type}:http://internal.amazon.com/coral/com.amazon.bedrock/"})

    # --- lifecycle -------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/model/{model}/{op:converse|converse-stream}", self._converse)
        return app

    def start(self) -> FakeBedrock:
        self.port = self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FakeBedrock:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

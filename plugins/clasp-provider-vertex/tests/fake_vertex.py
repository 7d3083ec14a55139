"""A fake Google OAuth token endpoint and a fake Vertex AI, on 127.0.0.1, for tests.

- ``POST /token`` is the JWT bearer grant a service account uses: the assertion's RS256
  signature is verified with the public half of the test key, and its claims (issuer,
  Google's token audience, scope, expiry) are checked as Google checks them. It issues
  short-lived tokens (``lifetime``) and counts them (``issued``).
- ``POST /v1/projects/{p}/locations/{l}/publishers/google/models/{m}:streamGenerateContent?alt=sse``
  answers Gemini SSE; ``.../publishers/anthropic/models/{m}:streamRawPredict`` answers
  Anthropic SSE (and insists on ``anthropic_version: vertex-2023-10-16`` and no
  ``model`` in the body). Both want a bearer token this fake issued and has not revoked.

``keygen()`` makes a test service-account key (``cryptography``); tests load this file by
path (``--import-mode=importlib``).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from clasp_gateway.testing import AppThread, PromptCache

__all__ = ["Answer", "FakeVertex", "Failure", "Received", "keygen"]

PROJECT = "clasp-test-project"
LOCATION = "us-east5"
EMAIL = "clasp-gateway@clasp-test-project.iam.gserviceaccount.com"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
AUDIENCE = "https://oauth2.googleapis.com/token"


def keygen() -> rsa.RSAPrivateKey:
    """A fresh RSA key for one test module (2048 bits, as Google issues)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def service_account(key: rsa.RSAPrivateKey, token_uri: str, key_id: str = "test-key-1") -> dict[str, Any]:
    """A service-account key file's content for ``key``."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": PROJECT, "private_key_id": key_id, "private_key": pem,
            "client_email": EMAIL, "client_id": "1234567890", "token_uri": token_uri,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth"}


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@dataclass
class Answer:
    """A streamed answer: text (in pieces), then tool calls, then the end.

    ``end=False`` stops without the final event; ``error=(code, status, message)``
    sends an error event instead of the end."""

    text: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    usage: tuple[int, int] = (20, 5)
    end: bool = True
    error: tuple[int, str, str] | None = None
    cache_read: int = 0
    """Prompt tokens read from cache: Gemini's ``cachedContentTokenCount`` (inside
    ``promptTokenCount``), Anthropic's ``cache_read_input_tokens`` (beside ``input_tokens``)."""
    cache_write: int = 0
    """Anthropic's ``cache_creation_input_tokens``."""


@dataclass
class Failure:
    """An HTTP error before any event, in Google's shape."""

    status: int
    state: str
    message: str


Reply = Answer | Failure


@dataclass
class Received:
    """One model call as the fake received it (token already checked)."""

    publisher: str
    model: str
    method: str
    project: str
    location: str
    token: str
    body: Any


def validate(publisher: str, body: Any) -> str | None:
    """What Vertex would reject in a request body, or None."""
    if not isinstance(body, dict) or "model" in body:
        return "the body must be a JSON object without `model` (the model is in the URL)"
    if publisher == "anthropic":
        if body.get("anthropic_version") != "vertex-2023-10-16":
            return f"anthropic_version: expected vertex-2023-10-16, got {body.get('anthropic_version')!r}"
        if not isinstance(body.get("max_tokens"), int) or not body.get("messages"):
            return "messages and max_tokens are required"
        return None
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "contents must be a non-empty list"
    for i, item in enumerate(contents):
        if item.get("role") not in ("user", "model") or not item.get("parts"):
            return f"contents[{i}]: role user/model with parts required"
    return None


class FakeVertex:
    """The fake token endpoint and Vertex AI (``with FakeVertex(public_key) as gcp:``)."""

    def __init__(self, public_key: rsa.RSAPublicKey, *, key_id: str = "test-key-1") -> None:
        self.public_key = public_key
        self.key_id = key_id
        self.lifetime = 3600
        self.hold: threading.Event | None = None
        """While set to an unset event, the token endpoint waits for it (a slow endpoint)."""
        self.issued: list[str] = []
        self.grants_refused: list[str] = []
        self.revoked: set[str] = set()
        self.denied: set[str] = set()
        """Models the service account may not call (403 PERMISSION_DENIED)."""
        self.requests: list[Received] = []
        self.script: Callable[[Received], Reply] | None = None
        self.prompt_caches: dict[str, PromptCache] = {}
        """Per publisher (``google``: implicit prefix caching, ``anthropic``: breakpoints),
        the prompt cache that decides the usage of answers that set no cache counts."""
        self._queue: deque[Reply] = deque()
        self._server = AppThread(self._app, name="FakeVertex")
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    def queue(self, *replies: Reply) -> None:
        self._queue.extend(replies)

    # --- OAuth ---------------------------------------------------------------------------------

    def _check_assertion(self, assertion: str) -> str | None:
        try:
            head, claims, signature = assertion.split(".")
            header, payload = orjson.loads(_b64(head)), orjson.loads(_b64(claims))
            self.public_key.verify(_b64(signature), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return "Invalid JWT Signature."
        except (ValueError, orjson.JSONDecodeError):
            return "malformed JWT"
        now = time.time()
        if header.get("alg") != "RS256" or header.get("kid") != self.key_id:
            return f"unexpected JWT header {header}"
        # google-auth (as Google wants) names Google's token endpoint as the audience,
        # wherever the key file's token_uri points.
        if payload.get("iss") != EMAIL or payload.get("aud") != AUDIENCE:
            return "Invalid JWT: issuer or audience"
        if SCOPE not in str(payload.get("scope", "")).split():
            return "Invalid JWT: scope"
        if not (payload.get("iat", 0) - 300 <= now < payload.get("exp", 0)):
            return "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe."
        return None

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if self.hold is not None:
            await asyncio.to_thread(self.hold.wait, 10)
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        problem = self._check_assertion(str(form.get("assertion", "")))
        if problem is not None:
            self.grants_refused.append(problem)
            return web.json_response({"error": "invalid_grant", "error_description": problem}, status=400)
        token = f"ya29.fake-{len(self.issued) + 1}"
        self.issued.append(token)
        return web.json_response({"access_token": token, "expires_in": self.lifetime, "token_type": "Bearer"})

    # --- Vertex --------------------------------------------------------------------------------

    async def _predict(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        model, _, method = info["tail"].partition(":")
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        if token not in self.issued or token in self.revoked:
            return self._error(Failure(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. "
                                                               "Expected OAuth 2 access token."))
        publisher = info["publisher"]
        expected = "streamRawPredict" if publisher == "anthropic" else "streamGenerateContent"
        if method != expected or (publisher == "google" and request.query.get("alt") != "sse"):
            return self._error(Failure(400, "INVALID_ARGUMENT", f"unexpected method {method}?{request.query_string}"))
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self._error(Failure(400, "INVALID_ARGUMENT", "Invalid JSON payload received."))
        received = Received(publisher, model, method, info["project"], info["location"], token, body)
        self.requests.append(received)
        if model in self.denied:
            return self._error(Failure(403, "PERMISSION_DENIED", f"Permission 'aiplatform.endpoints.predict' denied "
                                                                 f"on resource '{model}' (or it may not exist)."))
        problem = validate(publisher, body)
        if problem is not None:
            return self._error(Failure(400, "INVALID_ARGUMENT", problem))
        reply = self._queue.popleft() if self._queue else (self.script(received) if self.script else Answer("ok"))
        if isinstance(reply, Failure):
            return self._error(reply)
        cache = self.prompt_caches.get(publisher)
        if cache is not None and not (reply.cache_read or reply.cache_write):
            use = cache.account(body, model)
            reported = use.prompt_tokens if publisher == "google" else use.prompt_tokens - use.read - use.written
            reply = dataclasses.replace(reply, usage=(reported, reply.usage[1]), cache_read=use.read,
                                        cache_write=use.written)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        events = self._anthropic(reply, model) if publisher == "anthropic" else self._gemini(reply, model)
        for name, data in events:
            prefix = f"event: {name}\n" if name else ""
            await response.write(f"{prefix}data: {orjson.dumps(data).decode()}\n\n".encode())
        await response.write_eof()
        return response

    @staticmethod
    def _gemini(reply: Answer, model: str) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        for start in range(0, len(reply.text), 6):
            out.append(("", {"candidates": [{"content": {"role": "model", "parts": [{"text": reply.text[start:start + 6]}]}}],
                             "modelVersion": model}))
        if reply.error is not None:
            code, state, message = reply.error
            out.append(("", {"error": {"code": code, "status": state, "message": message}}))
            return out
        if not reply.end:
            return out
        parts = [{"functionCall": {"name": name, "args": args}} for name, args in reply.calls]
        final: dict[str, Any] = {"finishReason": "STOP", "index": 0}
        if parts:
            final["content"] = {"role": "model", "parts": parts}
        usage: dict[str, Any] = {"promptTokenCount": reply.usage[0], "candidatesTokenCount": reply.usage[1],
                                 "totalTokenCount": sum(reply.usage)}
        if reply.cache_read:
            usage["cachedContentTokenCount"] = reply.cache_read
        out.append(("", {"candidates": [final], "modelVersion": model, "usageMetadata": usage}))
        return out

    @staticmethod
    def _anthropic(reply: Answer, model: str) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": {
            "id": "msg_vrtx_01", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "usage": {"input_tokens": reply.usage[0], "output_tokens": 1,
                                           "cache_creation_input_tokens": reply.cache_write,
                                           "cache_read_input_tokens": reply.cache_read}}})]
        block = 0
        if reply.text:
            out.append(("content_block_start", {"type": "content_block_start", "index": 0,
                                                "content_block": {"type": "text", "text": ""}}))
            for start in range(0, len(reply.text), 6):
                out.append(("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
                    "type": "text_delta", "text": reply.text[start:start + 6]}}))
            out.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
            block = 1
        if reply.error is not None:
            _, state, message = reply.error
            out.append(("error", {"type": "error", "error": {"type": state, "message": message}}))
            return out
        for n, (name, args) in enumerate(reply.calls):
            index = block + n
            out.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": f"toolu_vrtx_{n}", "name": name, "input": {}}}))
            text = orjson.dumps(args).decode()
            for start in range(0, len(text), 8):
                out.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                    "type": "input_json_delta", "partial_json": text[start:start + 8]}}))
            out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        if not reply.end:
            return out
        out.append(("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": "tool_use" if reply.calls else "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": reply.usage[1]}}))
        out.append(("message_stop", {"type": "message_stop"}))
        return out

    @staticmethod
    def _error(failure: Failure) -> web.Response:
        return web.json_response({"error": {"code": failure.status, "message": failure.message,
                                            "status": failure.state}}, status=failure.status)

    # --- lifecycle -------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{tail}",
                            self._predict)
        return app

    def start(self) -> FakeVertex:
        self.port = self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FakeVertex:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

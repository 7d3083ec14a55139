"""The fake upstream HTTP server: routing, auth, recording and delivery.

:class:`FakeUpstream` runs an ``aiohttp`` low-level server on 127.0.0.1 in a
daemon thread with its own event loop, so plain synchronous tests (and the
gateway under test, in any thread or loop) can talk to it.  Everything it
receives is recorded; what it answers comes from :meth:`FakeUpstream.queue`,
then :attr:`FakeUpstream.script`, then ``Text("ok")``.  The byte formats live
in :mod:`clasp_gateway.testing.fakes.wire`; this module only decides *when* bytes are written
(delays, stalls, cuts, fragmentation).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

from ..processes import free_port
from .flavors import EXTRA_FLAVORS, FlavorSpec
from .fragment import fragment_event
from .prompt_cache import PromptCache
from .record import Recorded
from .replies import Cut, Error, Hang, Html, Malformed, Raw, Reasoning, Reply, Script, Text, ToolCalls
from .wire import AzureWire, Ctx, OllamaNativeWire, OllamaWire, OpenAIWire, Wire, html_page

__all__ = ["FLAVORS", "FakeUpstream", "free_port"]

FLAVORS = ("openai", "azure", "ollama", "json_stream", "fragmented")
"""Supported provider flavors."""

_OPENAI_LIKE = ("openai", "json_stream", "fragmented")
_AZURE_CHAT = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")
_FRAGMENT_PAUSE = 0.001  # seconds between fragmented writes, so reads really split


@dataclass
class _Payload:
    """A fully rendered response: a body, or stream events plus terminator."""

    status: int
    headers: dict[str, str]
    body: bytes | None = None
    events: list[bytes] | None = None
    terminator: bytes | None = None


class FakeUpstream:
    """A fake LLM provider speaking one provider's wire format.

    Args:
        flavor: ``"openai"``, ``"azure"``, ``"ollama"``, ``"json_stream"`` or
            ``"fragmented"``.
        require_key: ``None`` – the provider's default (OpenAI-like flavors
            require an ``Authorization: Bearer`` header, Azure an ``api-key``
            or bearer header, Ollama nothing); ``True`` – require a key, any
            value; ``False`` – never check; a string – require exactly this
            key (bearer token, or Azure ``api-key``), else a provider-shaped 401.
        model: force the response ``model`` field (default: echo the request's
            model; Azure: ``"gpt-4o-2024-08-06"``).
        models: ids listed by ``GET /v1/models`` (and Ollama's ``/api/tags``).
        deployments: Azure only – if given, other deployment names get
            Azure's ``DeploymentNotFound`` 404.
        chunk_delay: default seconds between stream events.
        response_headers: ``fn(recorded) -> headers`` added to every chat answer
            (success or error; an :class:`Error`'s own ``headers`` win), e.g. the
            rate-limit headers a provider sends for the key the request used.
        seed: seed for ids and fragmentation (runs are reproducible).
        host, port: where to listen (port 0 = any free port).
        prompt_cache: ``True`` to cache prompts as the provider does (OpenAI-style
            automatic prefix caching for OpenAI-compatible flavors, DeepSeek's 64-token
            units, Gemini's implicit caching, Anthropic's breakpoints) and report it in
            the provider's usage fields; or a :class:`PromptCache` of one's own.
            ``fake.prompt_cache.prompts`` then holds every rendered prompt.
    """

    def __init__(
        self,
        flavor: str = "openai",
        *,
        require_key: str | bool | None = None,
        model: str | None = None,
        models: list[str] | None = None,
        deployments: list[str] | None = None,
        chunk_delay: float = 0.0,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        response_headers: Callable[[Recorded], dict[str, str] | None] | None = None,
        prompt_cache: PromptCache | bool | None = None,
    ) -> None:
        spec: FlavorSpec | None = EXTRA_FLAVORS.get(flavor)
        if flavor not in FLAVORS and spec is None:
            known = (*FLAVORS, *EXTRA_FLAVORS)
            raise ValueError(f"unknown flavor {flavor!r}; expected one of {known}")
        self._spec = spec
        self.flavor = flavor
        self.require_key = require_key
        self.model = model
        self.models = (
            list(models) if models else list(spec.models) if spec is not None and spec.models
            else (["llama3.2:latest"] if flavor == "ollama" else ["gpt-4o", "gpt-4o-mini"])
        )
        self.deployments = deployments
        self.chunk_delay = chunk_delay
        self.response_headers = response_headers
        self.seed = seed
        self.host = host
        self.port = port
        self.prompt_cache: PromptCache | None = (
            default_prompt_cache(flavor) if prompt_cache is True else prompt_cache or None
        )
        self.requests: list[Recorded] = []
        self.errors: list[BaseException] = []
        self.script: Script | None = None
        self._queue: deque[Reply] = deque()
        self._cond = threading.Condition()
        self._count = 0
        self._wire: Wire = spec.wire(model) if spec is not None else {
            "openai": OpenAIWire,
            "json_stream": OpenAIWire,
            "fragmented": OpenAIWire,
            "azure": AzureWire,
            "ollama": OllamaWire,
        }[flavor](model)
        self._native = OllamaNativeWire(model)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.ServerRunner | None = None
        self._stopping: asyncio.Event | None = None

    # ------------------------------------------------------------------ API

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The base URL a client is configured with (``…/v1`` for OpenAI-likes)."""
        if self._spec is not None:
            return self.origin + self._spec.base_path
        return self.origin + "/v1" if self.flavor in _OPENAI_LIKE else self.origin

    @property
    def last(self) -> Recorded:
        """The most recent request."""
        return self.requests[-1]

    @property
    def queued(self) -> int:
        """How many queued replies are still unused."""
        with self._cond:
            return len(self._queue)

    def queue(self, *replies: Reply) -> FakeUpstream:
        """Append replies used, first in first out, by the next chat requests."""
        with self._cond:
            self._queue.extend(replies)
        return self

    def reset(self) -> None:
        """Forget recorded requests and errors; drop the queue and the script."""
        with self._cond:
            self.requests.clear()
            self.errors.clear()
            self._queue.clear()
            self.script = None

    def wait_for(self, n: int = 1, timeout: float = 5.0) -> Recorded:
        """Block until at least ``n`` requests were received; return the n-th."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(f"{self.flavor}: {len(self.requests)} request(s) after {timeout}s, wanted {n}")
            return self.requests[n - 1]

    def start(self) -> FakeUpstream:
        """Bind the port and serve from a daemon thread; returns once listening."""
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(512)
        sock.setblocking(False)
        self.port = int(sock.getsockname()[1])
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self._start_async(sock))
            except BaseException as exc:  # surfaced by start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"FakeUpstream-{self.flavor}-{self.port}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop serving: hung requests end, open connections are closed."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop_async(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            self._thread = None
            self._loop = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FakeUpstream({self.flavor!r}, base_url={self.base_url!r}, requests={len(self.requests)})"

    # ------------------------------------------------------------ lifecycle

    async def _start_async(self, sock: socket.socket) -> None:
        self._stopping = asyncio.Event()
        loop = asyncio.get_running_loop()

        def make_request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> BaseRequest:
            return BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=1 << 30)

        server = web.Server(self._handle, request_factory=make_request, handler_cancellation=True, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, backlog=512).start()

    async def _stop_async(self) -> None:
        assert self._stopping is not None
        self._stopping.set()
        await asyncio.sleep(0)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server stops first; True if it is stopping."""
        assert self._stopping is not None
        if seconds <= 0:
            return self._stopping.is_set()
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    # -------------------------------------------------------------- routing

    def _route(self, method: str, path: str) -> str | None:
        if self.flavor == "azure":
            return "chat" if method == "POST" and _AZURE_CHAT.match(path) else None
        routes = {("POST", "/v1/chat/completions"): "chat", ("GET", "/v1/models"): "models"}
        if self.flavor == "ollama":
            routes.update(
                {
                    ("POST", "/api/chat"): "native_chat",
                    ("GET", "/api/tags"): "tags",
                    ("POST", "/api/show"): "show",
                    ("GET", "/api/version"): "version",
                    ("GET", "/"): "root",
                    ("HEAD", "/"): "root",
                }
            )
        return routes.get((method, path))

    def _ctx(self, rec: Recorded, route: str, n: int) -> Ctx:
        body = rec.json
        opts = body.get("stream_options")
        if route == "native_chat":
            stream = body.get("stream", True) is not False  # Ollama streams unless told not to
        else:
            stream = body.get("stream") is True and self.flavor != "json_stream"
        model = body.get("model")
        messages = body.get("messages")
        return Ctx(
            model=model if isinstance(model, str) else "",
            messages=messages if isinstance(messages, list) else [],
            stream=stream,
            include_usage=isinstance(opts, dict) and bool(opts.get("include_usage")),
            rng=random.Random(self.seed * 1_000_003 + n),
            fragmented=self.flavor == "fragmented",
            api_version=rec.query.get("api-version", ""),
            extra_headers=dict((self.response_headers(rec) or {}) if self.response_headers else {}),
        )

    def _json(self, status: int, obj: Any, wire: Wire, extra: dict[str, str] | None = None) -> web.Response:
        headers = {"Content-Type": wire.json_content_type, **(extra or {})}
        return web.Response(status=status, body=wire.encode(obj), headers=headers)

    def _not_found(self, rec: Recorded) -> web.Response:
        if self.flavor == "azure":
            return self._json(404, {"error": {"code": "404", "message": "Resource not found"}}, self._wire)
        if self.flavor == "ollama" and not rec.path.startswith("/v1/"):
            return web.Response(status=404, text="404 page not found")
        message = f"Invalid URL ({rec.method} {rec.path})"
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
        return self._json(404, body, self._wire)

    def _check_auth(self, rec: Recorded, route: str, ctx: Ctx) -> web.Response | None:
        """A provider-shaped 401 if the credentials do not satisfy ``require_key``."""
        policy = self.require_key
        if policy is None:
            policy = self.flavor != "ollama"
        if policy is False:
            return None
        bearer = rec.bearer
        api_key = rec.headers.get("api-key") if self.flavor == "azure" else None
        given = [k for k in (api_key, bearer) if k]
        ok = bool(given) if policy is True else policy in given
        if ok:
            return None
        if self.flavor == "azure":
            return self._json(401, self._wire.error(401, ctx), self._wire)
        if route == "native_chat" or self.flavor == "ollama" and not rec.path.startswith("/v1/"):
            return self._json(401, {"error": "unauthorized"}, self._native)
        if not given and isinstance(self._wire, OpenAIWire):
            return self._json(401, self._wire.missing_key_error(), self._wire)
        body = self._wire.error(401, ctx)
        if isinstance(body, dict) and given and isinstance(self._wire, OpenAIWire):
            token = given[0]
            masked = token[:3] + "*" * max(0, len(token) - 7) + token[-4:] if len(token) > 7 else "*" * len(token)
            body["error"]["message"] = (
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
        return self._json(401, body, self._wire)

    def _info(self, route: str) -> web.Response:
        """Answers for the non-chat endpoints (model lists, Ollama metadata)."""
        owner = "library" if self.flavor == "ollama" else "system"
        if route == "models":
            data = [{"id": m, "object": "model", "created": 1715367049, "owned_by": owner} for m in self.models]
            return self._json(200, {"object": "list", "data": data}, self._wire)
        details = {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "3.2B",
            "quantization_level": "Q4_K_M",
        }
        if route == "tags":
            models = [
                {
                    "name": m,
                    "model": m,
                    "modified_at": "2024-10-01T12:00:00.000000000Z",
                    "size": 2019393189,
                    "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                    "details": details,
                }
                for m in self.models
            ]
            return self._json(200, {"models": models}, self._native)
        if route == "show":
            show = {
                "modelfile": "FROM llama3.2\n",
                "parameters": 'stop                           "<|eot_id|>"',
                "template": "{{ .Prompt }}",
                "details": details,
                "model_info": {
                    "general.architecture": "llama",
                    "general.parameter_count": 3212749888,
                    "llama.context_length": 131072,
                },
                "capabilities": ["completion", "tools"],
                "modified_at": "2024-10-01T12:00:00.000000000Z",
            }
            return self._json(200, show, self._native)
        if route == "version":
            return self._json(200, {"version": "0.5.7"}, self._native)
        return web.Response(text="Ollama is running")

    # -------------------------------------------------------------- handler

    async def _handle(self, request: BaseRequest) -> web.StreamResponse:
        raw = await request.read()
        rec = Recorded.build(request.method, request.path, dict(request.query), request.headers, raw)
        with self._cond:
            n = self._count
            self._count += 1
            self.requests.append(rec)
            self._cond.notify_all()
        try:
            return await self._dispatch(request, rec, n)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug in a script or in the fakes: make it visible
            self.errors.append(exc)
            return web.Response(status=500, text="FakeUpstream internal error\n" + traceback.format_exc())

    async def _dispatch(self, request: BaseRequest, rec: Recorded, n: int) -> web.StreamResponse:
        if self._spec is not None:
            return await self._dispatch_spec(self._spec, request, rec, n)
        route = self._route(rec.method, rec.path)
        if route is None:
            return self._not_found(rec)
        ctx = self._ctx(rec, route, n)
        wire = self._native if route == "native_chat" else self._wire
        if self.flavor == "azure" and not ctx.api_version:
            return self._json(404, {"error": {"code": "404", "message": "Resource not found"}}, wire)
        denied = self._check_auth(rec, route, ctx)
        if denied is not None:
            return denied
        if self.flavor == "azure" and self.deployments is not None:
            match = _AZURE_CHAT.match(rec.path)
            if match and match.group(1) not in self.deployments:
                return self._json(404, AzureWire().deployment_not_found(), wire)
        if route not in ("chat", "native_chat"):
            return self._info(route)
        refused = self._refuse_cache_control(rec, wire)
        if refused is not None:
            return await self._serve(request, refused, wire, ctx)
        self._account(rec, ctx)
        return await self._serve(request, self._next_reply(rec), wire, ctx)

    async def _dispatch_spec(self, spec: FlavorSpec, request: BaseRequest, rec: Recorded, n: int) -> web.StreamResponse:
        """Serve a registered flavor (see :mod:`clasp_gateway.testing.fakes.flavors`)."""
        wire = self._wire
        route = spec.route(rec.method, rec.path)
        if route is None:
            if spec.not_found is not None:
                status, body = spec.not_found(rec)
                return self._json(status, body, wire)
            return web.Response(status=404, text="Not Found")
        ctx = self._ctx(rec, route, n)
        if spec.adjust is not None:
            ctx = spec.adjust(rec, ctx)
        policy = spec.requires_key if self.require_key is None else self.require_key
        if policy is not False:
            given = spec.credential(rec)
            if not (given if policy is True else given == policy):
                status, body = spec.unauthorized(rec, given)
                return self._json(status, body, wire, wire.headers(ctx))
        if route != "chat":
            status, body = spec.info(route, self.models) if spec.info is not None else (404, {})
            return self._json(status, body, wire)
        refusal = spec.check(rec, ctx) if spec.check is not None else None
        if refusal is None:
            refusal = self._refuse_cache_control(rec, wire)
        if refusal is None:
            self._account(rec, ctx)
        reply = refusal if refusal is not None else self._next_reply(rec)
        return await self._serve(request, reply, wire, ctx)

    def _account(self, rec: Recorded, ctx: Ctx) -> None:
        """Let the provider's prompt cache see the request (its usage reports it)."""
        if self.prompt_cache is not None:
            ctx.cache = self.prompt_cache.account(rec.json, ctx.model)

    @staticmethod
    def _refuse_cache_control(rec: Recorded, wire: Wire) -> Reply | None:
        """OpenAI-compatible APIs validate messages and tools strictly: an Anthropic
        ``cache_control`` anywhere in them is a 400 (OpenAI's wording)."""
        if not isinstance(wire, (OpenAIWire, OllamaWire)):
            return None
        where = cache_control_path(rec.json)
        if where is None:
            return None
        return Error(400, body={"error": {
            "message": f"Additional properties are not allowed ('cache_control' was unexpected) - '{where}'",
            "type": "invalid_request_error", "param": where, "code": None}})

    def _next_reply(self, rec: Recorded) -> Reply:
        with self._cond:
            if self._queue:
                return self._queue.popleft()
            script = self.script
        if script is not None:
            reply = script(rec.json, rec)
            if reply is not None:
                return reply
        return Text("ok")

    # ------------------------------------------------------------- delivery

    async def _serve(
        self,
        request: BaseRequest,
        reply: Reply,
        wire: Wire,
        ctx: Ctx,
        *,
        cut: int | None = None,
        stall: tuple[int, float] | None = None,
        chunk_delay: float | None = None,
    ) -> web.StreamResponse:
        """Answer ``reply``, unwrapping :class:`Cut` / :class:`Hang`."""
        if reply.delay and await self._sleep(reply.delay):
            return self._abort(request)
        own_delay = getattr(reply, "chunk_delay", None)
        if own_delay is not None:
            chunk_delay = own_delay
        if isinstance(reply, Cut):
            if reply.before_headers:
                return self._abort(request)
            return await self._serve(
                request, reply.reply, wire, ctx, cut=reply.after_chunks, stall=stall, chunk_delay=chunk_delay
            )
        if isinstance(reply, Hang):
            if reply.reply is None:
                await self._sleep(reply.seconds)
                return self._abort(request)
            if reply.after_chunks is None:
                if await self._sleep(reply.seconds):
                    return self._abort(request)
                return await self._serve(request, reply.reply, wire, ctx, cut=cut, chunk_delay=chunk_delay)
            return await self._serve(
                request,
                reply.reply,
                wire,
                ctx,
                cut=cut,
                stall=(reply.after_chunks, reply.seconds),
                chunk_delay=chunk_delay,
            )
        payload = self._render(reply, wire, ctx)
        delay = self.chunk_delay if chunk_delay is None else chunk_delay
        return await self._deliver(request, payload, ctx, cut=cut, stall=stall, chunk_delay=delay)

    def _render(self, reply: Reply, wire: Wire, ctx: Ctx) -> _Payload:
        """Turn a terminal reply into bytes for this wire."""
        headers = {**wire.headers(ctx), **ctx.extra_headers}
        if isinstance(reply, Error):
            # Flavors may add status-specific headers (retry-after on a 429).
            error_headers = getattr(wire, "error_headers", None)
            if error_headers is not None:
                headers.update(error_headers(reply.status, ctx))
            body = wire.error(reply.status, ctx) if reply.body is None else reply.body
            if isinstance(body, str):
                try:
                    json.loads(body)
                    ctype = "application/json"
                except ValueError:
                    ctype = "text/plain; charset=utf-8"
                data = body.encode()
            else:
                ctype, data = wire.json_content_type, wire.encode(body)
            return _Payload(reply.status, {**headers, "Content-Type": ctype, **(reply.headers or {})}, body=data)
        if isinstance(reply, Raw):
            raw_headers = {"Content-Type": reply.content_type, **(reply.headers or {})}
            if reply.events is not None:
                return _Payload(reply.status, raw_headers, events=list(reply.events))
            return _Payload(reply.status, raw_headers, body=reply.body or b"")
        if isinstance(reply, Html):
            page = html_page(reply.status).encode()
            return _Payload(reply.status, {"Content-Type": "text/html; charset=utf-8"}, body=page)
        if isinstance(reply, Malformed):
            turn = wire.turn(Text("This reply is broken."), ctx)
            if ctx.stream:
                events = [wire.events(turn, ctx)[0], wire.malformed_event(turn, ctx)]
                headers["Content-Type"] = wire.stream_content_type
                return _Payload(200, headers, events=events, terminator=wire.terminator)
            whole = wire.encode(wire.completion(turn, ctx))
            return _Payload(200, {**headers, "Content-Type": wire.json_content_type}, body=whole[: len(whole) // 2])
        if isinstance(reply, (Text, ToolCalls, Reasoning)):
            turn = wire.turn(reply, ctx)
            if ctx.stream:
                headers["Content-Type"] = wire.stream_content_type
                return _Payload(200, headers, events=wire.events(turn, ctx), terminator=wire.terminator)
            headers["Content-Type"] = wire.json_content_type
            return _Payload(200, headers, body=wire.encode(wire.completion(turn, ctx)))
        raise TypeError(f"FakeUpstream cannot serve {reply!r}")

    async def _deliver(
        self,
        request: BaseRequest,
        payload: _Payload,
        ctx: Ctx,
        *,
        cut: int | None,
        stall: tuple[int, float] | None,
        chunk_delay: float,
    ) -> web.StreamResponse:
        """Write a rendered payload, applying stalls, cuts and fragmentation."""
        if payload.events is None:
            body = payload.body or b""
            if cut is None and stall is None:
                return web.Response(status=payload.status, body=body, headers=payload.headers)
            resp = web.StreamResponse(status=payload.status, headers=payload.headers)
            resp.content_length = len(body)
            await resp.prepare(request)
            if stall is not None and await self._sleep(stall[1]):
                return await self._abort_flushed(request, resp)
            if cut is None:
                await resp.write(body)
                await resp.write_eof()
                return resp
            if cut > 0:
                await resp.write(body[: len(body) // 2])
            return await self._abort_flushed(request, resp)

        resp = web.StreamResponse(status=payload.status, headers=payload.headers)
        await resp.prepare(request)
        events = payload.events
        for i, event in enumerate(events):
            if cut is not None and i >= cut:
                return await self._abort_flushed(request, resp)
            if stall is not None and i == stall[0] and await self._sleep(stall[1]):
                return await self._abort_flushed(request, resp)
            if i and chunk_delay > 0 and await self._sleep(chunk_delay):
                return await self._abort_flushed(request, resp)
            await self._write(resp, event, ctx)
        if cut is not None:
            return await self._abort_flushed(request, resp)
        if stall is not None and stall[0] >= len(events) and await self._sleep(stall[1]):
            return await self._abort_flushed(request, resp)
        if payload.terminator:
            await self._write(resp, payload.terminator, ctx)
        await resp.write_eof()
        return resp

    async def _write(self, resp: web.StreamResponse, event: bytes, ctx: Ctx) -> None:
        if not ctx.fragmented:
            await resp.write(event)
            return
        for piece in fragment_event(event, ctx.rng):
            await resp.write(piece)
            await asyncio.sleep(_FRAGMENT_PAUSE)

    @staticmethod
    def _abort(request: BaseRequest, resp: web.StreamResponse | None = None) -> web.StreamResponse:
        """Reset the connection (RST): no terminating chunk, no clean close."""
        transport = request.transport
        if transport is not None:
            transport.abort()
        return resp if resp is not None else web.Response()

    async def _abort_flushed(self, request: BaseRequest, resp: web.StreamResponse) -> web.StreamResponse:
        """Abort once the bytes already written have left the process."""
        transport = request.transport
        for _ in range(200):
            if transport is None or transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.002)  # let the kernel hand the last segment over before the RST
        return self._abort(request, resp)


def cache_control_path(body: dict[str, Any]) -> str | None:
    """Where a ``cache_control`` key sits in a chat body's messages or tools, or ``None``."""
    for i, msg in enumerate(body.get("messages") or ()):
        if not isinstance(msg, dict):
            continue
        if "cache_control" in msg:
            return f"messages.[{i}]"
        content = msg.get("content")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if isinstance(part, dict) and "cache_control" in part:
                return f"messages.[{i}].content.[{j}]"
    for i, tool in enumerate(body.get("tools") or ()):
        if isinstance(tool, dict) and ("cache_control" in tool or "cache_control" in (tool.get("function") or {})):
            return f"tools.[{i}]"
    return None


def default_prompt_cache(flavor: str) -> PromptCache:
    """The prompt cache a provider has, as the fake of ``flavor`` applies it."""
    if flavor == "anthropic":
        return PromptCache(api="anthropic", kind="breakpoints", min_tokens=1024, unit=1)
    if flavor == "gemini":  # Gemini 2.5's implicit cache: from 2,048 tokens (ai.google.dev, 2026)
        return PromptCache(api="gemini", kind="prefix", min_tokens=2048, unit=1)
    if flavor == "deepseek":
        return PromptCache(api="openai", kind="prefix", min_tokens=64, unit=64)
    return PromptCache(api="openai", kind="prefix", min_tokens=1024, unit=128)

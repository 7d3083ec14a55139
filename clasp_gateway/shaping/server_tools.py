"""Server-side tools: tools the gateway runs itself, invisible to the client.

Plugins register tools through ``register_tools``; ``server_tools:`` in clasp.yaml says
which requests get them. For such a request the gateway adds the tools to the upstream
request and wraps the upstream stream in a :class:`ToolLoop`, at the canonical level, so
``/v1/messages`` and ``/v1/chat/completions`` behave the same:

- Text and reasoning stream to the client as they arrive, in every round.
- Tool calls are held until the round ends. If the model called server tools, the
  gateway runs them (concurrently, each with a timeout; an exception or a timeout
  becomes an error result the model sees, never a failed request), appends the
  assistant's calls and the results to the conversation, and asks the upstream again.
  Otherwise the client's tool calls, the finish reason and the usage summed over all
  rounds end the answer. The client never sees a server tool, its call or its result.
- **A server call and a client call in the same round**: the server tools run, the
  client calls of that round are dropped, and the model is asked again with the
  results. The client (Claude Code) executes every ``tool_use`` it receives, often with
  side effects, so it must only receive calls the model made after seeing the server
  results; and the gateway keeps no state between client requests (replicas behind a
  load balancer), so a result held for "the next turn" could be lost. The price is one
  extra upstream round in that case, and client tool calls arrive whole at the end of
  the round instead of streamed argument by argument, when server tools are offered.
- At most ``max_iterations`` rounds run server tools; a server call after that is not
  run and the answer ends with what the model produced (a short notice if nothing).
- Server results live only inside one client request: the client's history does not
  hold them, so the model restates what it needs in its answer.

Each server call is reported to ``record`` as ``kind: "tool_call"`` (name, duration,
ok). When no key, team or default enables a tool, :meth:`ServerTools.build` returns
``None`` and the pipeline pays nothing.
"""

from __future__ import annotations

import asyncio
import fnmatch
import inspect
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from ..config import Config, ConfigError
from ..redact import redact
from ..registrations import ToolRegistration
from ..types import KEEPALIVE, PING_INTERVAL, Attempt, CanonicalRequest, Chunk, RequestContext, UpstreamStream, Usage
from ..validation import Field, Integer, ListOf, MapOf, Number, Section, String

log = logging.getLogger("clasp.server_tools")

__all__ = [
    "TOOL_ERROR_PREFIX",
    "ServerTool",
    "ServerTools",
    "ServerToolsError",
    "ServerToolsSettings",
    "RoundServices",
    "ToolContext",
    "ToolLoop",
]

TOOL_ERROR_PREFIX = "[tool error] "
"""Start of a result the model sees when a server tool failed (the same marker the
Claude plugin uses for a client ``tool_result`` with ``is_error``)."""

MAX_RESULT_CHARS = 50_000
"""Longer tool results are cut (a runaway tool must not blow the context window)."""

LIMIT_NOTICE = "(the gateway stopped after {n} rounds of server tool calls without an answer)"
"""Text sent when the last allowed round only called server tools and nothing else was said."""

Handler = Callable[[dict[str, Any], "ToolContext"], "str | Awaitable[str]"]


class OpenRound(Protocol):
    """Opens one upstream round through the pipeline (routing, retries, fallback) and
    returns its stream, first chunk in hand (``Gateway._open``). ``continuation``: a
    later round of the same request (``before_call`` is not asked again)."""

    def __call__(
        self, ctx: RequestContext, request: CanonicalRequest, *, stream: bool, continuation: bool = False
    ) -> Awaitable[UpstreamStream]: ...


AttemptEnded = Callable[[RequestContext, Attempt], Awaitable[None]]
"""Closes an attempt's books: ``after_attempt`` and its ``record`` event (``Gateway.after_attempt``)."""

Recorder = Callable[[RequestContext, dict[str, Any]], Awaitable[None]]
"""Hands an event to every ``record`` implementation (``Gateway.record``); never raises."""


@dataclass(slots=True, frozen=True)
class RoundServices:
    """What a tool loop needs from the gateway, as callables: it reaches nothing else."""

    open_round: OpenRound
    attempt_ended: AttemptEnded
    record: Recorder


class ServerToolsError(ConfigError, RuntimeError):
    """``server_tools`` in clasp.yaml is invalid (a RuntimeError too, so ``clasp serve``
    prints it for a person instead of a traceback)."""


@dataclass(slots=True)
class ToolContext:
    """What a tool handler knows about the call it serves."""

    request: RequestContext
    """The client request (principal, public model, request id, ``state``)."""
    config: Config
    """The gateway's configuration (``config.section("my_tool")`` for settings)."""
    call_id: str
    """The upstream's id for this tool call."""
    round: int
    """1 for the first server round of this request, 2 for the next..."""


@dataclass(slots=True, frozen=True)
class ServerTool:
    """One registered tool: its canonical (OpenAI function) spec and its handler."""

    name: str
    description: str
    input_schema: dict[str, Any]
    handler: Handler
    is_async: bool

    @property
    def spec(self) -> dict[str, Any]:
        """The tool as it is offered upstream (an OpenAI ``tools`` entry)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.input_schema},
        }


@dataclass(slots=True, frozen=True)
class ServerToolsSettings:
    """The ``server_tools:`` section of clasp.yaml."""

    enabled: tuple[str, ...] = ()
    """Tools every request gets by default."""
    models: tuple[str, ...] = ()
    """Public model names (globs) whose requests get server tools; empty = all."""
    teams: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per team: the tools its keys get instead of ``enabled``."""
    max_iterations: int = 5
    """Rounds of server tool calls per client request, at most."""
    timeout: float = 30.0
    """Seconds one tool call may take before the model gets a timeout error instead."""


_TOOL_NAMES = ListOf(String(non_empty=True), expected="a list of tool names")

SERVER_TOOLS = Section({
    "enabled": Field(_TOOL_NAMES, factory=list),
    "models": Field(ListOf(String(non_empty=True), expected="a list of model names or globs"), factory=list),
    "teams": Field(MapOf(_TOOL_NAMES, expected="a mapping of team name to tool names"), factory=dict),
    "max_iterations": Field(Integer(1), 5),
    "timeout": Field(Number(above=0, expected="a number of seconds > 0"), 30.0),
})
"""``server_tools:`` of clasp.yaml (see :class:`ServerToolsSettings`)."""


def parse_settings(config: Config) -> ServerToolsSettings:
    """Validate ``server_tools:`` (and ``metadata.server_tools`` of keys) or raise
    :class:`ServerToolsError` listing every problem."""
    problems: list[str] = []
    raw = config.raw.get("server_tools")
    if raw is not None and not isinstance(raw, dict):
        raise ServerToolsError(config.source, [f"server_tools: expected a mapping, got {type(raw).__name__}"])
    if raw is not None and isinstance(raw.get("teams"), dict):  # `contractors:` (null) is an empty list
        raw = {**raw, "teams": {team: [] if names is None else names for team, names in raw["teams"].items()}}
    v = SERVER_TOOLS.parse(raw, "server_tools", problems)
    for i, key in enumerate(config.keys):
        if "server_tools" in key.metadata:
            _TOOL_NAMES.parse(key.metadata["server_tools"], f"keys.{i}.metadata.server_tools", problems)
    if problems:
        raise ServerToolsError(config.source, problems)
    teams = {str(team): tuple(names) for team, names in v["teams"].items()}
    return ServerToolsSettings(tuple(v["enabled"]), tuple(v["models"]), teams, v["max_iterations"], v["timeout"])


def _make_tool(registration: ToolRegistration) -> ServerTool:
    """The :class:`ServerTool` of one registration (checked when it was registered)."""
    handler = registration.handler
    is_async = inspect.iscoroutinefunction(handler) or (
        not inspect.isroutine(handler) and inspect.iscoroutinefunction(type(handler).__call__)
    )
    return ServerTool(registration.name, registration.description, registration.input_schema, handler, is_async)


class ServerTools:
    """The registered tools and which requests get them (one per gateway)."""

    def __init__(self, tools: dict[str, ServerTool], settings: ServerToolsSettings, config: Config) -> None:
        self.tools = tools
        self.settings = settings
        self.config = config
        self._team = {team: tuple(tools[n] for n in names) for team, names in settings.teams.items()}
        self._default = tuple(tools[n] for n in settings.enabled)
        self._model_ok: dict[str, bool] = {}

    @classmethod
    def build(cls, registrations: Iterable[ToolRegistration], config: Config) -> ServerTools | None:
        """Check ``server_tools:`` against the registered tools (each checked, and unique
        by name, when registered: ``registrations.tools``); ``None`` when no request can
        get a server tool (then the pipeline skips this module entirely)."""
        tools = {r.name: _make_tool(r) for r in registrations}
        settings = parse_settings(config)
        wanted: list[tuple[str, tuple[str, ...]]] = [("server_tools.enabled", settings.enabled)]
        wanted += [(f"server_tools.teams.{t}", names) for t, names in settings.teams.items()]
        wanted += [
            (f"keys.{i}.metadata.server_tools", tuple(k.metadata["server_tools"]))
            for i, k in enumerate(config.keys) if "server_tools" in k.metadata
        ]
        registered = ", ".join(sorted(tools)) or "none: install a tool plugin such as clasp-tool-docs"
        problems = [
            f"{path}: no plugin registers a tool named {name!r} (registered tools: {registered})"
            for path, names in wanted for name in names if name not in tools
        ]
        if problems:
            raise ServerToolsError(config.source, problems)
        if not any(names for _, names in wanted):
            return None
        return cls(tools, settings, config)

    def for_request(self, ctx: RequestContext, request: CanonicalRequest) -> list[ServerTool]:
        """The server tools this request gets (often none)."""
        if "background" in ctx.traits or request.get("tool_choice") == "none":
            return []  # tiny helper calls (titles, quota probes), or a client that wants no tools
        if self.settings.models:
            ok = self._model_ok.get(ctx.public_model)
            if ok is None:
                ok = any(fnmatch.fnmatchcase(ctx.public_model, g) for g in self.settings.models)
                if len(self._model_ok) < 10_000:
                    self._model_ok[ctx.public_model] = ok
            if not ok:
                return []
        principal = ctx.principal
        chosen = self._default
        if principal is not None:
            if "server_tools" in principal.metadata:
                # (Checked at start-up for keys in clasp.yaml; an auth plugin's principal may
                # name anything, so unknown names are skipped rather than failing the request.)
                names = principal.metadata["server_tools"]
                chosen = tuple(self.tools[n] for n in names if n in self.tools) if isinstance(names, list) else ()
            elif principal.team is not None and principal.team in self._team:
                chosen = self._team[principal.team]
        if not chosen:
            return []
        # A client tool with the same name wins: the client asked for its own tool.
        client = {
            (t.get("function") or {}).get("name") for t in request.get("tools") or () if isinstance(t, dict)
        }
        return [t for t in chosen if t.name not in client]

    async def open(
        self, services: RoundServices, ctx: RequestContext, request: CanonicalRequest,
        tools: list[ServerTool], *, stream: bool,
    ) -> UpstreamStream:
        """Open the first round and return the stream the client reads (the loop).
        ``services``: how to open a round and keep the books (the gateway's)."""
        loop = ToolLoop(services, ctx, request, tools, self.settings, self.config, stream=stream)
        return await loop.start()


# --- one request's loop ---------------------------------------------------------------------


class _Call:
    """One tool call while its round streams."""

    __slots__ = ("id", "name", "args")

    def __init__(self, call_id: str | None) -> None:
        self.id = call_id
        self.name = ""
        self.args: list[str] = []

    @property
    def arguments(self) -> str:
        return "".join(self.args)


class _Round:
    """What one upstream answer said, apart from the text already passed on."""

    __slots__ = ("text", "calls", "by_index", "by_id", "finish", "usage", "chunk_id")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.calls: list[_Call] = []
        self.by_index: dict[int, _Call] = {}
        self.by_id: dict[str, _Call] = {}
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None
        self.chunk_id = ""

    def add_call(self, delta: dict[str, Any]) -> None:
        raw_id = delta.get("id") if isinstance(delta.get("id"), str) and delta.get("id") else None
        index = delta.get("index")
        call: _Call | None = None
        if type(index) is int:
            call = self.by_index.get(index)
            if call is not None and raw_id and call.id and raw_id != call.id:
                call = None  # an index reused for a new call
        elif raw_id is not None:
            call = self.by_id.get(raw_id)
        elif self.calls:
            fn = delta.get("function")
            if not (isinstance(fn, dict) and fn.get("name")):
                call = self.calls[-1]  # no index, id or name: a continuation
        if call is None:
            call = _Call(raw_id)
            self.calls.append(call)
        if type(index) is int:
            self.by_index[index] = call
        if raw_id and not call.id:
            call.id = raw_id
        if call.id:
            self.by_id[call.id] = call
        fn = delta.get("function")
        if isinstance(fn, dict):
            if isinstance(fn.get("name"), str) and not call.name:
                call.name = fn["name"]
            args = fn.get("arguments")
            if args is not None:
                call.args.append(args if isinstance(args, str) else orjson.dumps(args).decode())


def _add_usage(total: dict[str, Any] | None, usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Sum two OpenAI ``usage`` objects field by field (nested details included)."""
    if not usage:
        return total
    if total is None:
        return _add_usage({}, usage)
    for key, value in usage.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            current = total.get(key)
            total[key] = (current if isinstance(current, (int, float)) else 0) + value
        elif isinstance(value, dict):
            inner = total.get(key)
            total[key] = _add_usage(inner if isinstance(inner, dict) else {}, value)
    return total


def _parse_arguments(raw: str) -> dict[str, Any]:
    if not raw.strip():
        return {}
    value = orjson.loads(raw)
    if isinstance(value, str):  # double-encoded by the model
        value = orjson.loads(value)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


class ToolLoop:
    """Runs one client request's rounds: upstream answer → server tools → upstream again.

    :meth:`start` opens the first round through the pipeline (retries, fallback) and
    returns an :class:`UpstreamStream` the routes read like any other; its
    ``deployment`` and ``attempt`` follow the current round. Each round's attempt is
    closed (``after_attempt``, ``record``) when the round ends.
    """

    def __init__(
        self, services: RoundServices, ctx: RequestContext, request: CanonicalRequest,
        tools: list[ServerTool], settings: ServerToolsSettings, config: Config, *, stream: bool,
    ) -> None:
        self.services = services
        self.config = config
        self.ctx = ctx
        self.tools = {t.name: t for t in tools}
        self.settings = settings
        self.stream = stream
        self.messages: list[dict[str, Any]] = list(request.get("messages") or [])
        self.request = {**request, "tools": [*(request.get("tools") or []), *(t.spec for t in tools)]}
        self.upstream: UpstreamStream | None = None
        self.outer: UpstreamStream | None = None
        self._tasks: list[asyncio.Future[Any]] = []
        self.stats = {"rounds": 0, "calls": 0, "failed": 0}
        ctx.state["server_tools"] = self.stats

    async def start(self) -> UpstreamStream:
        first = await self.services.open_round(self.ctx, self.request, stream=self.stream)
        self.upstream = first
        self.stats["rounds"] = 1
        self.outer = UpstreamStream(first.deployment, first.attempt, [], self._run(), closer=self._close)
        return self.outer

    async def _close(self) -> None:
        for task in self._tasks:
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is None and isinstance(task.result(), UpstreamStream):
                if task.result() is not self.upstream:  # opened, but the client left first
                    await task.result().aclose()
        self._tasks = []
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            await upstream.aclose()

    async def _end_round(self, usage: dict[str, Any] | None) -> None:
        """Close the attempt that served the round that just ended."""
        assert self.upstream is not None
        attempt = self.upstream.attempt
        if attempt.ended is None:
            attempt.ended = time.perf_counter()
            attempt.usage = Usage.from_openai(usage)
            if attempt in self.ctx.attempts:
                await self.services.attempt_ended(self.ctx, attempt)
        await self.upstream.aclose()

    async def _pings(self, task: asyncio.Future[Any]) -> AsyncIterator[Chunk]:
        """Keep-alives while ``task`` runs (tools, the next round's first byte)."""
        self._tasks.append(task)
        while not task.done():
            await asyncio.wait({task}, timeout=PING_INTERVAL)
            if not task.done():
                yield KEEPALIVE

    async def _run(self) -> AsyncIterator[Chunk]:
        usage: dict[str, Any] | None = None
        said_text = False  # text reached the client in an earlier round
        role_sent = False
        rounds_run = 0
        try:
            while True:
                assert self.upstream is not None
                rnd = _Round()
                separate = said_text
                async for chunk in self.upstream:
                    if chunk is KEEPALIVE:
                        yield chunk
                        continue
                    out = self._feed(rnd, chunk)
                    if out is None:
                        continue
                    delta = out["choices"][0]["delta"]
                    if role_sent:
                        delta.pop("role", None)
                    content = delta.get("content")
                    if isinstance(content, str) and content:
                        if separate:  # the model speaks again after a server round
                            delta["content"] = "\n\n" + content
                            separate = False
                        said_text = True
                    if delta:
                        role_sent = True
                        yield out
                await self._end_round(rnd.usage)
                usage = _add_usage(usage, rnd.usage)
                server = [c for c in rnd.calls if c.name in self.tools]
                client = [c for c in rnd.calls if c.name not in self.tools]
                if server and rounds_run < self.settings.max_iterations:
                    rounds_run += 1
                    if client:
                        log.info("%s: model called server and client tools together; running %s, "
                                 "then asking again", self.ctx.request_id, ", ".join(c.name for c in server))
                    task = asyncio.ensure_future(self._run_tools(rnd, server, rounds_run))
                    async for ping in self._pings(task):
                        yield ping
                    self.messages.extend(task.result())
                    body = {**self.request, "messages": self.messages}
                    opening = asyncio.ensure_future(
                        self.services.open_round(self.ctx, body, stream=self.stream, continuation=True)
                    )
                    async for ping in self._pings(opening):
                        yield ping
                    self.upstream = opening.result()
                    self.stats["rounds"] += 1
                    assert self.outer is not None
                    self.outer.deployment = self.upstream.deployment
                    self.outer.attempt = self.upstream.attempt
                    continue
                for call in server:  # over the limit: not run
                    await self._record(call, rounds_run + 1, 0.0, "not run: max_iterations reached")
                nameless = [c for c in client if not c.name]
                if nameless:
                    log.warning("%s: dropped %d tool call(s) without a name", self.ctx.request_id, len(nameless))
                    client = [c for c in client if c.name]
                notice = bool(server) and not client and not said_text
                final = self._final_chunks(rnd, client, usage, notice)
                for chunk in final:
                    yield chunk
                return
        finally:
            await self._close()

    def _feed(self, rnd: _Round, chunk: Chunk) -> Chunk | None:
        """Take a round's chunk: keep calls, finish reason and usage; return what the
        client may see now (text, reasoning), or None."""
        if chunk.get("id"):
            rnd.chunk_id = chunk["id"]
        if chunk.get("usage"):
            rnd.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            return None
        choice = choices[0]
        if choice.get("finish_reason"):
            rnd.finish = choice["finish_reason"]
        delta = choice.get("delta")
        if delta is None:
            delta = choice.get("message")
        if not isinstance(delta, dict) or not delta:
            return None
        calls = delta.get("tool_calls")
        if calls:
            for call in calls:
                if isinstance(call, dict):
                    rnd.add_call(call)
        visible = {k: v for k, v in delta.items() if k not in ("tool_calls", "function_call")}
        content = visible.get("content")
        if isinstance(content, str) and content:
            rnd.text.append(content)
        if not visible:
            return None
        out = {k: v for k, v in chunk.items() if k not in ("usage", "choices")}
        out["choices"] = [{"index": 0, "delta": visible, "finish_reason": None}]
        return out

    def _final_chunks(
        self, rnd: _Round, client: list[_Call], usage: dict[str, Any] | None, notice: bool
    ) -> list[Chunk]:
        base = {"id": rnd.chunk_id or "chatcmpl-clasp", "object": "chat.completion.chunk", "model": self.ctx.public_model}
        out: list[Chunk] = []
        if notice:
            text = LIMIT_NOTICE.format(n=self.settings.max_iterations)
            out.append({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]})
        if client:
            calls = [
                {
                    "index": i, "id": c.id or "call_" + secrets.token_hex(12), "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for i, c in enumerate(client)
            ]
            out.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": calls}, "finish_reason": None}]})
            finish = "tool_calls"
        else:
            finish = rnd.finish if rnd.finish not in (None, "tool_calls", "function_call") else "stop"
        last: Chunk = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
        if usage:
            last["usage"] = usage
        out.append(last)
        return out

    async def _run_tools(self, rnd: _Round, calls: list[_Call], number: int) -> list[dict[str, Any]]:
        """Run one round's server calls concurrently; the messages to append."""
        for call in calls:
            if not call.id:
                call.id = "call_" + secrets.token_hex(12)
        results = await asyncio.gather(*(self._run_one(call, number) for call in calls))
        assistant: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(rnd.text) or None,
            "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments or "{}"}}
                for c in calls
            ],
        }
        return [assistant, *({"role": "tool", "tool_call_id": c.id, "content": r} for c, r in zip(calls, results, strict=True))]

    async def _run_one(self, call: _Call, number: int) -> str:
        tool = self.tools[call.name]
        started = time.perf_counter()
        error: str | None = None
        timeout = self.settings.timeout
        try:
            arguments = _parse_arguments(call.arguments)
        except (ValueError, orjson.JSONDecodeError) as exc:
            error = f"the arguments are not a JSON object ({exc}); call {tool.name} again with valid JSON"
        else:
            tctx = ToolContext(self.ctx, self.config, call.id or "", number)
            try:
                async with asyncio.timeout(timeout):
                    if tool.is_async:
                        result: Any = await tool.handler(arguments, tctx)  # type: ignore[misc]
                    else:
                        # A plain function may block (files, a database): keep it off the loop.
                        result = await asyncio.to_thread(tool.handler, arguments, tctx)
                    if inspect.isawaitable(result):
                        result = await result
            except TimeoutError:
                error = f"{tool.name} did not finish within {timeout:g}s"
            except Exception as exc:  # the model sees the failure; the request goes on
                log.warning("%s: server tool %s failed", self.ctx.request_id, tool.name, exc_info=True)
                error = f"{tool.name} failed: {redact(str(exc)) or type(exc).__name__}"
        duration = (time.perf_counter() - started) * 1000
        await self._record(call, number, duration, error)
        if error is not None:
            return TOOL_ERROR_PREFIX + error
        if result is None:
            text = "(no output)"
        elif isinstance(result, str):
            text = result or "(no output)"
        else:
            text = orjson.dumps(result, default=str).decode()
        if len(text) > MAX_RESULT_CHARS:
            text = text[:MAX_RESULT_CHARS] + f"\n[... cut: the result had {len(text)} characters]"
        return text

    async def _record(self, call: _Call, number: int, duration_ms: float, error: str | None) -> None:
        self.stats["calls"] += 1
        if error is not None:
            self.stats["failed"] += 1
        principal = self.ctx.principal
        await self.services.record(self.ctx, {
            "kind": "tool_call",
            "request_id": self.ctx.request_id,
            "public_model": self.ctx.public_model,
            "name": call.name,
            "call_id": call.id,
            "round": number,
            "ok": error is None,
            "error": error,
            "duration_ms": duration_ms,
            "key_id": principal.key_id if principal else None,
            "team": principal.team if principal else None,
            "time": time.time(),
        })

"""Tool calls that local models write as text, turned into real tool calls.

Small local models often answer a request with tools by *writing* the call in their
content instead of the server parsing it into ``tool_calls`` (a chat template that
does not know the format, a quantised model that drifts). The client then sees text
and the agent stops. This module recognises, in the streamed content:

- Qwen/Hermes: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the
  closing tag may be missing at the end of the answer);
- Mistral: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}]`` and the newer
  ``[TOOL_CALLS]Name[ARGS]{...}``;
- a bare JSON object or array of them as the content, or in a fenced ```json block,
  keys ``name``/``tool``/``tool_name``/``function`` with
  ``arguments``/``parameters``/``args``/``input`` (Llama 3 writes ``parameters``).

Only calls of tools the request offers become tool calls (names matched exactly,
else case-insensitively); anything else stays text, byte for byte.

Streaming: :class:`TextCallFilter` passes ordinary text through at once and holds
back only text that could still be the start of a call (a trailing ``<tool`` or
``[TOOL``, a content that opens with ``{``, ``[`` or a fence) until it can decide.
A recognised call becomes one ``tool_calls`` delta (generated ``call_`` id, next
index); ``finish_reason`` then becomes ``"tool_calls"``; text before and after is
kept as text.

When it runs (deployment setting ``text_tool_calls``):
- ``auto`` (the default): when the request offers tools and the deployment's
  provider serves local models (:data:`LOCAL_PROVIDERS`: ollama, hosted_vllm, vllm,
  lm_studio, llamafile). Hosted APIs parse their models' calls themselves, so they
  are left alone.
- ``true``: for any provider, when the request offers tools (a llama.cpp server or
  LocalAI behind ``openai_compatible``, a hosted open model that misbehaves).
- ``false``: never.
It never runs when ``tool_choice`` is ``"none"``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from ..config import Config, ConfigError
from ..types import KEEPALIVE, CanonicalRequest, Chunk, Deployment
from ..validation import Choice

__all__ = [
    "LOCAL_PROVIDERS",
    "TextCallFilter",
    "check_config",
    "filter_text_calls",
    "parse_calls",
    "text_call_names",
]

LOCAL_PROVIDERS = frozenset({"ollama", "ollama_chat", "hosted_vllm", "vllm", "lm_studio", "llamafile"})
"""Providers ``text_tool_calls: auto`` engages for: servers of local models."""

_HERMES_OPEN, _HERMES_CLOSE = "<tool_call>", "</tool_call>"
_MISTRAL = "[TOOL_CALLS]"
_MARKERS = (_HERMES_OPEN, _MISTRAL)
_NAME_KEYS = ("name", "tool", "tool_name")
_ARG_KEYS = ("arguments", "parameters", "args", "input", "tool_input")
_CALL_KEYS = frozenset((*_NAME_KEYS, *_ARG_KEYS, "function", "type", "id"))
_FENCE_LANGS = frozenset({"", "json", "tool_call", "tool_code", "tool"})
_MISTRAL_NAMED = re.compile(r"\s*([A-Za-z0-9_.\-]{1,64})(?:\[CALL_ID\][A-Za-z0-9_\-]{1,64})?\[ARGS\]")
_MISTRAL_NAMED_SO_FAR = re.compile(r"\s*[A-Za-z0-9_.\-]{0,64}(?:\[[A-Z_]{0,7}\]?[A-Za-z0-9_\-]{0,64})*")
_FIRST_KEY = re.compile(r'\{\s*"((?:[^"\\]|\\.)*)"\s*:\s*')
_MAX_HOLD = 256 * 1024
"""Held text beyond this is released as text (a runaway answer, not a call)."""

_TEXT, _HERMES, _MISTRAL_ARGS, _BARE, _FENCE = range(5)


TEXT_TOOL_CALLS = Choice(True, False, "auto", expected="true, false or auto")
"""``text_tool_calls:`` of a deployment."""


def check_config(config: Config) -> None:
    """Reject bad ``text_tool_calls`` values when the gateway is built (not per request)."""
    problems: list[str] = []
    for route in config.models:
        for i, deployment in enumerate(route.deployments):
            if "text_tool_calls" in deployment.settings:
                TEXT_TOOL_CALLS.parse(deployment.settings["text_tool_calls"],
                                      f"models.{route.pattern}.{i}.text_tool_calls", problems)
    if problems:
        raise ConfigError(config.source, sorted(set(problems)))


def text_call_names(deployment: Deployment, request: CanonicalRequest) -> dict[str, str] | None:
    """The tool names to recognise for this call, or None when the filter is off.

    Keys are the names as the model may write them (exact, and lower-cased), values
    the names the request declared.
    """
    mode = deployment.settings.get("text_tool_calls", "auto")
    if mode is False or (mode == "auto" and deployment.provider not in LOCAL_PROVIDERS):
        return None
    tools = request.get("tools")
    if not tools or request.get("tool_choice") == "none":
        return None
    names: dict[str, str] = {}
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str) and name:
            names.setdefault(name.lower(), name)
    for name in list(names.values()):
        names[name] = name
    return names or None


def _json_end(text: str, start: int = 0) -> int | None:
    """Index just past the JSON object or array opening at ``text[start]``, or None
    while it is incomplete (string- and escape-aware bracket matching)."""
    depth = 0
    in_str = False
    esc = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _resolve(names: Mapping[str, str], name: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return None
    return names.get(name) or names.get(name.lower())


def parse_calls(text: str, names: Mapping[str, str]) -> list[tuple[str, str]] | None:
    """``[(tool name, arguments JSON)]`` if ``text`` is a JSON tool call (or a list of
    them) naming only offered tools; None otherwise (the text stays text)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        value = value["tool_calls"]
    items = value if isinstance(value, list) else [value]
    calls: list[tuple[str, str]] = []
    for item in items:
        if not isinstance(item, dict) or not set(item) <= _CALL_KEYS:
            return None
        fn = item.get("function")
        if isinstance(fn, dict):  # OpenAI's own shape, written out
            name = fn.get("name")
            args = fn.get("arguments", fn.get("parameters"))
        else:
            name = next((item[k] for k in _NAME_KEYS if k in item), fn)
            args = next((item[k] for k in _ARG_KEYS if k in item), None)
        resolved = _resolve(names, name)
        if resolved is None:
            return None
        if args is None:
            args = {}
        elif isinstance(args, str):
            try:
                decoded = orjson.loads(args) if args.strip() else {}
            except orjson.JSONDecodeError:
                return None
            args = decoded
        if not isinstance(args, dict):
            return None
        calls.append((resolved, orjson.dumps(args).decode()))
    return calls or None


def _held_marker_prefix(text: str) -> int:
    """Length of the longest tail of ``text`` that could begin a marker."""
    best = 0
    for marker in _MARKERS:
        start = text.find(marker[0], max(0, len(text) - len(marker) + 1))
        while start != -1:
            tail = text[start:]
            if marker.startswith(tail):
                best = max(best, len(tail))
                break
            start = text.find(marker[0], start + 1)
    return best


class TextCallFilter:
    """Turns text-written tool calls in one stream of canonical chunks into real ones.

    :meth:`feed` takes each upstream chunk and returns the chunks to pass on;
    :meth:`close` returns what is still held when the stream ends without a
    ``finish_reason``.
    """

    __slots__ = ("names", "_state", "_pending", "_started", "_index", "_calls", "_envelope")

    def __init__(self, names: Mapping[str, str]) -> None:
        self.names = names
        self._state = _TEXT
        self._pending = ""
        self._started = False  # some non-space text was released as text
        self._index = 0
        self._calls = 0
        self._envelope: dict[str, Any] = {}

    @property
    def calls(self) -> int:
        """How many text-written calls were turned into tool calls."""
        return self._calls

    # -- chunks --

    def feed(self, chunk: Chunk) -> list[Chunk]:
        choices = chunk.get("choices")
        if not choices or type(choices) is not list or type(choices[0]) is not dict:
            return [chunk]  # usage-only or Azure's filter-results chunk
        choice = choices[0]
        delta = choice.get("delta")
        if delta is None:
            delta = choice.get("message")
        if type(delta) is not dict:
            delta = {}
        content = delta.get("content")
        finish = choice.get("finish_reason")
        native = delta.get("tool_calls")
        if native:
            for call in native:
                if isinstance(call, dict) and type(call.get("index")) is int:
                    self._index = max(self._index, call["index"] + 1)
        if type(content) is not str or not content:
            if not finish:
                return [chunk]
            content = ""
        elif (
            not finish
            and self._state == _TEXT
            and not self._pending
            and self._started
            and "<" not in content
            and "[" not in content
        ):
            return [chunk]  # the common case: plain text, passed on untouched
        if not self._envelope:
            self._envelope = {k: v for k, v in chunk.items() if k not in ("choices", "usage")}
        events = self._consume(content, final=bool(finish))
        out: list[Chunk] = []
        rest = {k: v for k, v in delta.items() if k != "content"}
        if any(k != "role" for k in rest):
            out.append(self._chunk(chunk, rest))
        out += self._render(chunk, events)
        if finish:
            if finish == "stop" and self._calls:
                finish = "tool_calls"
            final = self._chunk(chunk, {}, finish)
            if chunk.get("usage"):
                final["usage"] = chunk["usage"]
            out.append(final)
        elif chunk.get("usage") and out:
            out[-1]["usage"] = chunk["usage"]
        return out

    def close(self) -> list[Chunk]:
        """Release what is held (the stream ended with no finish_reason)."""
        if not self._pending:
            return []
        return self._render({"choices": [{"index": 0}], **self._envelope}, self._consume("", final=True))

    def _chunk(self, source: Chunk, delta: dict[str, Any], finish: str | None = None) -> Chunk:
        out = {k: v for k, v in source.items() if k not in ("choices", "usage")}
        index = source["choices"][0].get("index", 0) if source.get("choices") else 0
        out["choices"] = [{"index": index, "delta": delta, "finish_reason": finish}]
        return out

    def _render(self, source: Chunk, events: list[tuple[str, str]]) -> list[Chunk]:
        out: list[Chunk] = []
        for kind, value in events:
            if kind == "text":
                out.append(self._chunk(source, {"content": value}))
            else:
                call = {
                    "index": self._index,
                    "id": "call_" + secrets.token_hex(12),
                    "type": "function",
                    "function": {"name": kind, "arguments": value},
                }
                self._index += 1
                self._calls += 1
                out.append(self._chunk(source, {"tool_calls": [call]}))
        return out

    # -- text --

    def _consume(self, text: str, *, final: bool) -> list[tuple[str, str]]:
        """Add ``text``; return ``("text", s)`` and ``(tool name, arguments)`` events."""
        self._pending += text
        events: list[tuple[str, str]] = []

        def emit_text(value: str) -> None:
            if not value:
                return
            if not value.isspace():
                self._started = True
            if events and events[-1][0] == "text":
                events[-1] = ("text", events[-1][1] + value)
            else:
                events.append(("text", value))

        def emit_calls(calls: list[tuple[str, str]]) -> None:
            events.extend(calls)

        while True:
            buf = self._pending
            state = self._state
            if state == _TEXT:
                if not buf:
                    break
                if not self._started:
                    body = buf.lstrip()
                    lead = buf[: len(buf) - len(body)]
                    if not body:
                        emit_text(buf)
                        self._pending = ""
                        break
                    if body[0] in "{[" and not body.startswith(_MISTRAL[: len(body)]):
                        emit_text(lead)
                        self._pending = body
                        self._state = _BARE
                        continue
                    if body.startswith("```"):
                        emit_text(lead)
                        self._pending = body
                        self._state = _FENCE
                        continue
                    if "```".startswith(body) and not final:
                        break  # "`" or "``": wait for the next piece
                found = [(buf.find(m), m) for m in _MARKERS]
                found = [(i, m) for i, m in found if i >= 0]
                if found:
                    at, marker = min(found)
                    emit_text(buf[:at])
                    self._pending = buf[at + len(marker) :]
                    self._state = _HERMES if marker == _HERMES_OPEN else _MISTRAL_ARGS
                    continue
                hold = 0 if final else _held_marker_prefix(buf)
                emit_text(buf[: len(buf) - hold])
                self._pending = buf[len(buf) - hold :]
                break
            if state == _HERMES:
                end = buf.find(_HERMES_CLOSE)
                nxt = buf.find(_HERMES_OPEN)
                if end < 0 and 0 <= nxt:
                    end_inner, resume = nxt, nxt  # a missing close tag before the next call
                elif end >= 0:
                    end_inner, resume = end, end + len(_HERMES_CLOSE)
                elif final or len(buf) > _MAX_HOLD:
                    end_inner, resume = len(buf), len(buf)
                else:
                    break
                inner = buf[:end_inner]
                calls = parse_calls(_unfence(inner), self.names)
                if calls:
                    emit_calls(calls)
                else:
                    emit_text(_HERMES_OPEN + buf[:resume])
                self._pending = buf[resume:]
                self._state = _TEXT
                continue
            if state == _MISTRAL_ARGS:
                body = buf.lstrip()
                if not body:
                    if final:
                        emit_text(_MISTRAL + buf)
                        self._pending = ""
                        self._state = _TEXT
                    break
                if body[0] in "[{":
                    end_json = _json_end(body)
                    if end_json is None and not final and len(buf) <= _MAX_HOLD:
                        break
                    value = body[:end_json] if end_json is not None else body
                    calls = parse_calls(value, self.names)
                    consumed = len(buf) - len(body) + len(value)
                else:
                    match = _MISTRAL_NAMED.match(buf)
                    if match is None:
                        if not final and len(buf) < 200 and _MISTRAL_NAMED_SO_FAR.fullmatch(buf):
                            break  # still reading "Name[ARGS]"
                        emit_text(_MISTRAL + buf)
                        self._pending = ""
                        self._state = _TEXT
                        continue
                    start = match.end()
                    while start < len(buf) and buf[start].isspace():
                        start += 1
                    if start >= len(buf):
                        if final:
                            calls, consumed = _named_call(self.names, match.group(1), "{}"), len(buf)
                        else:
                            break
                    else:
                        end_json = _json_end(buf, start) if buf[start] == "{" else None
                        if end_json is None and buf[start] == "{" and not final and len(buf) <= _MAX_HOLD:
                            break
                        stop = end_json if end_json is not None else len(buf)
                        calls = _named_call(self.names, match.group(1), buf[start:stop])
                        consumed = stop
                if calls:
                    emit_calls(calls)
                else:
                    emit_text(_MISTRAL + buf[:consumed])
                self._pending = buf[consumed:]
                self._state = _TEXT
                continue
            if state == _BARE:
                if not _could_be_call(buf, self.names):
                    self._started = True  # an ordinary JSON answer: text from here on
                    self._state = _TEXT
                    continue
                end_json = _json_end(buf)
                if end_json is None:
                    if final or len(buf) > _MAX_HOLD:
                        emit_text(buf)
                        self._pending = ""
                        self._state = _TEXT
                    break
                calls = parse_calls(buf[:end_json], self.names)
                if calls:
                    emit_calls(calls)
                else:
                    emit_text(buf[:end_json])
                self._pending = buf[end_json:]
                self._state = _TEXT
                continue
            # _FENCE: "```lang\n ... ```"
            newline = buf.find("\n", 3)
            if newline < 0:
                if final or len(buf) > 40:
                    self._started = True
                    self._state = _TEXT
                    continue
                break
            if buf[3:newline].strip().lower() not in _FENCE_LANGS:
                self._started = True  # a code block: ordinary text
                self._state = _TEXT
                continue
            close = buf.find("```", newline)
            inner = buf[newline + 1 : close if close >= 0 else len(buf)].strip()
            if inner and not _could_be_call(inner, self.names):
                self._started = True
                self._state = _TEXT
                continue
            if close < 0:
                if final or len(buf) > _MAX_HOLD:
                    self._started = True
                    self._state = _TEXT
                    continue
                break
            calls = parse_calls(inner, self.names)
            if calls:
                emit_calls(calls)
                self._pending = buf[close + 3 :]
            else:
                self._started = True
                emit_text(buf[: close + 3])
                self._pending = buf[close + 3 :]
            self._state = _TEXT
        return events


def _unfence(text: str) -> str:
    body = text.strip()
    if body.startswith("```"):
        newline = body.find("\n")
        body = body[newline + 1 :] if newline >= 0 else ""
        if body.rstrip().endswith("```"):
            body = body.rstrip()[:-3]
    return body.strip()


def _named_call(names: Mapping[str, str], name: str, args: str) -> list[tuple[str, str]] | None:
    """Mistral's ``Name[ARGS]{...}``."""
    return parse_calls(orjson.dumps({"name": name, "arguments": args.strip() or "{}"}).decode(), names)


def _could_be_call(text: str, names: Mapping[str, str]) -> bool:
    """Whether a held JSON prefix can still turn out to be a call (decided early, so
    an ordinary JSON answer is released at once instead of held to its end)."""
    body = text.lstrip()
    if body.startswith("["):
        rest = body[1:].lstrip()
        return not rest or (rest[0] == "{" and _could_be_call(rest, names))
    if not body.startswith("{"):
        return False
    rest = body[1:].lstrip()
    if not rest:
        return True
    if rest[0] != '"':
        return rest[0] == "}"  # "{}" is not a call, but let the parser say so
    match = _FIRST_KEY.match(body)
    if match is None:
        return len(body) < 200  # still inside the first key
    key = match.group(1)
    if key not in _CALL_KEYS and key != "tool_calls":
        return False
    if key in _NAME_KEYS:
        value = body[match.end() :]
        if value.startswith('"'):
            end = value.find('"', 1)
            if end > 0:
                return _resolve(names, value[1:end]) is not None
    return True


async def filter_text_calls(
    first: Chunk, rest: AsyncIterator[Chunk], names: Mapping[str, str]
) -> AsyncIterator[Chunk]:
    """The chunks of one upstream stream, with text-written tool calls made real."""
    text_filter = TextCallFilter(names)
    try:
        for chunk in text_filter.feed(first):
            yield chunk
        async for chunk in rest:
            if chunk is KEEPALIVE:
                yield chunk
                continue
            for out in text_filter.feed(chunk):
                yield out
        for out in text_filter.close():
            yield out
    finally:
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()

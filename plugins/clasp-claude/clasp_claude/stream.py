"""Canonical OpenAI chunks -> Anthropic Messages stream events.

:class:`StreamTranslator` turns each ``chat.completion.chunk`` into zero or more
``(event name, payload)`` pairs following Anthropic's grammar::

    message_start
    (content_block_start  content_block_delta*  content_block_stop)*   # indexes 0, 1, 2...
    message_delta  message_stop

Rules it keeps (each has a test):

- One block open at a time. A text block opens only for text with a non-whitespace
  character (an empty or blank text block poisons Claude Code's next turn); leading
  whitespace is held until then and dropped if a tool call comes first.
- Reasoning (``reasoning_content`` / ``reasoning`` / ``reasoning_details``) becomes a
  ``thinking`` block, closed with a ``signature_delta`` carrying
  :data:`THINKING_SIGNATURE`: Claude Code discards thinking blocks without a
  signature. The gateway never sends thinking upstream, so the value is only a marker.
- Tool calls are keyed by ``index`` (or ``id`` when a provider omits the index, or
  reuses an index for a new call). Arguments stream as ``input_json_delta``. Since
  only one block may be open, a call whose block cannot open yet buffers its
  arguments; the open call is closed as soon as another call is waiting and its own
  arguments already form a complete JSON object (more arguments could only make
  them invalid), so sequential calls stream smoothly and interleaved ones lose
  nothing. Text or reasoning that arrives after tool calls started is held and
  emitted after them, at the end.
- A tool's input is always an object: empty arguments become ``{}``; arguments that
  do not start with ``{`` (double-encoded JSON strings, junk) are buffered and
  emitted repaired at close (see :func:`parse_tool_input`); streamed arguments cut
  short get their missing closing quotes/brackets appended when that makes a valid
  object.
- Stop sequences are matched on text here (not sent upstream, so the matched one is
  known): the longest tail that could still begin a match is held back, text before a
  match is emitted, and ``stop_reason`` becomes ``stop_sequence``.
- ``stop_reason``: a matched stop sequence -> ``stop_sequence``; ``length`` ->
  ``max_tokens``; any tool block -> ``tool_use`` (Ollama ends tool calls with
  ``stop``); ``content_filter`` -> ``refusal`` (in the API and SDK since Claude 4);
  otherwise ``end_turn``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from clasp_gateway import TEXT_DELTA_KEYS, Usage, completion_to_chunk

__all__ = [
    "THINKING_SIGNATURE",
    "StreamTranslator",
    "completion_to_chunk",
    "error_event",
    "new_message_id",
    "parse_tool_input",
    "ping_event",
    "repair_json_suffix",
]

Event = tuple[str, dict[str, Any]]

THINKING_SIGNATURE = "clasp-gateway.unsigned-thinking.v1"
"""Signature sent for thinking blocks made from another provider's reasoning.

Non-empty because Claude Code drops thinking blocks without one. It is not an
Anthropic signature: a gateway that forwards history to Anthropic itself must strip
thinking blocks carrying it (the Anthropic API would reject them)."""

OUTPUT_CHARS_PER_TOKEN = 4.0
"""Output-token estimate when the upstream reports no usage (o200k: ~4 chars/token)."""

_ID_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
_ID_BAD = re.compile(r"[^a-zA-Z0-9_-]")

_WAITING, _OPEN, _CLOSED = 0, 1, 2
# How a tool's arguments are emitted: undecided until the first non-space character.
_UNDECIDED, _STREAM, _BUFFER = 0, 1, 2


def new_message_id() -> str:
    """A fresh Anthropic-style message id."""
    return "msg_" + secrets.token_hex(12)


def _new_tool_id() -> str:
    return "toolu_" + secrets.token_hex(12)


def safe_tool_id(raw: str) -> str:
    """A tool-use id matching ``^[a-zA-Z0-9_-]+$`` (Claude Code requires it).

    Valid ids are kept; others are sanitised with a hash suffix, deterministically,
    so the same upstream id always maps to the same client id.
    """
    if _ID_RE.match(raw):
        return raw
    digest = hashlib.sha1(raw.encode("utf-8")).hexdigest()[:8]
    return f"{_ID_BAD.sub('_', raw)}_{digest}"


def ping_event() -> Event:
    """A keep-alive ``ping`` event."""
    return ("ping", {"type": "ping"})


def error_event(error_type: str, message: str) -> Event:
    """An in-stream ``error`` event (after it the stream simply ends)."""
    return ("error", {"type": "error", "error": {"type": error_type, "message": message}})


def repair_json_suffix(text: str) -> str | None:
    """The shortest suffix that makes truncated JSON *text* a valid object, or None.

    Closes an open string and open brackets (a stream cut at ``max_tokens``, a model
    that forgot a brace); also completes a dangling ``"key":`` with ``null``.
    """
    stack: list[str] = []
    in_str = False
    esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            stack.append("}")
        elif ch == "[":
            stack.append("]")
        elif ch == "}" or ch == "]":
            if not stack or stack[-1] != ch:
                return None  # unbalanced: not a truncation
            stack.pop()
    closers = "".join(reversed(stack))
    head = ("\\" if esc else "") + ('"' if in_str else "")
    for suffix in (head + closers, head + "null" + closers):
        try:
            value = orjson.loads(text + suffix)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return suffix
    return None


def parse_tool_input(raw: str) -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic clients require.

    Empty -> ``{}``; truncated -> repaired (:func:`repair_json_suffix`); a JSON string
    holding an object (double-encoded by the model) -> that object; anything else ->
    ``{"_raw": raw}`` so the model sees what it produced when the client reports the
    tool error.
    """
    if not raw or raw.isspace():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        suffix = repair_json_suffix(raw)
        if suffix is None:
            return {"_raw": raw}
        value = orjson.loads(raw + suffix)
    if isinstance(value, str):
        try:
            inner = orjson.loads(value)
        except orjson.JSONDecodeError:
            inner = None
        if isinstance(inner, dict):
            return inner
    if isinstance(value, dict):
        return value
    return {"_raw": raw}


def _parts_text(content: Any) -> str:
    """Text of a ``delta.content`` given as a list of parts (some providers)."""
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    out.append(text)
            elif isinstance(part, str):
                out.append(part)
        return "".join(out)
    return ""


def _reasoning_details_text(details: Any) -> str:
    if not isinstance(details, list):
        return ""
    out = []
    for item in details:
        if isinstance(item, dict):
            text = item.get("text") or item.get("summary")
            if isinstance(text, str):
                out.append(text)
    return "".join(out)


class _Tool:
    """One upstream tool call while it streams."""

    __slots__ = ("raw_id", "id", "name", "args", "size", "state", "mode", "last", "checked", "complete", "block")

    def __init__(self, raw_id: str | None) -> None:
        self.raw_id = raw_id
        self.id = safe_tool_id(raw_id) if raw_id else None
        self.name: str | None = None
        self.args: list[str] = []
        self.size = 0  # total argument characters
        self.state = _WAITING
        self.mode = _UNDECIDED
        self.last = ""  # last non-space argument character
        self.checked = -1  # size at the last completeness check
        self.complete = False
        self.block = -1


class StreamTranslator:
    """Translate one upstream stream (OpenAI chunks) into Anthropic events.

    Call :meth:`start` (optional: :meth:`feed` starts implicitly), :meth:`feed` per
    chunk, then :meth:`finish` when the upstream ended normally. If it ended without
    :attr:`saw_finish`, send :func:`error_event` instead of :meth:`finish`.
    """

    __slots__ = (
        "model",
        "message_id",
        "input_tokens",
        "_stops",
        "_max_hold",
        "_names",
        "_started",
        "_finished",
        "_next_index",
        "_open",
        "_open_index",
        "_cur",
        "_tools",
        "_by_index",
        "_by_id",
        "_queue",
        "_tools_started",
        "_any_tool_block",
        "_held",
        "_ws",
        "_trail_text",
        "_trail_think",
        "_stopped",
        "_matched",
        "_finish_reason",
        "_usage",
        "_out_chars",
        "reports_text_deltas",
        "text_delta",
    )

    def __init__(
        self,
        model: str,
        *,
        message_id: str | None = None,
        input_tokens: int = 0,
        stop_sequences: Sequence[str] = (),
        tool_names: Mapping[str, str] | None = None,
    ) -> None:
        self.model = model
        self.message_id = message_id or new_message_id()
        self.input_tokens = input_tokens
        self._stops = [s for s in stop_sequences if s]
        self._max_hold = max((len(s) for s in self._stops), default=1) - 1
        self._names = tool_names or {}
        self._started = False
        self._finished = False
        self._next_index = 0
        self._open: str | None = None  # "text" | "thinking" | "tool"
        self._open_index = -1
        self._cur: _Tool | None = None
        self._tools: list[_Tool] = []
        self._by_index: dict[int, _Tool] = {}
        self._by_id: dict[str, _Tool] = {}
        self._queue: list[_Tool] = []  # calls whose block is not open yet, in order
        self._tools_started = False
        self._any_tool_block = False
        self._held = ""  # text withheld: it may begin a stop sequence
        self._ws = ""  # whitespace withheld until a text block has real text
        self._trail_text: list[str] = []
        self._trail_think: list[str] = []
        self._stopped = False
        self._matched: str | None = None
        self._finish_reason: str | None = None
        self.reports_text_deltas = False
        """Set it to have :attr:`text_delta` kept (``StreamEncoder.report_text_deltas``:
        only a stream whose plugins skip text deltas needs it)."""
        self.text_delta = False
        """With :attr:`reports_text_deltas`: whether the chunk :meth:`feed` was last given
        is a plain text delta, as ``clasp_gateway.is_text_delta`` tests it, worked out
        from what ``feed`` reads anyway."""
        self._usage: Usage | None = None
        self._out_chars = 0

    # -- public state -------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Nothing the upstream may still send can change the answer.

        True after a stop-sequence match (the caller MUST stop reading and call
        :meth:`finish`), or once both a finish_reason and usage arrived. A
        finish_reason alone is not enough: with ``include_usage`` the usage comes in
        the next chunk and stopping early would lose the exact token counts.
        """
        return self._stopped or (self._finish_reason is not None and self._usage is not None)

    @property
    def saw_finish(self) -> bool:
        """The upstream sent a finish_reason (a stream without one was cut)."""
        return self._finish_reason is not None

    @property
    def finish_reason(self) -> str | None:
        """The upstream's raw finish_reason, if any."""
        return self._finish_reason

    @property
    def usage(self) -> Usage:
        """Best known usage: the upstream's figures, estimates where it gave none."""
        estimated_out = int(self._out_chars / OUTPUT_CHARS_PER_TOKEN + 0.999)
        u = self._usage
        if u is None:
            return Usage(input_tokens=self.input_tokens, output_tokens=estimated_out)
        out = Usage(
            input_tokens=u.input_tokens,
            output_tokens=u.output_tokens,
            cache_read_input_tokens=u.cache_read_input_tokens,
            cache_creation_input_tokens=u.cache_creation_input_tokens,
            reasoning_tokens=u.reasoning_tokens,
            cost_usd=u.cost_usd,
        )
        if u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens == 0:
            out.input_tokens = self.input_tokens  # placeholder zeros from the provider
        if u.output_tokens == 0 and self._out_chars:
            out.output_tokens = estimated_out
        return out

    # -- lifecycle ----------------------------------------------------------------------

    def prime(self, chunks: Sequence[dict[str, Any]]) -> None:
        """Take the usage the provider reported before the answer (in ``chunks``, the
        ones already received: :attr:`UpstreamStream.first_chunks`), so that
        ``message_start`` shows the provider's own input and cache figures."""
        if self._started:
            return
        for chunk in chunks:
            usage = chunk.get("usage") if isinstance(chunk, dict) else None
            if usage and isinstance(usage, dict):
                self._usage = Usage.from_openai(usage)

    def start(self) -> list[Event]:
        """The ``message_start`` event (once; later calls return nothing)."""
        if self._started:
            return []
        self._started = True
        # The upstream's own figures when they came with (or before) the first chunk
        # (Anthropic and Gemini report the prompt's usage at once); otherwise the
        # estimate, which the final ``message_delta`` replaces.
        known = self._usage
        fresh, read, written = (
            (known.input_tokens, known.cache_read_input_tokens, known.cache_creation_input_tokens)
            if known is not None and known.input_tokens + known.cache_read_input_tokens
            + known.cache_creation_input_tokens > 0
            else (self.input_tokens, 0, 0)
        )
        return [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": self.message_id,
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {
                            "input_tokens": fresh,
                            "output_tokens": 1,
                            "cache_creation_input_tokens": written,
                            "cache_read_input_tokens": read,
                        },
                    },
                },
            )
        ]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        """Translate one upstream chunk. Returns ``[]`` after a stop-sequence match."""
        if self._finished or self._stopped or not isinstance(chunk, dict):
            self.text_delta = False
            if self._finished or self._stopped:
                return []
            return self.start() if not self._started else []
        usage = chunk.get("usage")
        if usage and isinstance(usage, dict):
            # Usage may ride on any chunk (usually the last, with empty choices; the
            # first for providers that report the prompt at once: message_start's).
            self._usage = Usage.from_openai(usage)
        out = self.start() if not self._started else []
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list):
            self.text_delta = False
            return out  # Azure's first chunk, usage-only chunks
        choice = choices[0]
        if not isinstance(choice, dict):
            self.text_delta = False
            return out
        delta = choice.get("delta")
        if delta is None:
            delta = choice.get("message")  # a few servers stream "message" objects
        if delta and isinstance(delta, dict):
            self._on_delta(delta, out)
        reason = choice.get("finish_reason")
        if reason and isinstance(reason, str):
            self._finish_reason = reason
        if self.reports_text_deltas:  # (is_text_delta's test, on what was read above)
            self.text_delta = (reason is None and not usage and len(choices) == 1 and type(choice) is dict
                               and type(delta) is dict and choice.get("delta") is delta
                               and delta.keys() <= TEXT_DELTA_KEYS)  # type: ignore[union-attr]  # (a dict: above)
        return out

    def finish(self) -> list[Event]:
        """Close open blocks and end the message (``message_delta``, ``message_stop``)."""
        if self._finished:
            return []
        out = self.start() if not self._started else []
        self._finished = True
        if not self._stopped:
            self._flush_held(out)
        # Every tool call gets its block, in order, with a complete input.
        if self._cur is not None:
            self._close_block(out)
        while self._queue:
            tool = self._queue.pop(0)
            if tool.name is None:
                tool.name = "unknown_tool"  # a provider bug; the client reports it back
            self._open_tool(tool, out)
            self._close_block(out)
        if not self._stopped:
            self._emit_trailing(out)
        self._close_block(out)
        usage = self.usage
        out.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self._stop_reason(), "stop_sequence": self._matched},
                    "usage": {
                        "input_tokens": usage.input_tokens,
                        "output_tokens": usage.output_tokens,
                        "cache_read_input_tokens": usage.cache_read_input_tokens,
                        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                    },
                },
            )
        )
        out.append(("message_stop", {"type": "message_stop"}))
        return out

    def _stop_reason(self) -> str:
        if self._matched is not None:
            return "stop_sequence"
        reason = self._finish_reason
        if reason == "length":
            return "max_tokens"
        if self._any_tool_block:
            # Also for Ollama's "stop" after tool calls; and never "tool_use" without
            # a tool block, whatever the upstream claimed.
            return "tool_use"
        if reason == "content_filter":
            return "refusal"
        return "end_turn"

    # -- deltas -------------------------------------------------------------------------

    def _on_delta(self, delta: dict[str, Any], out: list[Event]) -> None:
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if not reasoning:
            details = delta.get("reasoning_details")
            if details:
                reasoning = _reasoning_details_text(details)
        if reasoning and isinstance(reasoning, str):
            self._on_thinking(reasoning, out)
        content = delta.get("content")
        if content:
            if not isinstance(content, str):
                content = _parts_text(content)
            if content:
                self._on_text(content, out)
                if self._stopped:
                    return
        refusal = delta.get("refusal")
        if refusal and isinstance(refusal, str):
            self._on_text(refusal, out)
            if self._stopped:
                return
        calls = delta.get("tool_calls")
        if calls:
            if isinstance(calls, list):
                for call in calls:
                    if isinstance(call, dict):
                        self._on_tool(call, out)
        else:
            legacy = delta.get("function_call")
            if legacy and isinstance(legacy, dict):
                self._on_tool({"index": -1, "function": legacy}, out)

    # -- blocks -------------------------------------------------------------------------

    def _open_block(self, out: list[Event], block: dict[str, Any], kind: str) -> None:
        index = self._next_index
        self._next_index += 1
        self._open = kind
        self._open_index = index
        out.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": block}))

    def _close_block(self, out: list[Event]) -> None:
        kind = self._open
        if kind is None:
            return
        if kind == "tool":
            tool = self._cur
            assert tool is not None
            self._finish_args(tool, out)
            tool.state = _CLOSED
            self._cur = None
        elif kind == "thinking":
            out.append(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": self._open_index,
                        "delta": {"type": "signature_delta", "signature": THINKING_SIGNATURE},
                    },
                )
            )
        out.append(("content_block_stop", {"type": "content_block_stop", "index": self._open_index}))
        self._open = None

    # -- text and thinking --------------------------------------------------------------

    def _on_thinking(self, text: str, out: list[Event]) -> None:
        self._out_chars += len(text)
        if self._tools_started:
            self._trail_think.append(text)
            return
        if self._open != "thinking":
            self._flush_held(out)
            self._close_block(out)
            self._open_block(out, {"type": "thinking", "thinking": "", "signature": ""}, "thinking")
        out.append(
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": self._open_index,
                    "delta": {"type": "thinking_delta", "thinking": text},
                },
            )
        )

    def _on_text(self, text: str, out: list[Event]) -> None:
        self._out_chars += len(text)
        if self._tools_started:
            self._trail_text.append(text)
            return
        if self._stops:
            text = self._scan(text)
            if not text:
                return
        self._emit_text(text, out)

    def _emit_text(self, text: str, out: list[Event]) -> None:
        if self._open != "text":
            if text.isspace():
                self._ws += text  # never open a blank text block
                return
            self._close_block(out)
            self._open_block(out, {"type": "text", "text": ""}, "text")
            if self._ws:
                text = self._ws + text
                self._ws = ""
        out.append(
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": self._open_index,
                    "delta": {"type": "text_delta", "text": text},
                },
            )
        )

    def _scan(self, text: str) -> str:
        """Apply stop sequences to new text; returns what may be emitted now."""
        buf = self._held + text if self._held else text
        best = -1
        hit: str | None = None
        for seq in self._stops:
            pos = buf.find(seq)
            if pos != -1 and (best < 0 or pos < best):
                best, hit = pos, seq
        if hit is not None:
            self._held = ""
            self._matched = hit
            self._stopped = True
            return buf[:best]
        # Hold the longest tail that is the start of some stop sequence.
        n = len(buf)
        for k in range(min(n, self._max_hold), 0, -1):
            tail = buf[n - k :]
            for seq in self._stops:
                if seq.startswith(tail):
                    self._held = tail
                    return buf[: n - k]
        self._held = ""
        return buf

    def _flush_held(self, out: list[Event]) -> None:
        if self._held:
            text, self._held = self._held, ""
            self._emit_text(text, out)

    def _emit_trailing(self, out: list[Event]) -> None:
        """Reasoning and text that came after tool calls, emitted after them."""
        if self._trail_think:
            text = "".join(self._trail_think)
            self._trail_think = []
            if text:
                self._close_block(out)
                self._open_block(out, {"type": "thinking", "thinking": "", "signature": ""}, "thinking")
                out.append(
                    (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": self._open_index,
                            "delta": {"type": "thinking_delta", "thinking": text},
                        },
                    )
                )
        if self._trail_text:
            text = "".join(self._trail_text)
            self._trail_text = []
            if self._stops:
                text = self._scan(text) + self._held
                self._held = ""
            self._ws = ""
            if text and not text.isspace():
                self._emit_text(text, out)

    # -- tool calls ---------------------------------------------------------------------

    def _tool_for(self, call: dict[str, Any]) -> _Tool:
        index = call.get("index")
        raw_id = call.get("id")
        if not isinstance(raw_id, str) or not raw_id:
            raw_id = None
        if type(index) is int:
            tool = self._by_index.get(index)
            if tool is not None and (raw_id is None or tool.raw_id is None or raw_id == tool.raw_id):
                return tool
            # A new index, or an index reused for a new call (a different id).
            tool = self._new_tool(raw_id)
            self._by_index[index] = tool
            return tool
        if raw_id is not None:
            tool = self._by_id.get(raw_id)
            return tool if tool is not None else self._new_tool(raw_id)
        fn = call.get("function")
        if self._tools and not (isinstance(fn, dict) and fn.get("name")):
            return self._tools[-1]  # no index, no id, no name: a continuation
        return self._new_tool(None)

    def _new_tool(self, raw_id: str | None) -> _Tool:
        tool = _Tool(raw_id)
        if raw_id:
            self._by_id[raw_id] = tool
        self._tools.append(tool)
        self._queue.append(tool)
        return tool

    def _on_tool(self, call: dict[str, Any], out: list[Event]) -> None:
        tool = self._tool_for(call)
        if tool.raw_id is None:
            raw_id = call.get("id")
            if isinstance(raw_id, str) and raw_id:
                tool.raw_id = raw_id
                tool.id = safe_tool_id(raw_id)
                self._by_id[raw_id] = tool
        fn = call.get("function")
        args: Any = None
        if isinstance(fn, dict):
            name = fn.get("name")
            if tool.name is None and isinstance(name, str) and name:
                tool.name = self._names.get(name, name)
            args = fn.get("arguments")
            if args is not None and not isinstance(args, str):
                args = orjson.dumps(args).decode()  # a few servers send an object
        if not self._tools_started:
            # Text before the first call is final: release what stop matching held.
            self._tools_started = True
            self._flush_held(out)
            self._ws = ""
        if args and tool.state != _CLOSED:
            self._out_chars += len(args)
            tool.args.append(args)
            tool.size += len(args)
            stripped = args.rstrip()
            if stripped:
                tool.last = stripped[-1]
            if tool.state == _OPEN:
                self._emit_args(tool, args, out)
        # (Arguments for a closed call can only follow a complete object: dropped.)
        self._advance(out)

    def _emit_args(self, tool: _Tool, args: str, out: list[Event]) -> None:
        if tool.mode == _UNDECIDED:
            joined = "".join(tool.args)
            head = joined.lstrip()
            if not head:
                return  # only whitespace so far
            tool.mode = _STREAM if head[0] == "{" else _BUFFER
            if tool.mode == _BUFFER:
                return
            args = joined  # release everything held while undecided
        elif tool.mode == _BUFFER:
            return
        out.append(
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": tool.block,
                    "delta": {"type": "input_json_delta", "partial_json": args},
                },
            )
        )

    def _is_complete(self, tool: _Tool) -> bool:
        """Whether the arguments so far are a whole JSON object (cached by size)."""
        if tool.last != "}":
            return False
        if tool.checked != tool.size:
            tool.checked = tool.size
            try:
                tool.complete = isinstance(orjson.loads("".join(tool.args)), dict)
            except orjson.JSONDecodeError:
                tool.complete = False
        return tool.complete

    def _advance(self, out: list[Event]) -> None:
        """Open waiting calls when the open one is provably finished."""
        while self._queue:
            cur = self._cur
            if cur is not None:
                if not self._is_complete(cur):
                    return
                self._close_block(out)
            nxt = self._queue[0]
            if nxt.name is None:
                return  # a tool_use block cannot start without its name
            self._queue.pop(0)
            self._open_tool(nxt, out)

    def _open_tool(self, tool: _Tool, out: list[Event]) -> None:
        self._flush_held(out)
        self._close_block(out)
        if tool.id is None:
            tool.id = _new_tool_id()
        self._open_block(
            out,
            {"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}},
            "tool",
        )
        tool.block = self._open_index
        tool.state = _OPEN
        self._cur = tool
        self._any_tool_block = True
        if tool.args:
            self._emit_args(tool, "".join(tool.args), out)

    def _finish_args(self, tool: _Tool, out: list[Event]) -> None:
        """Make sure the block's accumulated input is one complete JSON object."""
        extra: str | None = None
        if tool.mode == _UNDECIDED:
            extra = "{}"  # no arguments (or only whitespace)
        elif tool.mode == _BUFFER:
            extra = orjson.dumps(parse_tool_input("".join(tool.args))).decode()
        elif not self._is_complete(tool):
            extra = repair_json_suffix("".join(tool.args))
        if extra:
            out.append(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": tool.block,
                        "delta": {"type": "input_json_delta", "partial_json": extra},
                    },
                )
            )


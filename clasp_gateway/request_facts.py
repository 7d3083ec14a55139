"""Facts about a request that several plugins need, computed once per request.

Budgets and rate limits both size a request by its input-token estimate (a walk over
the whole conversation); the spend ledger and analytics both fingerprint it (a JSON
serialisation and a hash of ~20 KB for a Claude Code turn). Computed by each, that
work is paid two or three times per request. Here each fact is computed on first use
and kept on the :class:`~clasp_gateway.types.RequestContext`, tied to the request
object it was computed from: a later round with another body (a server-tool round, a
summarised context) gets its own, never a stale one. What a client sends unchanged
turn after turn is not done again: its tool list is serialised with sorted keys and
hashed once per process (:class:`_Tools`), and a conversation's hash resumes from the
state its previous turn left (:class:`_Turn`), both found by exact bytes.

Both functions are cheap to call again: a second call is an identity check.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import orjson

from .shaping.context.measure import estimate_tokens
from .types import CanonicalRequest, RequestContext

VOLATILE_FIELDS = frozenset({"stream", "stream_options", "metadata", "user"})
"""Request fields left out of a fingerprint: they do not change the answer (the same
prompt asked streaming and not is one prompt; a client's user id is not content)."""

_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
_SORTED_STR_KEYS = orjson.OPT_SORT_KEYS
"""Without ``OPT_NON_STR_KEYS``: the same bytes when every key is a string (a request
parsed from JSON), and ~1.6x faster; a non-string key raises and :func:`_sorted_json`
serialises again with it."""

TOOL_SETS = 64
"""Tool lists remembered across requests (:class:`_Tools`): a client sends the same
tools every turn (~14 KB of JSON schemas for Claude Code); a few dozen clients' sets
fit, at ~30 KB each."""
TOOL_SET_BYTES = 512 * 1024
"""Tool lists longer than this (serialised) are not remembered (at most
:data:`TOOL_SETS` times twice this kept)."""
PROMPT_STATES = 8
"""Per tool list, the hash states kept for the request fields sorted before the tools
(model, ``max_tokens``...: a client varies them little)."""


class _Tools:
    """One tool list's serialisations, shared by every request that sends it.

    Found by ``plain``, the tools serialised as they are (orjson, no options): equal
    bytes are the same JSON document, so its sorted serialisation (``sorted``) is the
    same too. Equality of the parsed lists would not do: ``1 == 1.0 == True`` in Python,
    not in their JSON. ``states``: SHA-256 states of the fingerprint's ``prompt`` digest
    after the fields sorted before ``"tools"`` and the tools' sorted bytes, keyed by
    those fields' bytes: a request with the same ones hashes only the fields after."""

    __slots__ = ("plain", "sorted", "states")

    def __init__(self, plain: bytes, sorted_json: bytes) -> None:
        self.plain = plain
        self.sorted = sorted_json
        self.states: dict[bytes, Any] = {}


_NO_TOOLS = _Tools(b"", b"")
_tool_sets: dict[int, _Tools] = {}
""":data:`TOOL_SETS` tool lists by the length of their ``plain`` bytes (a length seen
with other bytes replaces the entry: a miss, never a wrong answer)."""

CONVERSATION_TURNS = 256
"""Requests whose messages' hash states are remembered (:class:`_Turn`)."""
CONVERSATION_BYTES = 32 * 1024 * 1024
"""At most this many bytes of remembered messages (the oldest go first)."""
CONVERSATION_SECONDS = 300.0
"""A remembered turn is forgotten this long after its request: a conversation's next
turn comes within seconds or minutes, and conversation text (remembered only to hash
the next turn faster: never logged, never stored) does not linger in memory beyond."""
_clock = time.monotonic
_RESUME_FROM = 4
"""A request looks for a remembered state at the ends of its first messages but the
last 0..3: the turn before ended one or two messages earlier, and a client may have
changed its last messages since (Claude Code moves its ``cache_control`` breakpoint)."""
_KEEP_AT = 3
"""A request leaves states at the ends of its first messages but the last 0..2."""


class _Turn:
    """One request's serialised messages (``data``) and the BLAKE2b states of their
    digest after ``data[:end]`` for a few ``end`` (:data:`_KEEP_AT`), found again by
    a later request whose messages serialise to bytes starting with the same
    ``data[:end]`` (checked in full, byte for byte): a conversation grows by appending
    messages, so each turn hashes only what is new since the turn before."""

    __slots__ = ("data", "states", "until")

    def __init__(self, data: bytes, until: float) -> None:
        self.data = data
        self.states: dict[int, Any] = {}
        self.until = until
        """When it is forgotten (``_clock``, :data:`CONVERSATION_SECONDS`)."""


_turns: dict[tuple[int, bytes], _Turn] = {}
"""Remembered :class:`_Turn` by (``end``, the 32 bytes before it)."""
_turn_order: list[tuple[_Turn, list[tuple[int, bytes]]]] = []
"""The remembered turns, oldest first, with their keys in :data:`_turns`."""
_turn_bytes = 0


@dataclass(slots=True, frozen=True)
class RequestFingerprint:
    """Two digests of a canonical request, never its text.

    ``prompt``: 64 hex digits (SHA-256) of everything that shapes the answer (model,
    system and messages, tools, sampling and output settings; not
    :data:`VOLATILE_FIELDS`), serialised with sorted keys. Equal prompts: a cache would
    have served the second (the ledger's ``prompt_hash``).

    ``messages``: a 16-byte BLAKE2b digest of the messages alone (the conversation,
    system prompt included). Equal messages from the same key and user: the same turn of
    the same conversation sent again (analytics' retry signal, :meth:`conversation`)."""

    prompt: str
    messages: bytes

    def conversation(self, who: str) -> str:
        """The conversation's fingerprint for one sender (``who``: key id and user, as
        the caller chooses): 32 hex digits, cheap (hashes the 16-byte digest, not the
        conversation)."""
        digest = hashlib.blake2b(who.encode(), digest_size=16)
        digest.update(self.messages)
        return digest.hexdigest()


def input_estimate(ctx: RequestContext, request: CanonicalRequest) -> int:
    """:func:`~clasp_gateway.estimate_tokens` of ``request``, computed once per request
    (budgets' worst case and the token rate limits share it). The tools' size is the
    length of their serialisation, which the fingerprint shares (:func:`_request_tools`)."""
    cached = ctx._input_estimate
    if cached is not None and cached[0] is request:
        return cached[1]
    tools = _request_tools(ctx, request)
    value = estimate_tokens(request, tools_size=len(tools.plain) if tools is not None else None)
    ctx._input_estimate = (request, value)
    return value


def _request_tools(ctx: RequestContext, request: CanonicalRequest) -> _Tools | None:
    """``request["tools"]`` serialised (:func:`_tools_of`), once per request."""
    cached = ctx._tools_json
    if cached is not None and cached[0] is request:
        return cached[1]  # type: ignore[no-any-return]
    value = _tools_of(request)
    ctx._tools_json = (request, value)
    return value


def _tools_of(request: CanonicalRequest) -> _Tools | None:
    """The :class:`_Tools` of ``request["tools"]``: the fingerprint hashes their sorted
    bytes, the input estimate counts their length (the same for both serialisations: a
    tool list is often most of a request's bytes). Serialised as they are on every
    request (the exact test of "the same tools"), sorted once per tool list (from the
    remembered ones, :data:`TOOL_SETS`). :data:`_NO_TOOLS`: no tools; ``None``: they
    cannot be serialised as they are (no ``default``: each caller then does what it
    did alone)."""
    tools = request.get("tools")
    if not tools:
        return _NO_TOOLS
    try:
        plain = orjson.dumps(tools)
        found = _tool_sets.get(len(plain))
        if found is not None and found.plain == plain:
            return found
        found = _Tools(plain, orjson.dumps(tools, option=_SORTED_STR_KEYS))
    except (TypeError, orjson.JSONEncodeError):
        return None
    if len(plain) > TOOL_SET_BYTES:
        return found
    if len(_tool_sets) >= TOOL_SETS and len(plain) not in _tool_sets:
        del _tool_sets[next(iter(_tool_sets))]  # the oldest
    _tool_sets[len(plain)] = found
    return found


def request_fingerprint(ctx: RequestContext, request: CanonicalRequest) -> RequestFingerprint | None:
    """The :class:`RequestFingerprint` of ``request``, computed once per request (the
    ledger and analytics share it); ``None`` when the request cannot be serialised."""
    cached = ctx._fingerprint
    if cached is not None and cached[0] is request:
        return cached[1]  # type: ignore[no-any-return]
    value = _fingerprint(request, _request_tools(ctx, request))
    ctx._fingerprint = (request, value)
    return value


def _sorted_json(value: object) -> bytes:
    """``value`` serialised as the fingerprint does: sorted keys, non-string keys
    allowed, anything else as ``str``."""
    try:
        return orjson.dumps(value, option=_SORTED_STR_KEYS, default=str)
    except orjson.JSONEncodeError:  # a non-string key (or something that fails either way)
        return orjson.dumps(value, option=_SORTED, default=str)


def fingerprint_of(request: CanonicalRequest) -> RequestFingerprint | None:
    """The fingerprint of ``request``, not kept on a context (:func:`request_fingerprint`
    is the one to call on the request path)."""
    return _fingerprint(request, _tools_of(request))


def _fingerprint(request: CanonicalRequest, tools: _Tools | None) -> RequestFingerprint | None:
    """The messages are serialised and hashed once; the prompt digest hashes the rest
    of the request (serialised with sorted keys) and that digest. ``tools``: the tools
    already serialised (:func:`_tools_of`), their bytes put in their place in the
    rest's serialisation, and the hash state after them reused when the fields sorted
    before them are the same bytes (:attr:`_Tools.states`): the bytes hashed are the
    same as hashing the rest serialised whole."""
    try:
        messages = _sorted_json(request.get("messages") or [])
        rest = {k: v for k, v in request.items() if k not in VOLATILE_FIELDS and k != "messages"}
        digest_of_rest = None
        if tools is not None and tools.plain and "tools" in rest and all(type(k) is str for k in rest):
            # {"k":v,...} in sorted key order, as orjson writes it, the tools' bytes reused.
            keys = sorted(rest)
            at = keys.index("tools")
            before = b"".join(orjson.dumps(k) + b":" + _sorted_json(rest[k]) + b"," for k in keys[:at])
            after = b"".join(b"," + orjson.dumps(k) + b":" + _sorted_json(rest[k]) for k in keys[at + 1:])
            state = tools.states.get(before)
            if state is None:
                state = hashlib.sha256(b"{" + before + b'"tools":' + tools.sorted)
                if len(tools.states) >= PROMPT_STATES:
                    del tools.states[next(iter(tools.states))]
                tools.states[before] = state
            digest_of_rest = state.copy()
            rest_json = after + b"}"
        else:
            rest_json = _sorted_json(rest)
    except (TypeError, orjson.JSONEncodeError):
        return None
    digest = _messages_digest(request.get("messages") or [], messages)
    if digest_of_rest is None:
        digest_of_rest = hashlib.sha256()
    digest_of_rest.update(rest_json + b"\x00" + digest)
    return RequestFingerprint(digest_of_rest.hexdigest(), digest)


def _key(data: bytes, end: int) -> tuple[int, bytes]:
    return end, data[max(0, end - 32):end]


def _messages_digest(messages: Any, data: bytes) -> bytes:
    """``blake2b(data, digest_size=16)``, ``data`` the sorted serialisation of the list
    ``messages`` (``[m0,m1,...]``), resumed from the state a remembered earlier turn
    left at the end of one of this request's messages (:class:`_Turn`). The ends are
    found from the last messages' own serialisations; an end found wrong (a message
    that serialises otherwise alone) only misses: a state is used only for bytes that
    equal this request's, compared in full."""
    global _turn_bytes
    now = _clock()
    if _turn_order and _turn_order[0][0].until <= now:
        _forget(now)
    if type(messages) is not list or len(messages) < 2:
        return hashlib.blake2b(data, digest_size=16).digest()
    ends = [len(data) - 1]  # data[:ends[j]]: up to the end of the message j before the last
    view = memoryview(data)
    state = None
    start = 0
    for j in range(min(_RESUME_FROM, len(messages) - 1)):
        end = ends[j]
        turn = _turns.get(_key(data, end))
        if turn is not None and end <= len(turn.data) and data.startswith(memoryview(turn.data)[:end]):  # memcmp
            state, start = turn.states[end].copy(), end
            break
        if j + 1 < min(_RESUME_FROM, len(messages) - 1) or j + 1 < _KEEP_AT:
            ends.append(end - len(_sorted_json(messages[-1 - j])) - 1)  # before ",m"
    if state is None:
        state = hashlib.blake2b(digest_size=16)
    keep = [end for end in ends[:_KEEP_AT] if end > start]
    if not keep or ends[0] <= start:  # the same messages as a remembered turn: nothing new to keep
        state.update(view[start:])
        return state.digest()  # type: ignore[no-any-return]
    turn = _Turn(data, now + CONVERSATION_SECONDS)
    keys = []
    for end in sorted(keep):
        if end <= start or data[end:end + 1] not in (b",", b"]"):
            continue  # not the end of a message
        state.update(view[start:end])
        start = end
        turn.states[end] = state.copy()
        key = _key(data, end)
        _turns[key] = turn
        keys.append(key)
    state.update(view[start:])
    if keys:
        _turn_order.append((turn, keys))
        _turn_bytes += len(data)
        if len(_turn_order) > CONVERSATION_TURNS or _turn_bytes > CONVERSATION_BYTES:
            _forget(now)
    return state.digest()  # type: ignore[no-any-return]


def _forget(now: float) -> None:
    """Drop the oldest remembered turns while there are too many, they hold too many
    bytes, or they are older than :data:`CONVERSATION_SECONDS`."""
    global _turn_bytes
    while _turn_order and (len(_turn_order) > CONVERSATION_TURNS or _turn_bytes > CONVERSATION_BYTES
                           or _turn_order[0][0].until <= now):
        old, old_keys = _turn_order.pop(0)
        _turn_bytes -= len(old.data)
        for key in old_keys:
            if _turns.get(key) is old:
                del _turns[key]

"""Facts about a request that several plugins need, computed once per request.

Budgets and rate limits both size a request by its input-token estimate (a walk over
the whole conversation); the spend ledger and analytics both fingerprint it (a JSON
serialisation and a hash of ~20 KB for a Claude Code turn). Computed by each, that
work is paid two or three times per request. Here each fact is computed on first use
and kept on the :class:`~clasp_gateway.types.RequestContext`, tied to the request
object it was computed from: a later round with another body (a server-tool round, a
summarised context) gets its own, never a stale one.

Both functions are cheap to call again: a second call is an identity check.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

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
_NO_TOOLS = b""


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
    length of their serialisation, which the fingerprint shares (:func:`_tools_json`)."""
    cached = ctx._input_estimate
    if cached is not None and cached[0] is request:
        return cached[1]
    tools = _tools_json(ctx, request)
    value = estimate_tokens(request, tools_size=len(tools) if tools is not None else None)
    ctx._input_estimate = (request, value)
    return value


def _tools_json(ctx: RequestContext, request: CanonicalRequest) -> bytes | None:
    """``request["tools"]`` serialised with sorted keys, computed once per request: the
    fingerprint hashes it, the input estimate counts its length (a tool list is often
    most of a request's bytes: ~14 KB of JSON schemas for Claude Code). ``b""``: no
    tools; ``None``: they cannot be serialised as they are (no ``default``: each
    caller then does what it did alone)."""
    cached = ctx._tools_json
    if cached is not None and cached[0] is request:
        return cached[1]
    tools = request.get("tools")
    value: bytes | None = _NO_TOOLS
    if tools:
        try:
            value = orjson.dumps(tools, option=_SORTED_STR_KEYS)
        except (TypeError, orjson.JSONEncodeError):
            value = None
    ctx._tools_json = (request, value)
    return value


def request_fingerprint(ctx: RequestContext, request: CanonicalRequest) -> RequestFingerprint | None:
    """The :class:`RequestFingerprint` of ``request``, computed once per request (the
    ledger and analytics share it); ``None`` when the request cannot be serialised."""
    cached = ctx._fingerprint
    if cached is not None and cached[0] is request:
        return cached[1]
    value = fingerprint_of(request, _tools_json(ctx, request))
    ctx._fingerprint = (request, value)
    return value


def _sorted_json(value: object) -> bytes:
    """``value`` serialised as the fingerprint does: sorted keys, non-string keys
    allowed, anything else as ``str``."""
    try:
        return orjson.dumps(value, option=_SORTED_STR_KEYS, default=str)
    except orjson.JSONEncodeError:  # a non-string key (or something that fails either way)
        return orjson.dumps(value, option=_SORTED, default=str)


def fingerprint_of(request: CanonicalRequest, tools_json: bytes | None = None) -> RequestFingerprint | None:
    """The fingerprint of ``request`` (uncached: :func:`request_fingerprint` is the one
    to call on the request path). The messages are serialised and hashed once; the
    prompt digest hashes the rest of the request (serialised with sorted keys) and that
    digest. ``tools_json``: the tools already serialised (:func:`_tools_json`), put in
    their place in the rest's serialisation; the bytes hashed are the same."""
    try:
        messages = _sorted_json(request.get("messages") or [])
        rest = {k: v for k, v in request.items() if k not in VOLATILE_FIELDS and k != "messages"}
        if tools_json and "tools" in rest and all(type(k) is str for k in rest):
            # {"k":v,...} in sorted key order, as orjson writes it, the tools' bytes reused.
            rest_json = b"{" + b",".join(
                orjson.dumps(k) + b":" + (tools_json if k == "tools" else _sorted_json(rest[k])) for k in sorted(rest)
            ) + b"}"
        else:
            rest_json = _sorted_json(rest)
    except (TypeError, orjson.JSONEncodeError):
        return None
    digest = hashlib.blake2b(messages, digest_size=16).digest()
    return RequestFingerprint(hashlib.sha256(rest_json + b"\x00" + digest).hexdigest(), digest)

"""Per-key behaviour for fake upstreams: answers and rate-limit headers by API key.

A real provider answers each API key according to that key's own limits. These
helpers reproduce it on a :class:`~clasp_gateway.testing.fakes.server.FakeUpstream`::

    up.script = by_key({"sk-one": Error(429, headers=openai_limits(0, reset="1s")),
                        "sk-two": Text("hi")})
    FakeUpstream("openai", response_headers=limits_by_key({"sk-two": openai_limits(5)}))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .record import Recorded
from .replies import Error, Reply, Script

__all__ = [
    "anthropic_limits",
    "by_key",
    "key_of",
    "limits_by_key",
    "openai_limits",
    "openai_key_error",
]


def key_of(rec: Recorded) -> str | None:
    """The credential a request carried: the bearer token, else Azure's ``api-key``."""
    return rec.bearer or rec.headers.get("api-key")


def by_key(replies: Mapping[str, Reply | Callable[[], Reply]], default: Reply | None = None) -> Script:
    """A script answering by the request's key (a callable is called per request,
    for a reply that changes); unknown keys get ``default`` (``None``: ``Text("ok")``)."""

    def script(body: dict, rec: Recorded) -> Reply | None:
        found = replies.get(key_of(rec) or "")
        if found is None:
            return default
        return found() if callable(found) else found

    return script


def limits_by_key(headers: Mapping[str, Mapping[str, str]]) -> Callable[[Recorded], dict[str, str] | None]:
    """``response_headers`` for a FakeUpstream: each key's own rate-limit headers."""

    def pick(rec: Recorded) -> dict[str, str] | None:
        found = headers.get(key_of(rec) or "")
        return dict(found) if found is not None else None

    return pick


def openai_limits(
    remaining_requests: int,
    remaining_tokens: int = 149_000,
    *,
    limit_requests: int = 500,
    limit_tokens: int = 150_000,
    reset_requests: str = "120ms",
    reset_tokens: str = "400ms",
) -> dict[str, str]:
    """OpenAI's rate-limit headers (sent on every answer, success or 429)."""
    return {
        "x-ratelimit-limit-requests": str(limit_requests),
        "x-ratelimit-limit-tokens": str(limit_tokens),
        "x-ratelimit-remaining-requests": str(remaining_requests),
        "x-ratelimit-remaining-tokens": str(remaining_tokens),
        "x-ratelimit-reset-requests": reset_requests,
        "x-ratelimit-reset-tokens": reset_tokens,
    }


def anthropic_limits(remaining_requests: int, remaining_tokens: int, reset_rfc3339: str) -> dict[str, str]:
    """Anthropic's rate-limit headers (absolute RFC 3339 reset times)."""
    return {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": str(remaining_requests),
        "anthropic-ratelimit-requests-reset": reset_rfc3339,
        "anthropic-ratelimit-tokens-limit": "40000",
        "anthropic-ratelimit-tokens-remaining": str(remaining_tokens),
        "anthropic-ratelimit-tokens-reset": reset_rfc3339,
    }


def openai_key_error(key: str, status: int = 401) -> Error:
    """An error that quotes the key it refused in full (worse than OpenAI, which
    masks the middle): what a careless upstream or proxy does, for leak tests."""
    body = {
        "error": {
            "message": f"Incorrect API key provided: {key}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    return Error(status, body=body)

"""Reading an answer off the network: idle limit, keep-alives, and size limits.

Shared by every path that owns its wire (the direct OpenAI-compatible path,
LiteLLM-built transform calls, the Anthropic pass-through), so "stalled", "cut",
"silent but alive" and "too large" mean the same everywhere.

Nothing an upstream sends is held in memory without a bound: a whole (non-streamed)
answer is read up to :attr:`ReadLimits.max_body_bytes`, and the stream decoders
(:mod:`.sse`, the NDJSON decoder in :mod:`.transform`, the pass-through's frames)
hold at most :attr:`ReadLimits.max_line_bytes` of an unfinished line or event. An
answer over a limit is an upstream error (:func:`too_large`): before the first byte
reaches the client the request may fail over; after it, the stream ends with an
error event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from ..errors import UpstreamError
from ..types import PING_INTERVAL

if TYPE_CHECKING:
    from ..config import ServerConfig

ERROR_BODY_BYTES = 64 * 1024
"""How much of an error answer is read (for its message); the rest is ignored."""


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """How much of an upstream answer the gateway holds in memory (``server:`` keys
    ``max_upstream_response_bytes`` and ``max_line_bytes``; the defaults are theirs)."""

    max_body_bytes: int = 64 * 1024 * 1024
    """Largest whole (non-streamed) answer."""
    max_line_bytes: int = 8 * 1024 * 1024
    """Longest unfinished SSE/NDJSON line or event of a stream."""

    @classmethod
    def of(cls, server: ServerConfig) -> ReadLimits:
        """The limits configured in ``server:``."""
        return cls(max_body_bytes=server.max_upstream_response_bytes, max_line_bytes=server.max_line_bytes)


class FrameTooLarge(Exception):
    """Raised by a stream decoder when an unfinished line or event passes its limit
    (the caller, which knows the deployment, turns it into :func:`too_large`)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a line of the stream is longer than {limit} bytes")
        self.limit = limit


def too_large(label: str, limit: int, *, line: bool = False) -> UpstreamError:
    """The error for an answer over a limit: 502 ``api_error``, retryable (another
    deployment may answer within it)."""
    what, key = ("a line of the provider's stream", "max_line_bytes") if line else (
        "the provider's answer", "max_upstream_response_bytes")
    error = UpstreamError(
        f"{label}: {what} exceeded the gateway's limit of {limit} bytes (server.{key})",
        upstream_status=502, deployment=label, kind="protocol",
    )
    error.status = 502  # the gateway's upstream failed it: Bad Gateway, not an internal error
    return error


async def read_body(
    response: aiohttp.ClientResponse, label: str, idle: float | None, limit: int, *, truncate: bool = False
) -> bytes:
    """The whole body of ``response``, at most ``limit`` bytes: over it, raise
    :func:`too_large` (or, with ``truncate``, return the first ``limit`` bytes: an
    error body is read only for its message). Each read must come within ``idle``
    seconds."""
    declared = response.content_length
    if declared is not None and declared > limit and not truncate:
        raise too_large(label, limit)
    content = response.content
    out = bytearray()
    try:
        while True:
            async with asyncio.timeout(idle):
                chunk = await content.readany()
            if not chunk:
                break
            out += chunk
            if len(out) > limit:
                if truncate:
                    del out[limit:]
                    break
                raise too_large(label, limit)
    except TimeoutError:
        raise UpstreamError(f"{label}: provider stopped sending", upstream_status=0, deployment=label, kind="timeout") from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(
            f"{label}: connection broke while reading the answer ({type(exc).__name__})",
            upstream_status=0, deployment=label, kind="protocol",
        ) from None
    return bytes(out)


async def read_error_body(response: aiohttp.ClientResponse, label: str, idle: float | None) -> bytes:
    """The first :data:`ERROR_BODY_BYTES` of an error answer (enough for its message)."""
    return await read_body(response, label, idle, ERROR_BODY_BYTES, truncate=True)


async def network_reads(response: aiohttp.ClientResponse, label: str, idle: float | None) -> AsyncIterator[bytes | None]:
    """Each read of ``response``'s body as bytes, ``b""`` once at the end, and ``None``
    whenever the upstream has been silent for :data:`PING_INTERVAL` (time for a
    keep-alive). Raises :class:`UpstreamError` when it is silent for ``idle`` seconds
    or the connection breaks."""
    content = response.content
    loop = asyncio.get_running_loop()
    last_data = loop.time()
    wait = PING_INTERVAL if idle is None else min(idle, PING_INTERVAL)
    while True:
        try:
            async with asyncio.timeout(wait):
                raw = await content.readany()
        except TimeoutError:
            if idle is not None and loop.time() - last_data >= idle:
                raise UpstreamError(
                    f"{label}: stream stalled for {idle:.0f}s", upstream_status=0, deployment=label, kind="timeout"
                ) from None
            yield None
            continue
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"{label}: stream cut by the provider ({type(exc).__name__})",
                upstream_status=0, deployment=label, kind="protocol",
            ) from None
        last_data = loop.time()
        yield raw
        if not raw:
            return

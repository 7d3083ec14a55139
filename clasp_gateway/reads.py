"""Reading a streaming answer off the network, with the idle limit and keep-alives.

Shared by every streaming path (the direct OpenAI-compatible wire, LiteLLM-built
transform calls), so "stalled", "cut" and "silent but alive" mean the same
everywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp

from .errors import UpstreamError
from .types import PING_INTERVAL


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

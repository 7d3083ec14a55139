"""Write coalescing: the provider reports how many decoded chunks are still waiting,
so a route writes a burst of upstream events to the client once."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from clasp_gateway.types import Deployment, ReadAhead
from clasp_gateway.wire.direct import OpenAICompatible


def _event(content: str, finish: str | None = None) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


async def _serve(handler: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v1"


async def test_pending_counts_down_within_one_read_and_is_zero_before_waiting() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        # One write with four events, then a pause, then the last event alone.
        await response.write(b"".join(_event(c) for c in "abcd"))
        await asyncio.sleep(0.2)
        await response.write(_event("e", "stop") + b"data: [DONE]\n\n")
        return response

    runner, base = await _serve(handler)
    adapter = OpenAICompatible()
    read_ahead = ReadAhead()
    seen: list[tuple[str, int]] = []
    try:
        deployment = Deployment(id="t", provider="openai", model="m", api_base=base)
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
        async for chunk in adapter.open(deployment, body, stream=True, read_ahead=read_ahead):
            seen.append((chunk["choices"][0]["delta"]["content"], read_ahead.pending))
    finally:
        await adapter.close()
        await runner.cleanup()
    assert seen == [("a", 3), ("b", 2), ("c", 1), ("d", 0), ("e", 0)]

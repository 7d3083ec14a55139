"""The floor: the least a Python proxy can do, for calibration (``run_bench.py --floor``).

An aiohttp server that forwards ``POST /v1/chat/completions`` bytes unchanged to the
upstream over one pooled aiohttp session and copies each network read of the answer
back to the client. No parsing, no translation, no logging. Whatever CPU it spends
per request is what the event loop, HTTP parsing and socket I/O cost on this
machine, so a gateway's figures read best as a multiple of it.

Usage: ``python passthrough.py --port P --upstream http://127.0.0.1:U``.
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    state: dict[str, aiohttp.ClientSession] = {}

    async def start(app: web.Application) -> None:
        state["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=None), skip_auto_headers=("User-Agent",))

    async def stop(app: web.Application) -> None:
        await state["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with state["session"].post(
            upstream + "/v1/chat/completions", data=body,
            headers={"content-type": "application/json", "authorization": request.headers.get("authorization", "")},
        ) as up:
            response = web.StreamResponse(status=up.status, headers={"content-type": up.headers.get("content-type", "")})
            await response.prepare(request)
            async for data in up.content.iter_any():
                await response.write(data)
            await response.write_eof()
            return response

    app.router.add_post("/v1/chat/completions", forward)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    args = p.parse_args()
    try:
        import uvloop
    except ImportError:
        loop = None
    else:
        loop = uvloop.new_event_loop()
    web.run_app(make_app(args.upstream), host="127.0.0.1", port=args.port, print=None, access_log=None, loop=loop)


if __name__ == "__main__":
    main()

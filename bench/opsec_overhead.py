#!/usr/bin/env python3
"""CPU per request of the opsec pieces when off and on, in process, interleaved A/B.

Three apps on the same fake upstream (OpenAI wire, in a thread of this process), each
request a 21 KB Claude Code-shaped chat request through the whole ASGI app
(``httpx.ASGITransport``, the app's start-up run first):

- ``otel_not_loaded``: clasp-otel unregistered (what the gateway was before it);
- ``otel_off``: clasp-otel loaded, no ``otel:`` section (the default);
- ``otel_on``: ``otel: {exporter: none}``: spans made (a request span, an attempt span,
  the traceparent sent upstream), not exported.

Rounds alternate between the apps (A/B/C, B/C/A...), and the median of the rounds'
CPU per request (``process_time``, so the fake upstream's share is in every figure
alike) is reported with the machine's load. Also, by themselves: the core's content
guard binding per request (``ContentLog.before_call``) and the read of the upstream
headers (``tracing.upstream_headers``) per upstream call.

    .venv/bin/python bench/opsec_overhead.py [--requests 200] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("CLASP_PERMISSION_PROBES", "off")


async def measure(apps: dict[str, Any], body: dict[str, Any], requests: int, rounds: int) -> dict[str, float]:
    import httpx

    from clasp_gateway.testing import GATEWAY_KEY

    samples: dict[str, list[float]] = {name: [] for name in apps}
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for name, app in apps.items():
            await stack.enter_async_context(app.starlette_app.router.lifespan_context(app.starlette_app))
            clients[name] = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench"))
        headers = {"x-api-key": GATEWAY_KEY}
        for client in clients.values():  # warm up
            for _ in range(20):
                assert (await client.post("/v1/chat/completions", json=body, headers=headers)).status_code == 200
        names = list(apps)
        for r in range(rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                started = time.process_time()
                for _ in range(requests):
                    await clients[name].post("/v1/chat/completions", json=body, headers=headers)
                samples[name].append((time.process_time() - started) / requests)
    return {name: statistics.median(values) * 1e6 for name, values in samples.items()}


def per_call(fn: Any, n: int = 20_000) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - started) / n)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    import workload

    from clasp_gateway.content_log import ContentLog
    from clasp_gateway.shell.app import create_app
    from clasp_gateway.testing import FakeUpstream, config_from, openai_models, plugin_manager
    from clasp_gateway.tracing import upstream_headers
    from clasp_gateway.types import RequestContext

    body = workload.openai_request("gpt-4o")
    body["stream"] = False
    with FakeUpstream("openai") as upstream:
        base = {"models": openai_models(upstream.base_url)}
        apps = {}
        off = config_from(base)
        pm = plugin_manager(off)
        pm.unregister(name="otel")
        apps["otel_not_loaded"] = create_app(off, pm)
        apps["otel_off"] = create_app(config_from(base))
        apps["otel_on"] = create_app(config_from({**base, "otel": {"exporter": "none"}}))
        results = asyncio.run(measure(apps, body, args.requests, args.rounds))
    guard = ContentLog({"content": False, "teams": {}, "max_chars": 65536})
    ctx = RequestContext("r", "openai", "gpt-4o", False)
    report = {
        "load_average": os.getloadavg(),
        "cpu_us_per_request": {k: round(v, 1) for k, v in results.items()},
        "content_guard_before_call_us": round(per_call(lambda: guard.before_call(ctx, body)), 2),
        "upstream_headers_read_us": round(per_call(upstream_headers, 200_000), 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

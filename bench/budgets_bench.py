#!/usr/bin/env python3
"""What budgets cost per request, in process: CPU (``time.process_time``) of everything
the budgets plugin does for one streaming request, on a 21 KB Claude-Code-like request
(``workload.py``) counted against two budgets (a global one and the key's own):

- ``before_call``: which budgets, the worst case (``estimate_tokens`` of the request),
  the atomic reservation;
- ``on_stream_chunk`` for each of ``--chunks`` chunks (the streamed text kept for the
  tokenizer);
- ``record`` of the request event: the real cost, the settlement.

``--inflight`` requests hold reservations on the same budgets meanwhile (a busy
gateway's budget documents carry their leases). Backends: memory, SQLite (tmpfs) and,
with ``--redis URL``, Redis. ``run_bench.py --ab`` measures the same end to end, but on
a shared 2-core VM its noise (±0.5 ms per request) hides a difference this size.

Run: ``.venv/bin/python bench/budgets_bench.py [--requests 3000] [--redis redis://127.0.0.1:6379/15]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workload  # noqa: E402
from clasp_budgets.budgets.reservations import Reservations  # noqa: E402
from clasp_budgets.budgets.runtime import BudgetRuntime, count_stream_chunk  # noqa: E402
from clasp_budgets.budgets.settings import BudgetSettings, BudgetSpec  # noqa: E402

from clasp_gateway import (  # noqa: E402
    Attempt,
    Deployment,
    KeyPolicy,
    ModelInfo,
    Principal,
    RequestContext,
    StateBackend,
    Usage,
    await_me_maybe,
    create_state,
)
from clasp_gateway.state import StateSettings  # noqa: E402

DEPLOYMENT = Deployment(id="openai/gpt-4o", provider="openai", model="gpt-4o", api_base="http://127.0.0.1:1/v1",
                        info=ModelInfo(max_output_tokens=16384, input_cost_per_token=2.5e-6,
                                       output_cost_per_token=1e-5))


SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None


class _Route:
    deployments = [DEPLOYMENT]


class _Gateway:
    """What the runtime asks of the gateway: the route of a public model."""

    def resolve_model(self, name: str) -> _Route:
        return _Route()


def canonical_request() -> dict[str, Any]:
    body = workload.openai_request("gpt-4o")
    body["max_tokens"] = 32000
    return body


async def run(state: StateBackend, requests: int, chunks: int, inflight: int) -> float:
    settings = BudgetSettings(limits=(BudgetSpec(name="global", usd=1e9, period="daily"),))
    reservations = Reservations(state, settings)
    stored = type("Stored", (), {"specs": ()})()
    runtime = BudgetRuntime(_Gateway(), settings, reservations, stored)  # type: ignore[arg-type]
    runtime.ready.set()
    principal = Principal(key_id="k1", name="bench", team="t", policy=KeyPolicy(max_budget_usd=1e9,
                                                                                budget_period="monthly"))
    request = canonical_request()
    chunk = {"choices": [{"index": 0, "delta": {"content": "some streamed words "}, "finish_reason": None}]}
    event = {"kind": "request", "status": 200, "cut": False}

    def context(i: int) -> RequestContext:
        return RequestContext(request_id=f"r{i}", api="anthropic", public_model="claude", client_stream=True,
                              principal=principal)

    held = []
    for i in range(inflight):  # requests in flight meanwhile
        ctx = context(-i - 1)
        await runtime.before_call(ctx, dict(request))
        held.append(ctx)
    total = 0.0
    for i in range(requests):
        ctx = context(i)
        body = dict(request)
        start = time.process_time()
        await runtime.before_call(ctx, body)
        attempt = Attempt(DEPLOYMENT)
        attempt.first_byte = time.perf_counter()
        for _ in range(chunks):
            count_stream_chunk(ctx, chunk)
        attempt.usage = Usage(input_tokens=5000, output_tokens=300)
        ctx.attempts.append(attempt)
        await await_me_maybe(runtime.record(ctx, event))
        total += time.process_time() - start
    for ctx in held:
        await await_me_maybe(runtime.record(ctx, event))
    await state.close()
    return total / requests * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--chunks", type=int, default=15)
    parser.add_argument("--redis", default="")
    parser.add_argument("--output", default="")
    args = parser.parse_args()
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=SHM) as tmp:
        backends = {
            "memory": lambda: create_state(StateSettings(backend="memory")),
            "sqlite": lambda: create_state(StateSettings(backend="sqlite", path=str(Path(tmp) / "s.db"))),
        }
        if args.redis:
            from clasp_gateway.state.redis import RedisState

            backends["redis"] = lambda: RedisState(args.redis, prefix=f"bench:{time.time()}:", timeout=2.0)
        for name, make in backends.items():
            for inflight in (0, 32):
                for chunks in (args.chunks, 200):
                    label = f"{name} inflight={inflight} chunks={chunks}"
                    results[label] = await run(make(), args.requests, chunks, inflight)
                    print(f"{label:36s} {results[label]:8.1f} us CPU per request")
    if args.output:
        await asyncio.to_thread(Path(args.output).write_text, json.dumps(results, indent=1))


if __name__ == "__main__":
    asyncio.run(main())

#!/usr/bin/env python3
"""CPU per request of hedged first byte and per-deployment limits on the healthy path,
in process (no network): what a request pays when nothing goes wrong.

- ``commit``: the attempt loop's plain wait for the first chunk (the baseline).
- ``race, no hedge fired``: the same through :func:`clasp_gateway.hedging.race` with a
  hedge armed that never fires (the primary commits first): a task and a timed wait.
- ``fallback hooks``: clasp-fallback's ``hedge_delay`` (the delay from the learned p99,
  the hedge budget's refill) plus the TTFB estimate update in ``after_attempt``.
- ``limits acquire + release``: one deployment with rpm, tpm, rpd and max_concurrency,
  on the memory state backend (Redis adds a round trip, which is wait, not CPU).

Interleaved rounds (A, B, A, B...), the best of 5 each, of 5,000 requests::

    .venv/bin/python bench/hedge_cpu.py
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from clasp_fallback.deployment_limits import DeploymentLimits, Limits  # noqa: E402
from clasp_fallback.hedge import Hedger, HedgeSettings  # noqa: E402

from clasp_gateway import Attempt, Deployment, RequestContext, Timeouts  # noqa: E402
from clasp_gateway.hedging import Launch, race  # noqa: E402
from clasp_gateway.pipeline import Gateway  # noqa: E402
from clasp_gateway.plugins import PluginManager  # noqa: E402
from clasp_gateway.state.memory import MemoryState  # noqa: E402
from clasp_gateway.testing import config_from  # noqa: E402

N = 5000
ROUNDS = 5
CHUNK = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": None}]}
DEP = Deployment(id="primary", provider="openai", model="m", api_base="http://x", timeouts=Timeouts(first_byte=30.0))
BIG = 10**12


async def _chunks() -> AsyncIterator[dict[str, Any]]:
    yield CHUNK


def _ctx() -> RequestContext:
    return RequestContext(request_id="req_1", api="openai", public_model="m", client_stream=True)


async def _loop(body: Callable[[], Awaitable[None]]) -> float:
    began = time.process_time()
    for _ in range(N):
        await body()
    return (time.process_time() - began) / N * 1e6


async def main() -> None:
    gateway = Gateway(config_from({"models": {}}), PluginManager())

    async def commit() -> None:
        await gateway._commit(DEP, _chunks())

    async def raced() -> None:
        ctx = _ctx()
        launch = Launch(DEP, Attempt(DEP), {"messages": []}, _chunks())
        await race(gateway, ctx, launch, 30.0, [], lambda d: asyncio.sleep(0, None), gateway._commit)

    hedger = Hedger(HedgeSettings())

    async def hooks() -> None:
        ctx = _ctx()
        hedger.delay(ctx, DEP)
        attempt = Attempt(DEP, started=1.0, first_byte=1.2, ended=2.0)
        hedger.observe(ctx, attempt, timed_out=False)

    limits = DeploymentLimits(MemoryState(), "fallback:")
    rule = Limits(rpm=BIG, tpm=BIG, rpd=BIG, max_concurrency=BIG)

    async def limited() -> None:
        await limits.acquire("primary", rule, 1000)
        await limits.release("primary", rule, 200)

    async def nothing() -> None:
        _ctx()

    cases = {"commit (baseline)": commit, "race, no hedge fired": raced, "fallback hooks (delay + observe)": hooks,
             "limits acquire + release (4 limits)": limited, "(loop + context only)": nothing}
    best = {name: float("inf") for name in cases}
    for _ in range(ROUNDS):
        for name, body in cases.items():
            best[name] = min(best[name], await _loop(body))
    load = os.getloadavg()[0]
    print(f"CPU µs per request, best of {ROUNDS} interleaved rounds of {N} (load average {load:.1f} on {os.cpu_count()} CPUs)")
    base = best["(loop + context only)"]
    for name, value in best.items():
        print(f"  {name:40s} {value:8.1f}   ({value - base:+.1f} over the loop alone)")
    print(f"  hedging's added CPU on the healthy path: {best['race, no hedge fired'] - best['commit (baseline)']:+.1f} µs")


if __name__ == "__main__":
    asyncio.run(main())

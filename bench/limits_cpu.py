#!/usr/bin/env python3
"""CPU per request of the limits plugin (``clasp_budgets.limits``): its ``before_call``
(admission: every window, the concurrency slot, runaway counting) plus its ``record``
(release, token correction, spend counting), in process, on the memory state backend
(what one process uses; Redis adds a round trip per operation, which is wait, not CPU).

Compare with the gateway's 1.3-4 ms of CPU per request (``run_bench.py``). Best of 5
runs of 5,000 requests, minus building the request context alone::

    .venv/bin/python bench/limits_cpu.py

``--redis URL`` runs the same on a Redis state, ``--sqlite`` on a SQLite file (what
``clasp serve --workers N`` shares without a ``state:`` section): 1,000 requests per
run, and the figure is this process's CPU (the client's side of each round trip;
SQLite's work runs in this process's thread, so it is counted), in a namespace or file
of its own, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from clasp_budgets.limits.runtime import LimitsRuntime
from clasp_budgets.limits.settings import LimitSet, LimitsSettings, RunawaySettings

from clasp_gateway import KeyPolicy, Principal, RequestContext, Secret, StateBackend, StateSettings, create_state

BIG = 10**12
REQUEST = {"messages": [{"role": "user", "content": "hello " * 500}], "max_tokens": 4096}
EVENT = {"kind": "request", "deployment": "d", "cost_usd": 0.001,
         "usage": {"input_tokens": 900, "output_tokens": 300, "cache_read_input_tokens": 0}}
ALL = LimitSet(rpm=BIG, tpm=BIG, rpd=BIG, tpd=BIG, max_concurrency=BIG)
CASES = {
    "plugin loaded, no limits: section, key without limits": (
        LimitsSettings(runaway=RunawaySettings(enabled=False)), KeyPolicy(), None),
    "key rpm + tpm + max_concurrency": (
        LimitsSettings(runaway=RunawaySettings(enabled=False)), KeyPolicy(rpm=BIG, tpm=BIG, max_concurrency=BIG), None),
    "user rpm + tpm + max_concurrency, runaway on (bench/team.yaml's limits:)": (
        LimitsSettings(users={"default": LimitSet(rpm=BIG, tpm=BIG, max_concurrency=BIG)}), KeyPolicy(), "alice"),
    "key + team + user, all five kinds each, runaway on": (
        LimitsSettings(teams={"t": ALL}, users={"default": ALL}, runaway=RunawaySettings(floor_rpm=BIG, floor_usd_per_minute=BIG)),
        KeyPolicy(rpm=BIG, tpm=BIG, rpd=BIG, tpd=BIG, max_concurrency=BIG), "alice"),
}
N = 5000


def context(policy: KeyPolicy, user: str | None) -> RequestContext:
    ctx = RequestContext(request_id="r", api="anthropic", public_model="m", client_stream=True,
                         principal=Principal("k", name="k", team="t", policy=policy))
    ctx.user = user
    return ctx


async def run(state: StateBackend, settings: LimitsSettings, policy: KeyPolicy, user: str | None, n: int) -> float:
    runtime = LimitsRuntime(state, settings)
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(n):
            ctx = context(policy, user)
            await runtime.before_call(ctx, REQUEST)
            await runtime.record(ctx, EVENT)
        spent = time.process_time() - start
        start = time.process_time()
        for _ in range(n):
            context(policy, user)
        base = time.process_time() - start
        best = min(best, (spent - base) / n)
    return best * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", metavar="URL", help="a Redis state (e.g. redis://127.0.0.1:6379/0) instead of memory")
    parser.add_argument("--sqlite", action="store_true", help="a SQLite state (a file of its own) instead of memory")
    args = parser.parse_args()
    prefix = f"clasp-limits-cpu-{os.getpid()}:"
    for name, (settings, policy, user) in CASES.items():
        if args.redis:
            state = create_state(StateSettings(backend="redis", url=Secret(args.redis, args.redis), prefix=prefix))
            n = N // 5
        elif args.sqlite:
            state, n = create_state(StateSettings(backend="sqlite", prefix=prefix)), N // 5
        else:
            state, n = create_state(StateSettings(backend="memory")), N
        await state.open()
        try:
            print(f"{await run(state, settings, policy, user, n):7.4f} ms/request  {name}")
        finally:
            await state.delete_prefix("")
            await state.close()


if __name__ == "__main__":
    asyncio.run(main())

#!/usr/bin/env python3
"""Routing CPU per request: clasp-router's whole decision (regions, capability filter,
strategy, explain plan) over 20 candidates, for each strategy. Target: at most 0.1 ms.

Run: ``LITELLM_LOCAL_MODEL_COST_MAP=True .venv/bin/python bench/route_bench.py [--n 20000]``.
Pure CPU in one process (no gateway, no I/O): ``time.process_time`` around N decisions
on a Claude-Code-like request (tools, a few turns), the median of 5 runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from clasp_router.learning import Learner
from clasp_router.registry import LEARNED, STRATEGIES
from clasp_router.runtime import LEARN_VIEW_KEY, plan_route
from clasp_router.settings import RouterSettings

from clasp_gateway import Deployment, KeyPolicy, ModelInfo, Principal, RequestContext, StateSettings, create_state


def candidates(n: int) -> list[Deployment]:
    out = []
    for i in range(n):
        info = ModelInfo(max_input_tokens=32000 * (1 + i % 4), max_output_tokens=8000 * (1 + i % 3),
                         supports_vision=i % 3 != 0, supports_reasoning=i % 2 == 0,
                         input_cost_per_token=1e-7 * (1 + i), output_cost_per_token=4e-7 * (1 + i))
        region = ("eu-west-1", "us-east-1")[i % 2]
        out.append(Deployment(f"d{i}", "openai", f"m{i}", "", info=info, settings={"region": region}))
    return out


REQUEST = {
    "model": "claude-sonnet-4-6", "max_tokens": 4000, "stream": True,
    "tools": [{"type": "function", "function": {"name": f"tool{i}", "parameters": {"type": "object"}}} for i in range(12)],
    "messages": [{"role": "system", "content": "You are Claude Code. " * 200}]
    + [{"role": "user" if i % 2 == 0 else "assistant", "content": "some code and some words " * 40} for i in range(10)],
}


def run(strategy: str, deps: list[Deployment], n: int, regions: tuple[str, ...]) -> float:
    settings = RouterSettings(strategy=strategy)
    ttfb = {d.id: 100.0 + i for i, d in enumerate(deps)}.get
    principal = Principal("k", policy=KeyPolicy(regions=regions))
    if strategy in LEARNED:  # the learner prepares its view first, as the gateway does
        learner = Learner(settings.learn, deps, create_state(StateSettings()), time.time)

        async def learned() -> float:
            started = time.process_time()
            for _ in range(n):
                ctx = RequestContext("r", "anthropic", "claude-sonnet-4-6", True, principal=principal)
                ctx.request_class = "coding"
                ctx.state[LEARN_VIEW_KEY] = await learner.prepare(ctx, REQUEST)
                plan_route(ctx, REQUEST, deps, settings, ttfb, lambda _: True, deps)
            return (time.process_time() - started) / n * 1000

        return asyncio.run(learned())
    start = time.process_time()
    for _ in range(n):
        ctx = RequestContext("r", "anthropic", "claude-sonnet-4-6", True, principal=principal)
        plan_route(ctx, REQUEST, deps, settings, ttfb, lambda _: True, deps)
    return (time.process_time() - start) / n * 1000


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--candidates", type=int, default=20)
    args = p.parse_args()
    deps = candidates(args.candidates)
    print(f"{args.candidates} candidates, {args.n} decisions per run, median of 5 runs (ms CPU per request)")
    for regions in ((), ("eu-west-1",)):
        for name in STRATEGIES:
            ms = statistics.median(run(name, deps, args.n, regions) for _ in range(5))
            print(f"  {name:16s} regions={','.join(regions) or 'any':10s} {ms:.4f} ms")


if __name__ == "__main__":
    main()

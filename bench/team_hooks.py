#!/usr/bin/env python3
"""Where the team gateway's added time goes, per hook and per plugin, in microseconds.

``team_instructions.py`` counts instructions per configuration, so a plugin's share is
the difference between two runs; it cannot say which hook, or which function inside a
hook, the work is in. This script times them in one run: the team gateway is built in
process as ``team_cpu.py`` builds it (``create_app``, the plugins ``clasp serve`` would
load, driven through ASGI, one request at a time; the upstream is ``fake_upstream.py``
in its own process), and every implementation of every hook the core calls through its
plans (:class:`clasp_gateway.plugins.HookPlan`) is wrapped in a timer, as are the
functions named with ``--functions``. After ``--warmup`` requests it sends
``--requests`` more and prints, per request: the process's CPU, the background writers'
flush (their database writes), and each timed hook implementation and function.

The timer is ``time.perf_counter_ns`` (wall, ~50 ns a reading). One request at a time,
a hook that never suspends takes the same wall time as CPU time; one that awaits
something slow (a database, a network) would include the wait: on the team's memory
state none does. The cost of the timer itself (measured on an empty function, wrapped
the same way) is taken off every call. Timings nest: a function named with
``--functions`` is also inside the hook that calls it.

    .venv/bin/python bench/team_hooks.py [--case short] [--requests 2000]
    .venv/bin/python bench/team_hooks.py --functions clasp_gateway.request_facts:_fingerprint,\\
        clasp_budgets.limits.limiter:Limiter.admit

Absolute figures run 2-4 times what the same code costs in a micro-benchmark of its
own (a request touches far more memory than a loop over one function does); compare
them with each other and across changes on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

Timing = list[int]
"""[nanoseconds, calls]"""

_clock = time.perf_counter_ns


def timed(function: Callable[..., Any], into: Timing) -> Callable[..., Any]:
    """``function`` with its calls' time added to ``into`` (a coroutine function's
    until its coroutine ends; a plain function's that returns an awaitable, until that
    ends)."""
    if inspect.iscoroutinefunction(function):
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            start = _clock()
            try:
                return await function(*args, **kwargs)
            finally:
                into[0] += _clock() - start
                into[1] += 1

        wrapper: Callable[..., Any] = timed_async
    else:
        def timed_sync(*args: Any, **kwargs: Any) -> Any:
            start = _clock()
            try:
                result = function(*args, **kwargs)
            except BaseException:
                into[0] += _clock() - start
                into[1] += 1
                raise
            spent = _clock() - start
            if inspect.isawaitable(result):  # a plain function that hands back its work to await
                return _then(result, spent, into)
            into[0] += spent
            into[1] += 1
            return result

        wrapper = timed_sync
    wrapper.__dict__.update(getattr(function, "__dict__", {}))  # (markers such as skips_text_deltas)
    return wrapper


async def _then(awaitable: Any, spent: int, into: Timing) -> Any:
    """Await what a timed plain function returned (budgets' ``record`` hands back the
    settlement), adding the await to its time."""
    start = _clock()
    try:
        return await awaitable
    finally:
        into[0] += spent + _clock() - start
        into[1] += 1


def overhead_ns(calls: int = 100_000, repeats: int = 5) -> float:
    """What a timed call of an empty function records: the timer's own share of every
    recorded interval (the best of ``repeats``, to stay clear of interruptions)."""
    def empty() -> None:
        return None

    best = math.inf
    for _ in range(repeats):
        sink: Timing = [0, 0]
        wrapped = timed(empty, sink)
        for _ in range(calls):
            wrapped()
        best = min(best, sink[0] / calls)
    return best


def time_hooks(timings: dict[tuple[str, str], Timing]) -> None:
    """Every hook plan built from now on times each of its implementations."""
    from clasp_gateway import plugins

    build = plugins.HookPlan.__init__

    def init(self: Any, hook: Any, argnames: tuple[str, ...]) -> None:
        build(self, hook, argnames)
        self.impls = tuple((name, timed(function, timings.setdefault((hook.name, name), [0, 0])), picks, is_async)
                           for name, function, picks, is_async in self.impls)

    plugins.HookPlan.__init__ = init  # type: ignore[method-assign]


def time_functions(specs: list[str], timings: dict[tuple[str, str], Timing]) -> None:
    """Each ``module:attribute`` (``Class.method`` allowed) replaced by a timed one; a
    module that imported the function by name keeps the original (name that module)."""
    for spec in specs:
        module_name, _, path = spec.partition(":")
        owner: Any = importlib.import_module(module_name)
        parts = path.split(".")
        for part in parts[:-1]:
            owner = getattr(owner, part)
        setattr(owner, parts[-1], timed(getattr(owner, parts[-1]), timings.setdefault(("function", spec), [0, 0])))


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from team_cpu import TEAM_CONFIG, TEAM_PLUGINS, Target, start_upstream

    timings: dict[tuple[str, str], Timing] = {}
    time_hooks(timings)
    time_functions([f for f in args.functions.split(",") if f], timings)
    config = Path(args.team_config).read_text() if args.team_config else TEAM_CONFIG  # noqa: ASYNC240
    plugins = args.team_plugins or TEAM_PLUGINS
    tmp = Path(tempfile.mkdtemp(prefix="clasp-team-hooks-"))
    upstream, port = await start_upstream(tmp)
    target = Target("team", plugins, config, "budgets_keys" in plugins.split(","), tmp, port)
    try:
        await asyncio.to_thread(target.make_key)
        await target.start()
        for _ in range(args.warmup):
            await target.request(args.case)
        await target.flush()
        before = {key: list(value) for key, value in timings.items()}
        cpu = time.process_time()
        for _ in range(args.requests):
            await target.request(args.case)
        cpu = time.process_time() - cpu
        flush = time.process_time()
        await target.flush()
        flush = time.process_time() - flush
    finally:
        if target.app is not None:
            await target.stop()
        upstream.terminate()
        upstream.wait(10)
    n = args.requests
    timer = overhead_ns()
    rows = []
    for (hook, name), (ns, calls) in timings.items():
        ns -= before.get((hook, name), [0, 0])[0]
        calls -= before.get((hook, name), [0, 0])[1]
        if calls:
            rows.append({"hook": hook, "name": name, "us_per_request": round(max(0.0, ns - calls * timer) / n / 1000, 2),
                         "calls_per_request": round(calls / n, 2)})
    rows.sort(key=lambda r: -r["us_per_request"])
    return {"case": args.case, "requests": n, "plugins": plugins, "config": args.team_config or "team.yaml",
            "cpu_us_per_request": round(cpu / n * 1e6, 1), "flush_us_per_request": round(flush / n * 1e6, 1),
            "timer_overhead_ns_per_call": round(timer), "timed": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="short")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--team-plugins", default="", help="CLASP_LOAD_PLUGINS (default: team_cpu.py's team)")
    parser.add_argument("--team-config", default="", metavar="FILE", help="extra clasp.yaml (default: team.yaml)")
    parser.add_argument("--functions", default="", metavar="LIST",
                        help="also time these, comma-separated module:attribute (Class.method allowed)")
    parser.add_argument("--output", default="", help="JSON results file")
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("CLASP_PERMISSION_PROBES", "off")
    result = asyncio.run(measure(args))
    print(f"{result['case']}: {result['cpu_us_per_request']} us of CPU per request, the writers' flush "
          f"{result['flush_us_per_request']} us per request (timer: {result['timer_overhead_ns_per_call']} ns a call, "
          "taken off)")
    for row in result["timed"]:
        print(f"  {row['us_per_request']:8.2f} us  {row['calls_per_request']:5.2f} calls  {row['hook']:18s} {row['name']}")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

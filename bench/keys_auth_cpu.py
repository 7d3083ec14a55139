#!/usr/bin/env python3
"""CPU of authenticating one request: a static key (the core alone, and with clasp-budgets'
virtual keys loaded) against a cached virtual key, in one process, interleaved.

End to end (``run_bench.py --ab . --b-virtual-key``) the difference drowns in the noise
of a shared machine (±0.5 ms per request either way); this isolates the step: the
hook chain as ``Gateway.authenticate`` runs it (``call_first`` over the plugin manager),
on a SQLite database in a temporary directory, the virtual key's lookup cached.

    .venv/bin/python bench/keys_auth_cpu.py [--calls 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("CLASP_DATA_DIR", tempfile.mkdtemp(prefix="clasp-keys-bench-"))

from clasp_gateway import call_first  # noqa: E402
from clasp_gateway.testing import GATEWAY_KEY, config_from  # noqa: E402


async def per_call_us(pm: Any, config: Any, key: str, calls: int) -> float:
    headers = {"x-api-key": key}
    start = time.process_time()
    for _ in range(calls):
        principal = await call_first(pm.hook.authenticate, api_key=key, headers=headers, config=config)
        assert principal is not None
    return (time.process_time() - start) / calls * 1e6


async def started(config: Any, plugins: list[Any]) -> tuple[Any, Any]:
    """An app built as ``clasp serve`` builds it, started in this event loop."""
    from clasp_gateway import call_each
    from clasp_gateway.shell.app import create_app
    from clasp_gateway.testing import plugin_manager

    app = create_app(config, plugin_manager(config, plugins)).starlette_app
    await call_each(app.state.pm.hook.startup, app=app, config=config)
    await app.state.gateway.start()
    return app, app.state.gateway


async def measure(calls: int, rounds: int) -> dict[str, Any]:
    import clasp_budgets.keys.plugin as keys_plugin
    from clasp_budgets.keys.store import Actor

    from clasp_gateway import call_each

    config = config_from({"models": {}})
    off = config_from({"models": {}, "virtual_keys": {"enabled": False}})
    on_app, on = await started(config, [keys_plugin])
    off_app, off_gateway = await started(off, [keys_plugin])
    runtime = on.pm.get_plugin("budgets_keys.runtime")
    virtual, _ = await runtime.store.create_key({"name": "bench"}, Actor(None, "bench"))
    await per_call_us(on.pm, config, virtual, 10)  # looked up once: cached from now on
    cases = (("static key, virtual keys off", off_gateway.pm, off, GATEWAY_KEY),
             ("static key, virtual keys on", on.pm, config, GATEWAY_KEY),
             ("virtual key (cached)", on.pm, config, virtual))
    results: dict[str, list[float]] = {name: [] for name, *_ in cases}
    for _ in range(rounds):
        for name, pm, cfg, key in cases:
            results[name].append(await per_call_us(pm, cfg, key, calls))
    for app, gateway in ((on_app, on), (off_app, off_gateway)):
        await gateway.close()
        await call_each(app.state.pm.hook.shutdown, app=app)
    return {name: {"median_us": round(statistics.median(v), 2), "runs_us": [round(x, 2) for x in v]}
            for name, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args()
    results = asyncio.run(measure(args.calls, args.rounds))
    for name, figures in results.items():
        print(f"{name:32s} {figures['median_us']:8.2f} µs CPU per authentication  (runs: {figures['runs_us']})")
    if args.output:
        with open(args.output, "w") as out:
            json.dump({"calls": args.calls, "rounds": args.rounds, "results": results}, out, indent=2)


if __name__ == "__main__":
    main()

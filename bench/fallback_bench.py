"""How the clasp-fallback plugin behaves when the primary deployment fails.

For each failure mode, a fresh gateway (uvicorn in a thread, the fallback plugin only)
serves ``--requests`` chat completions, paced at ``--rate`` per second, to a chain of
two fake upstreams: a primary failing in that mode and a healthy secondary. Reported:

- success rate (HTTP 200 with an answer);
- latency p50/p99, and what the failure adds to a run where both are healthy;
- calls the failing primary received: how many before its breaker opened, and how many
  after (only the half-open probes, one per cooldown, may reach it), and how many
  requests skipped it.

    LITELLM_LOCAL_MODEL_COST_MAP=True .venv/bin/python bench/fallback_bench.py
    .venv/bin/python bench/fallback_bench.py --requests 500 --rate 100 --modes 500 hang

Hedged first byte (``fallback.hedge``, on by default): ``--hedge off`` for the A/B.
``--warmup N``: the primary answers normally for its first N requests before it fails
in the mode (a deployment that was healthy and starts hanging: its p99 time to first
byte is learned by then; without warm-up the hedge waits ``initial_delay``).
``--ttfb MEDIAN_S:SIGMA``: both fakes answer after a log-normal first-byte delay
(seeded), so healthy traffic has a realistic tail; the table's ``secondary calls``
on the healthy row are then the hedges: the extra upstream calls on healthy traffic.

    .venv/bin/python bench/fallback_bench.py --first-byte 5 --modes hang --warmup 200 --requests 400
    .venv/bin/python bench/fallback_bench.py --modes --ttfb 0.2:0.5 --floor 0.05 --requests 2000 --rate 100

The gateway and the fake upstreams run in a child process per mode (``--serve MODE``),
the load generator in this one, so the client never competes with the gateway for the
GIL. Primary calls are counted by the gateway (``GET /health/providers``): attempts on
the primary, of which the half-open probes are the ones made after its breaker opened.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ["CLASP_LOAD_PLUGINS"] = "fallback"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from clasp_gateway.testing import (  # noqa: E402
    GATEWAY_KEY,
    Cut,
    Error,
    FakeUpstream,
    GatewayServer,
    Hang,
    Text,
    config_from,
    free_port,
)

MODES: dict[str, Callable[[], Any] | None] = {
    "healthy": None,
    "500": lambda: Error(500),
    "429": lambda: Error(429, headers={"retry-after": "30"}),
    "429-short": lambda: Error(429, headers={"retry-after": "0.2"}),
    "hang": lambda: Hang(),
    "refused": None,  # the primary's api_base is a port nobody listens on
    "cut-before-first-byte": lambda: Cut(Text("never"), before_headers=True),
}


@dataclass
class Result:
    mode: str
    ok: int
    total: int
    p50: float
    p99: float
    primary_calls: int
    probes: int
    skipped: int
    seconds: float
    secondary_calls: int = 0
    hedges: int = 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def drive(base_url: str, requests: int, rate: float) -> tuple[list[float], int]:
    """Send ``requests`` paced at ``rate``/s (open loop); latencies of all, and successes."""
    latencies: list[float] = []
    ok = 0
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base_url, headers={"x-api-key": GATEWAY_KEY}, timeout=30, limits=limits) as client:
        body = {"model": "chain", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 16}

        async def one(i: int, start: float) -> None:
            nonlocal ok
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            began = time.perf_counter()
            try:
                response = await client.post("/v1/chat/completions", json=body)
                good = response.status_code == 200 and bool(response.json()["choices"][0]["message"]["content"])
            except httpx.HTTPError:
                good = False
            latencies.append((time.perf_counter() - began) * 1000)
            ok += good

        start = time.perf_counter()
        await asyncio.gather(*(one(i, start) for i in range(requests)))
    return latencies, ok


def _delays(spec: str | None, seed: int) -> Callable[[], float]:
    """First-byte delays: none, or log-normal with the given median and sigma (seeded)."""
    if not spec:
        return lambda: 0.0
    median, sigma = (float(x) for x in spec.split(":"))
    rng = random.Random(seed)
    return lambda: rng.lognormvariate(math.log(median), sigma)


def serve(mode: str, args: argparse.Namespace) -> None:
    """Child process: fakes and a gateway for ``mode``; prints the URL, runs until stdin closes."""
    with FakeUpstream("openai") as primary, FakeUpstream("openai") as secondary:
        fault = MODES[mode]
        first, second = _delays(args.ttfb, 1), _delays(args.ttfb, 2)
        seen = [0]

        def primary_script(body: Any, rec: Any) -> Any:
            seen[0] += 1
            if fault is None or seen[0] <= args.warmup:
                return Text("from primary", delay=first())
            return fault()

        primary.script = primary_script
        secondary.script = lambda body, rec: Text("from secondary", delay=second())
        primary_base = f"http://127.0.0.1:{free_port()}/v1" if mode == "refused" else primary.base_url
        timeouts = {"connect": 1, "first_byte": args.first_byte, "idle": 5, "total": 30}

        def deployment(base: str, ident: str) -> dict[str, Any]:
            return {"id": ident, "model": "openai/gpt-4o-mini", "api_base": base,
                    "api_key": "sk-bench-upstream-0123456789", "timeouts": timeouts}

        config = config_from({
            "server": {"log_level": "error"},
            "models": {"chain": [deployment(primary_base, "primary"), deployment(secondary.base_url, "secondary")]},
            "fallback": {"breaker": {"failures": args.failures, "cooldown": args.cooldown, "max_cooldown": args.cooldown},
                         "hedge": {"enabled": args.hedge == "on", "floor": args.floor, "cold_losses": args.cold_losses,
                                   **({"initial_delay": args.initial_delay} if args.initial_delay else {})}},
        })
        with GatewayServer(config) as gateway:
            print(gateway.base_url, flush=True)
            sys.stdin.read()  # the parent closes our stdin when it is done


def run_mode(mode: str, args: argparse.Namespace) -> Result:
    """Start a child serving ``mode``, drive it, read the primary's counters."""
    command = [sys.executable, __file__, "--serve", mode, "--cooldown", str(args.cooldown),
               "--failures", str(args.failures), "--first-byte", str(args.first_byte), "--hedge", args.hedge,
               "--warmup", str(args.warmup), "--floor", str(args.floor), "--initial-delay", str(args.initial_delay or 0),
               "--cold-losses", args.cold_losses]
    if args.ttfb:
        command += ["--ttfb", args.ttfb]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        base_url = child.stdout.readline().strip()
        if not base_url.startswith("http"):
            raise RuntimeError(f"the gateway for mode {mode!r} did not start")
        if args.warmup:  # healthy traffic first: the primary's latency is learned (not timed)
            asyncio.run(drive(base_url, args.warmup, args.rate))
        began = time.perf_counter()
        latencies, ok = asyncio.run(drive(base_url, args.requests, args.rate))
        seconds = time.perf_counter() - began
        status = httpx.get(base_url + "/health/providers", headers={"x-api-key": GATEWAY_KEY}).json()
        child.stdin.close()
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    entry = next(d for d in status["deployments"] if d["id"] == "primary")
    other = next(d for d in status["deployments"] if d["id"] == "secondary")
    warm = args.warmup  # the warm-up requests reached the primary only (unless it hedged)
    return Result(mode, ok, args.requests, percentile(latencies, 50), percentile(latencies, 99),
                  entry["attempts"]["total"] - warm, entry["attempts"]["probes"], entry["attempts"]["skipped_open_breaker"],
                  seconds, other["attempts"]["total"], entry.get("hedges", {}).get("started", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second (open loop)")
    parser.add_argument("--cooldown", type=float, default=1.0, help="breaker cooldown, seconds")
    parser.add_argument("--failures", type=int, default=5, help="consecutive failures that open the breaker")
    parser.add_argument("--first-byte", type=float, default=1.0, help="first-byte timeout, seconds (the hang mode)")
    parser.add_argument("--hedge", choices=["on", "off"], default="on", help="hedged first byte (fallback.hedge)")
    parser.add_argument("--warmup", type=int, default=0, help="healthy requests before the primary fails")
    parser.add_argument("--floor", type=float, default=0.5, help="fallback.hedge.floor, seconds")
    parser.add_argument("--initial-delay", type=float, default=0.0, help="fallback.hedge.initial_delay (0: default)")
    parser.add_argument("--cold-losses", choices=["ignore", "count"], default="ignore", help="fallback.hedge.cold_losses")
    parser.add_argument("--ttfb", help="MEDIAN_S:SIGMA log-normal first-byte delay of both fakes")
    parser.add_argument("--serve", choices=list(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--modes", nargs="*", default=[m for m in MODES if m != "healthy"], choices=[m for m in MODES if m != "healthy"])
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args)
        return

    print(f"{args.requests} requests per mode at {args.rate:g}/s; breaker: {args.failures} failures, "
          f"{args.cooldown:g}s cooldown; first-byte timeout {args.first_byte:g}s; retry: 1 per deployment (defaults); "
          f"hedge {args.hedge} (floor {args.floor:g}s, cold losses {args.cold_losses}); warm-up {args.warmup}; ttfb {args.ttfb or 'none'}\n")
    baseline = run_mode("healthy", args)
    rows = [baseline] + [run_mode(m, args) for m in args.modes]
    print("| primary fails with | success | p50 ms | p99 ms | added p50 | added p99 | primary calls | before open "
          "| half-open probes | skipped primary | secondary calls | hedges |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        added50 = "" if r is baseline else f"{r.p50 - baseline.p50:+.1f}"
        added99 = "" if r is baseline else f"{r.p99 - baseline.p99:+.1f}"
        before = r.primary_calls - r.probes
        print(f"| {r.mode} | {100 * r.ok / r.total:.1f}% | {r.p50:.1f} | {r.p99:.1f} | {added50} | {added99} "
              f"| {r.primary_calls} | {before if r is not baseline else ''} | {r.probes} | {r.skipped} "
              f"| {r.secondary_calls} | {r.hedges} |")


if __name__ == "__main__":
    main()

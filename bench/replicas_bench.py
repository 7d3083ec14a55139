"""Three replicas behind haproxy against one replica alone: errors, added latency, RSS.

    .venv/bin/python bench/replicas_bench.py                      # 5,000 streams at concurrency 64
    .venv/bin/python bench/replicas_bench.py --requests 1000 --out /tmp/r.json

Set-up, all real processes on 127.0.0.1: ``bench/fake_upstream.py`` (a cheap OpenAI
upstream, its own process, 15-event streamed answers), a Redis (the machine's, else one
started here) for the shared state, a fresh PostgreSQL database for the ledger, and
``clasp serve`` replicas with clasp-claude, clasp-fallback and the ledger loaded. The
load generator (aiohttp, this process) sends Anthropic streaming requests
(``/v1/messages``) and reads each to its end.

Phases, each ``--requests`` streams at ``--concurrency``:

1. ``one_replica``: straight to one replica (no balancer): the baseline.
2. ``one_replica_via_haproxy``: the same replica through haproxy: ``added_latency_ms``
   is this minus phase 1, the balancer's own cost. Phases 1 and 2 run interleaved, in
   10 alternating slices, so a change in the machine's load falls on both.
3. ``three_replicas``: through haproxy (``clasp_gateway.testing.HAPROXY_CONFIG``) to three
   (``three_vs_one_latency_ms``: against phase 1; on a 2-core machine three replicas
   mostly win CPU share from other processes, so read it as capacity, not overhead).
4. ``three_replicas_one_killed``: the same, replica r1 SIGKILLed half-way.

For each: errors (any non-200, or a stream that did not end with ``message_stop``),
latency to the end of each stream (p50, p99, ms), time to the first byte, requests
per second, and the replicas' RSS before and after (``VmRSS``, after a warm-up of
4 x concurrency requests). The machine's load average is recorded: on a shared
machine read the ratios, not the absolutes. Results go to ``bench/results/replicas.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clasp_gateway.testing import (  # noqa: E402
    GatewayProcess,
    GatewayProcesses,
    Haproxy,
    postgres_server,
    redis_server,
)

KEY = "sk-replicas-bench-0123456789abcdef0123"
PLUGINS = "claude,fallback,budgets_ledger"


def start_upstream() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fake_upstream.py"), "--port", "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        raise RuntimeError(f"fake upstream did not start: {line!r}")
    return proc, int(line.split()[1])


def config(upstream_port: int, redis_url: str, prefix: str, database: str) -> dict[str, Any]:
    return {
        "server": {"log_level": "info", "drain_seconds": 5},  # info: readiness is read from the log
        "state": {"backend": "redis", "url": redis_url, "prefix": prefix, "timeout": "2s"},
        "storage": {"url": database},
        "permissions": {"enabled": False},
        "keys": [{"key": KEY, "name": "bench", "team": "bench"}],
        "models": {"bench": [{"id": "fake", "model": "openai/bench-short-model",
                              "api_base": f"http://127.0.0.1:{upstream_port}/v1", "api_key": "sk-fake-0123456789",
                              "input_cost_per_token": 1e-6, "output_cost_per_token": 1e-5}]},
        "fallback": {"retry": {"attempts": 0}},
    }


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_load(url: str, total: int, concurrency: int, kill: GatewayProcess | None = None) -> dict[str, Any]:
    import aiohttp

    body = json.dumps({"model": "bench", "max_tokens": 100, "stream": True,
                       "messages": [{"role": "user", "content": "benchmark turn"}]}).encode()
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    latencies: list[float] = []
    firsts: list[float] = []
    errors: dict[str, int] = {}
    done = 0
    killed_at: int | None = None
    counter = iter(range(total))

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def worker() -> None:
            nonlocal done, killed_at
            for _ in counter:
                started = time.perf_counter()
                try:
                    async with session.post(url + "/v1/messages", data=body, headers=headers) as response:
                        first = time.perf_counter() - started
                        payload = await response.read()
                        if response.status != 200:
                            error(f"status {response.status}")
                        elif not payload.rstrip().endswith(b'{"type":"message_stop"}'):
                            error("cut stream")
                        else:
                            latencies.append((time.perf_counter() - started) * 1000)
                            firsts.append(first * 1000)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    error(type(exc).__name__)
                done += 1
                if kill is not None and killed_at is None and done >= total // 2:
                    killed_at = done
                    os.killpg(kill.pid, signal.SIGKILL)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {
        "requests": total, "concurrency": concurrency, "ok": len(latencies), "errors": errors,
        "error_count": sum(errors.values()), "elapsed_s": round(elapsed, 2), "rps": round(total / elapsed, 1),
        "latency_ms": {"p50": round(percentile(latencies, 0.5), 2), "p99": round(percentile(latencies, 0.99), 2),
                       "mean": round(statistics.fmean(latencies), 2) if latencies else 0.0},
        "first_byte_ms": {"p50": round(percentile(firsts, 0.5), 2), "p99": round(percentile(firsts, 0.99), 2)},
        **({"killed_after_requests": killed_at} if kill is not None else {}),
        "_latencies": latencies, "_firsts": firsts,
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several :func:`run_load` results as one."""
    latencies = [x for r in runs for x in r["_latencies"]]
    firsts = [x for r in runs for x in r["_firsts"]]
    errors: dict[str, int] = {}
    for r in runs:
        for kind, n in r["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    elapsed = sum(r["elapsed_s"] for r in runs)
    total = sum(r["requests"] for r in runs)
    return {
        "requests": total, "concurrency": runs[0]["concurrency"], "ok": len(latencies), "errors": errors,
        "error_count": sum(errors.values()), "elapsed_s": round(elapsed, 2), "rps": round(total / elapsed, 1),
        "latency_ms": {"p50": round(percentile(latencies, 0.5), 2), "p99": round(percentile(latencies, 0.99), 2),
                       "mean": round(statistics.fmean(latencies), 2) if latencies else 0.0},
        "first_byte_ms": {"p50": round(percentile(firsts, 0.5), 2), "p99": round(percentile(firsts, 0.99), 2)},
    }


def interleaved(gateway: GatewayProcess, lb_url: str, args: argparse.Namespace, rounds: int = 10) -> dict[str, Any]:
    """One replica direct and through haproxy, alternating in ``rounds`` slices (which
    goes first alternates too), so the machine's changing load falls on both alike."""
    warm(gateway.base_url, args.concurrency)
    warm(lb_url, args.concurrency)
    before = rss_mb(gateway.pid)
    runs: dict[str, list[dict[str, Any]]] = {"one_replica": [], "one_replica_via_haproxy": []}
    size = max(1, args.requests // rounds)
    for i in range(rounds):
        order = [("one_replica", gateway.base_url), ("one_replica_via_haproxy", lb_url)]
        for name, url in order if i % 2 == 0 else order[::-1]:
            runs[name].append(asyncio.run(run_load(url, size, args.concurrency)))
    results = {name: summary(found) for name, found in runs.items()}
    for name, result in results.items():
        result["rss_mb"] = {"before": {"r0": before}, "after": {"r0": rss_mb(gateway.pid)}}
        result["load_average"] = [round(x, 2) for x in os.getloadavg()]
        result["interleaved_rounds"] = rounds
        print(f"{name}: {json.dumps(result)}", flush=True)
    return results


def warm(url: str, concurrency: int) -> None:
    asyncio.run(run_load(url, 4 * concurrency, concurrency))


def phase(name: str, gateways: list[GatewayProcess], url: str, args: argparse.Namespace,
          kill: GatewayProcess | None = None) -> dict[str, Any]:
    warm(url, args.concurrency)
    before = {f"r{i}": rss_mb(g.pid) for i, g in enumerate(gateways)}
    result = asyncio.run(run_load(url, args.requests, args.concurrency, kill))
    del result["_latencies"], result["_firsts"]
    after = {f"r{i}": rss_mb(g.pid) for i, g in enumerate(gateways)}
    result["rss_mb"] = {"before": before, "after": after}
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(f"{name}: {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "replicas.json"))
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    env = {"CLASP_LOAD_PLUGINS": PLUGINS, "CLASP_PERMISSION_PROBES": "off"}
    results: dict[str, Any] = {"load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                               "cpus": os.cpu_count(), "plugins": PLUGINS}
    upstream, port = start_upstream()
    try:
        with redis_server() as redis, postgres_server() as postgres:
            with redis.namespace() as ns, postgres.database() as database:
                cfg = config(port, ns.url, ns.prefix, database)
                with GatewayProcesses(cfg, count=1, env=env, ready_timeout=180) as one, Haproxy([one[0].port]) as lb:
                    lb.wait_all_up(1)
                    results.update(interleaved(one[0], lb.base_url, args))
                for name, kill in (("three_replicas", False), ("three_replicas_one_killed", True)):
                    with GatewayProcesses(cfg, count=3, env=env, ready_timeout=180) as three, \
                            Haproxy([g.port for g in three]) as lb:
                        lb.wait_all_up(3)
                        results[name] = phase(name, list(three), lb.base_url, args, three[1] if kill else None)
    finally:
        upstream.terminate()
        upstream.wait(10)
    base, lb1 = results["one_replica"]["latency_ms"], results["one_replica_via_haproxy"]["latency_ms"]
    results["added_latency_ms"] = {"p50": round(lb1["p50"] - base["p50"], 2), "p99": round(lb1["p99"] - base["p99"], 2),
                                   "what": "one replica through haproxy minus the same replica direct"}
    lb3 = results["three_replicas"]["latency_ms"]
    results["three_vs_one_latency_ms"] = {"p50": round(lb3["p50"] - base["p50"], 2),
                                          "p99": round(lb3["p99"] - base["p99"], 2),
                                          "what": "three replicas through haproxy minus one replica direct"}
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The team gateway's added CPU per streaming request, in process and interleaved.

Issue 10's target: with keys (a virtual key in SQLite), budgets, limits, the ledger and
metrics on, against the same gateway with them off, at most 0.4 ms of added CPU per
streaming request. ``run_bench.py --ab`` measures it end to end (two ``clasp serve``
processes); on a shared 2-core VM its noise (±0.5 ms) is the size of the target. This
script measures the same difference with less noise:

- both gateways are built in this process (``create_app``, the plugins ``clasp serve``
  would load under each ``CLASP_LOAD_PLUGINS``) and driven through ASGI directly (no
  HTTP server, no client socket: the work common to both is smaller, so the difference
  stands out); their upstream calls go to ``fake_upstream.py`` in its own process, as
  in ``run_bench.py``;
- the targets alternate in batches (``--batch`` requests each, ``--rounds`` times), and
  each batch's CPU is ``time.process_time`` of this process (every thread: aiosqlite's
  writer thread included) divided by its requests. The figure is the median over rounds
  of the per-round difference, with the spread (quartiles) of those differences;
- the background writers (ledger, analytics' quality rows) are flushed at the end of
  every team batch, inside its measurement, so their database writes are counted
  (their batching is the steady state of a busy gateway: at 300 requests per second a
  1 s flush interval writes 300 requests' rows at once; ``--batch`` is that batch).

Targets: ``off`` (``CLASP_LOAD_PLUGINS=claude,fallback``: the issue's "off"), ``team``
(claude, fallback, every clasp-budgets entry point and analytics, with ``team.yaml``'s
``budgets:`` and ``limits:`` and a virtual key; with ``--team-plugins`` but no
``budgets_keys``, the static key), and with ``--all`` also ``all`` (every installed
plugin, the static key, no budgets or limits: what ``run_bench.py`` runs by default).

    .venv/bin/python bench/team_cpu.py [--rounds 15] [--batch 100] [--cases short,long] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workload  # noqa: E402
from run_bench import CASES, GATEWAY_KEY, UPSTREAM_KEY, base_env, clasp_config  # noqa: E402

TEAM_PLUGINS = "claude,fallback,budgets_keys,budgets_limits,budgets_budgets,budgets_alerts,budgets_ledger,analytics"
TEAM_CONFIG = (HERE / "team.yaml").read_text()
"""Budgets and limits that apply to every request and never refuse one (``team.yaml``)."""


class Target:
    """One gateway app, driven through ASGI."""

    def __init__(self, name: str, plugins: str | None, extra: str, virtual_key: bool, tmp: Path,
                 up_port: int) -> None:
        self.name = name
        self.plugins = plugins
        self.extra = extra
        self.virtual_key = virtual_key
        self.dir = tmp / name
        self.dir.mkdir()
        self.cfg = self.dir / "clasp.yaml"
        clasp_config(self.cfg, 8080, up_port, "info", extra)  # never bound (ASGI only)
        self.key = GATEWAY_KEY
        self.app: Any = None
        self.cpu: dict[str, list[float]] = {}
        self._lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def env(self) -> dict[str, str]:
        env = {"CLASP_BENCH_KEY": GATEWAY_KEY, "CLASP_BENCH_UPSTREAM_KEY": UPSTREAM_KEY,
               "CLASP_DATA_DIR": str(self.dir / "data")}
        if self.plugins is not None:
            env["CLASP_LOAD_PLUGINS"] = self.plugins
        return env

    def make_key(self) -> None:
        if not self.virtual_key:
            return
        made = subprocess.run(
            [sys.executable, "-c", "import sys; from clasp_gateway.cli import main; sys.exit(main())",
             "keys", "create", "--name", "bench", "--config", str(self.cfg)],
            capture_output=True, text=True, env={**base_env(), **self.env()}, timeout=300, check=False)
        if made.returncode != 0:
            raise SystemExit(f"clasp keys create failed: {made.stderr}")
        self.key = made.stdout.strip()

    async def start(self) -> None:
        from clasp_gateway.config import load_config
        from clasp_gateway.shell.app import create_app
        from clasp_gateway.shell.heap import settle_heap
        from clasp_gateway.testing.gateway import plugin_manager

        saved = {k: os.environ.get(k) for k in ("CLASP_LOAD_PLUGINS", "CLASP_DATA_DIR")}
        os.environ.pop("CLASP_LOAD_PLUGINS", None)
        os.environ.update(self.env())
        try:
            config = load_config(self.cfg)
            self.app = create_app(config, plugin_manager(config))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lifespan.put_nowait({"type": "lifespan.startup"})

        async def send(message: dict[str, Any]) -> None:
            if message["type"].startswith("lifespan.startup") and not started.done():
                if message["type"].endswith("failed"):
                    started.set_exception(RuntimeError(message.get("message", "start-up failed")))
                else:
                    started.set_result(None)

        self._task = asyncio.create_task(self.app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                                  self._lifespan.get, send))
        await started
        gateway = self.gateway
        while not gateway.ready:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        # As `clasp serve` does once the app has started (clasp_gateway/shell/heap.py): the start-up
        # heap frozen, young collections at 7000 allocations instead of 700.
        settle_heap()

    @property
    def gateway(self) -> Any:
        return self.app.starlette_app.state.gateway

    async def stop(self) -> None:
        self._lifespan.put_nowait({"type": "lifespan.shutdown"})
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)

    async def request(self, case: str) -> int:
        """One streaming ``/v1/messages`` request through ASGI; its status."""
        public = CASES[case][0]
        body = workload.encode(workload.anthropic_request(public))
        headers = [(k.lower().encode(), v.encode()) for k, v in
                   {**workload.ANTHROPIC_HEADERS, "x-api-key": self.key,
                    "content-length": str(len(body))}.items()]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/messages", "raw_path": b"/v1/messages",
                 "query_string": b"beta=true", "root_path": "", "headers": headers,
                 "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080), "state": {}}
        sent = False
        status = 0
        size = 0

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client never leaves
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))

        await self.app(scope, receive, send)
        if status != 200 or size < 100:
            raise RuntimeError(f"{self.name}: status {status}, {size} bytes")
        return status

    async def flush(self) -> None:
        """Write what the background writers hold (counted in the batch)."""
        state = self.app.starlette_app.state
        ledger = getattr(state, "ledger", None)
        if ledger is not None:
            await ledger.writer.flush()
        analytics = getattr(state, "analytics", None)
        if analytics is not None and analytics.quality_rows is not None:
            await analytics.quality_rows.flush()


async def start_upstream(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(  # noqa: ASYNC220 (start-up, not measured)
        [sys.executable, str(HERE / "fake_upstream.py"), "--port", "0"], stdout=subprocess.PIPE,
        stdin=subprocess.PIPE, stderr=(tmp / "fake.log").open("wb"), env=base_env())
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
    if not line.startswith(b"PORT "):
        raise SystemExit(f"fake upstream did not start: {line!r}")
    return proc, int(line.split()[1])


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    team_config = Path(args.team_yaml).read_text() if args.team_yaml else TEAM_CONFIG if args.team_config else ""  # noqa: ASYNC240
    tmp = Path(tempfile.mkdtemp(prefix="clasp-team-cpu-"))
    upstream, port = await start_upstream(tmp)
    targets = [Target("off", "claude,fallback", "", False, tmp, port),
               Target("team", args.team_plugins, team_config, "budgets_keys" in args.team_plugins.split(","), tmp, port)]
    if args.all:
        targets.append(Target("all", None, "", False, tmp, port))
    profiles: dict[str, cProfile.Profile] = {}
    try:
        for t in targets:
            await asyncio.to_thread(t.make_key)
            await t.start()
        for case in args.cases:
            for t in targets:  # warm-up: connections, caches, the virtual key's lookup
                for _ in range(args.warmup):
                    await t.request(case)
                await t.flush()
                t.cpu[case] = []
        for r in range(args.rounds):
            for case in args.cases:
                order = targets if r % 2 == 0 else list(reversed(targets))
                for t in order:
                    prof = None
                    if args.profile:
                        prof = profiles.setdefault(f"{t.name}-{case}", cProfile.Profile(time.thread_time))
                        prof.enable()
                    start = time.process_time()
                    for _ in range(args.batch):
                        await t.request(case)
                    await t.flush()
                    t.cpu[case].append((time.process_time() - start) / args.batch * 1000)
                    if prof is not None:
                        prof.disable()
    finally:
        for t in targets:
            if t.app is not None:
                await t.stop()
        upstream.terminate()
        upstream.wait(10)
    if args.profile:
        out = Path(args.profile)
        out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (after the measurement)
        for name, prof in profiles.items():
            prof.dump_stats(out / f"{name}.prof")
    results: dict[str, Any] = {}
    base = targets[0]
    for case in args.cases:
        row: dict[str, Any] = {}
        for t in targets:
            row[t.name] = {"cpu_ms_per_req_median": round(statistics.median(t.cpu[case]), 4),
                           "rounds_ms": [round(v, 4) for v in t.cpu[case]]}
            if t is not base:
                diffs = [b - a for a, b in zip(base.cpu[case], t.cpu[case], strict=True)]
                q = statistics.quantiles(diffs, n=4) if len(diffs) > 1 else [diffs[0]] * 3
                row[t.name]["added_ms_median"] = round(statistics.median(diffs), 4)
                row[t.name]["added_ms_quartiles"] = [round(q[0], 4), round(q[2], 4)]
        results[case] = row
    return results


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=100, help="requests per target and round (default 100)")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--cases", default="short,long")
    parser.add_argument("--all", action="store_true", help="also every installed plugin with the static key")
    parser.add_argument("--team-plugins", default=TEAM_PLUGINS, help="CLASP_LOAD_PLUGINS of the team gateway "
                        "(to see what one plugin adds: leave it out)")
    parser.add_argument("--no-team-config", dest="team_config", action="store_false",
                        help="the team gateway without its budgets: and limits: sections")
    parser.add_argument("--team-yaml", metavar="FILE", help="the team gateway's extra configuration instead of "
                        "team.yaml (with --team-plugins: the sections of the plugins loaded)")
    parser.add_argument("--profile", metavar="DIR", help="cProfile (CPU time of the event-loop thread: database writer threads are not in it) per target and case into DIR")
    parser.add_argument("--output", default="", help="JSON results file")
    args = parser.parse_args()
    args.cases = [c for c in args.cases.split(",") if c]
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("CLASP_PERMISSION_PROBES", "off")
    before = load_average()
    t0 = time.monotonic()
    results = asyncio.run(bench(args))
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(),
            "load_average_before": before, "load_average_after": load_average(),
            "elapsed_s": round(time.monotonic() - t0, 1),
            "args": {k: getattr(args, k) for k in ("rounds", "batch", "warmup", "cases", "all")},
            "team_plugins": args.team_plugins,
            "team_config": args.team_yaml or ("team.yaml" if args.team_config else "")}
    for case, row in results.items():
        for name, r in row.items():
            added = f"  added {r['added_ms_median']:+.3f} ms (quartiles {r['added_ms_quartiles'][0]:+.3f}.." \
                    f"{r['added_ms_quartiles'][1]:+.3f})" if "added_ms_median" in r else ""
            print(f"{case:6s} {name:5s} {r['cpu_ms_per_req_median']:7.3f} ms CPU/request{added}")
    print(f"load average before {before}, after {meta['load_average_after']} ({os.cpu_count()} cpus)")
    if args.output:
        Path(args.output).write_text(json.dumps({"meta": meta, "cases": results}, indent=1) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

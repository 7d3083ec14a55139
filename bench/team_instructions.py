#!/usr/bin/env python3
"""The team gateway's added work per streaming request, in CPU instructions: a figure
that does not move with the machine's speed or its other load.

``run_bench.py --ab`` and ``team_cpu.py`` measure CPU time, whose run-to-run spread on a
shared VM is the size of issue 10's target (0.4 ms). This script counts instructions
instead, with valgrind's callgrind (``apt-get install valgrind``), which the machine's
speed does not change. Its own spread is not nil. The background writers used to flush
on their 1 s timer, which under callgrind (~50x slower) fires ~50 times as often per
request as in a real run and a varying number of times per run: two runs of the same tree
then agreed within ~0.15 M instructions per request on the ``short`` case and ~0.5 M on
the ``long`` one. By default the writers now write only when the run flushes them (the
ledger's ``flush_interval`` set to 1h, analytics' writer's interval likewise), once after
the warm-up and once after the measured requests, as a busy gateway writes a second's rows
at once; ``--timer-flushes`` keeps the timer. Two runs of the whole ``short`` table then
gave the team's added work as 1.266 M and 1.269 M; what remains moves each ``--without``
figure by up to ~0.07 M (limits and alerts close a minute when the clock turns, and the
``long`` case's chunks arrive in a number of network reads that depends on timing).

For each target it runs a child process (under callgrind) that builds the gateway in
process as ``team_cpu.py`` does (``create_app``, the plugins ``clasp serve`` would load,
driven through ASGI; the upstream is ``fake_upstream.py`` in its own process, not
counted), sends ``--warmup`` requests and then ``N`` more, and exits. It does so twice,
with ``N = 0`` and ``N = --requests``: the difference, divided by ``--requests``, is the
instructions of one request, start-up and warm-up cancelled out.

Instructions are not time (a cache miss costs none here), so quote ``run_bench.py``'s
CPU figures for the target and use these to see what a change or a plugin is worth.

    .venv/bin/python bench/team_instructions.py [--cases short,long] [--requests 200]
    .venv/bin/python bench/team_instructions.py --cases short --without analytics,budgets_ledger,quality
    .venv/bin/python bench/team_instructions.py --team-config bench/team_issue.yaml \
        --team-plugins claude,fallback,budgets_keys,budgets_budgets,budgets_alerts,budgets_ledger,analytics
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TEAM_PLUGINS = "claude,fallback,budgets_keys,budgets_limits,budgets_budgets,budgets_alerts,budgets_ledger,analytics"
OFF_PLUGINS = "claude,fallback"
FEATURES_OFF = {
    "quality": "analytics: {quality: {enabled: false}}\n",  # analytics' quality signals and rows
    "prompt_hash": "ledger: {prompt_hash: false}\n",  # the ledger's fingerprint of each request
    "inspect": "analytics: {quality: {inspect_streams: false}}\n",  # quality's reading of answers
    "retry": "analytics: {quality: {retry_window: 0}}\n",  # quality's retried-conversation signal
}
"""``--without`` names that turn a feature off in clasp.yaml (merged into the team's)."""


def merged(text: str, addition: str) -> str:
    """The YAML ``text`` with ``addition``'s mappings merged in (nested keys kept: appending
    a second ``analytics:`` would replace the first whole, or be refused as a duplicate)."""
    import yaml

    def merge(into: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
        for key, value in more.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value
        return into

    return yaml.safe_dump(merge(yaml.safe_load(text) or {}, yaml.safe_load(addition) or {}))


def child(args: argparse.Namespace) -> None:
    """Inside callgrind: one gateway, warm-up, then ``--count`` requests of ``--case``."""
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("CLASP_PERMISSION_PROBES", "off")
    from team_cpu import Target, start_upstream

    extra = Path(args.config).read_text() if args.config else ""
    if not args.timer_flushes and "budgets_ledger" in args.plugins.split(","):
        extra = merged(extra, "ledger: {flush_interval: 1h}\n")  # written by the run's flush() only

    async def run() -> None:
        tmp = Path(tempfile.mkdtemp(prefix="clasp-instructions-"))
        upstream, port = await start_upstream(tmp)
        plugins = args.plugins
        target = Target("t", plugins, extra, "budgets_keys" in plugins.split(","), tmp, port)
        try:
            await asyncio.to_thread(target.make_key)
            await target.start()
            analytics = getattr(target.app.starlette_app.state, "analytics", None)
            if not args.timer_flushes and analytics is not None and analytics.quality_rows is not None:
                analytics.quality_rows.interval = 3600.0  # its first 1 s wait ends in the warm-up
            for _ in range(args.warmup):
                await target.request(args.case)
            await target.flush()
            for _ in range(args.count):
                await target.request(args.case)
            await target.flush()
        finally:
            if target.app is not None:
                await target.stop()
            upstream.terminate()
            upstream.wait(10)
            shutil.rmtree(tmp, ignore_errors=True)

    asyncio.run(run())


def count(plugins: str, config: str, case: str, n: int, warmup: int, timer_flushes: bool = False) -> int:
    """Instructions of one child run (callgrind's total)."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
           sys.executable, str(Path(__file__).resolve()), "--child", "--plugins", plugins, "--case", case,
           "--count", str(n), "--warmup", str(warmup), *(["--timer-flushes"] if timer_flushes else [])]
    if config:
        cmd += ["--config", config]
    env = {**os.environ, "PYTHONHASHSEED": "0", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"callgrind run failed ({plugins}, {case}, {n}):\n{done.stderr[-3000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="short,long")
    parser.add_argument("--requests", type=int, default=200, help="measured requests per target and case")
    parser.add_argument("--warmup", type=int, default=100, help="requests before the measured ones (the "
                        "limits' runaway detector flags the bench's key after 60: past that, every request is alike)")
    parser.add_argument("--without", default="", metavar="LIST",
                        help="also the team gateway without each of these (a plugin of --team-plugins, "
                             "budgets/limits: team.yaml without that section, or quality, inspect, retry or "
                             "prompt_hash: that feature turned off in clasp.yaml): what each adds")
    parser.add_argument("--team-plugins", default=TEAM_PLUGINS)
    parser.add_argument("--team-config", default=str(HERE / "team.yaml"),
                        help="the team gateway's clasp.yaml additions (e.g. bench/team_issue.yaml: the issue's "
                             "measure as it names it, with --team-plugins without budgets_limits)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--output", default="", help="JSON results file")
    parser.add_argument("--timer-flushes", action="store_true",
                        help="keep the writers' 1 s flush timer (by default they write only when the run "
                             "flushes them, once after the warm-up and once after the measured requests: "
                             "under callgrind the timer fires ~50 times as often per request as in a real "
                             "run, which overstated the writers' per-batch cost and made counts vary)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plugins", default=OFF_PLUGINS, help=argparse.SUPPRESS)
    parser.add_argument("--config", default="", help=argparse.SUPPRESS)
    parser.add_argument("--case", default="short", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    tmp = Path(tempfile.mkdtemp(prefix="clasp-callgrind-"))
    team_yaml = Path(args.team_config).read_text()
    sections = {"budgets": "", "limits": ""}
    for name in sections:  # team.yaml's top-level sections, one by one
        found = re.search(rf"^{name}:\n(?:[ #].*\n?)*", team_yaml, re.M)
        sections[name] = found.group(0) if found else ""
    configs: dict[str, tuple[str, str]] = {"off": (OFF_PLUGINS, ""), "team": (args.team_plugins, team_yaml)}
    for piece in [p for p in args.without.split(",") if p]:
        if piece in FEATURES_OFF:
            configs[f"team-{piece}"] = (args.team_plugins, merged(team_yaml, FEATURES_OFF[piece]))
        elif piece in sections:
            configs[f"team-{piece}"] = (args.team_plugins, team_yaml.replace(sections[piece], ""))
        else:
            configs[f"team-{piece}"] = (",".join(p for p in args.team_plugins.split(",") if p != piece), team_yaml)
    files: dict[str, str] = {}
    for name, (_, text) in configs.items():
        if text:
            path = tmp / f"{name}.yaml"
            path.write_text(text)
            files[name] = str(path)
    cases = [c for c in args.cases.split(",") if c]
    jobs = [(name, case, n) for case in cases for name in configs for n in (0, args.requests)]
    started = time.monotonic()
    totals: dict[tuple[str, str, int], int] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(count, configs[name][0], files.get(name, ""), case, n, args.warmup,
                               args.timer_flushes): (name, case, n)
                   for name, case, n in jobs}
        for future in concurrent.futures.as_completed(futures):
            totals[futures[future]] = future.result()
    results: dict[str, Any] = {}
    for case in cases:
        per = {name: (totals[(name, case, args.requests)] - totals[(name, case, 0)]) / args.requests
               for name in configs}
        row: dict[str, Any] = {name: {"instructions_per_request": round(v)} for name, v in per.items()}
        row["team"]["added_vs_off"] = round(per["team"] - per["off"])
        for name in configs:
            if name.startswith("team-"):
                row[name]["saves_vs_team"] = round(per["team"] - per[name])
        results[case] = row
        print(f"{case}: off {per['off'] / 1e6:.3f} M instructions/request, team {per['team'] / 1e6:.3f} M "
              f"(added {(per['team'] - per['off']) / 1e6:+.3f} M, x{per['team'] / per['off']:.3f})")
        for name in configs:
            if name.startswith("team-"):
                print(f"  without {name[5:]:16s} {per[name] / 1e6:.3f} M: it adds {(per['team'] - per[name]) / 1e6:.3f} M")
    shutil.rmtree(tmp, ignore_errors=True)
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "requests": args.requests, "warmup": args.warmup,
            "team_plugins": args.team_plugins, "team_config": Path(args.team_config).name,
            "timer_flushes": args.timer_flushes,
            "elapsed_s": round(time.monotonic() - started, 1)}
    if args.output:
        Path(args.output).write_text(json.dumps({"meta": meta, "cases": results}, indent=1) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

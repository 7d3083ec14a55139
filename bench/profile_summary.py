#!/usr/bin/env python3
"""Summarize a profile of the gateway taken by ``run_bench.py --profile/--cprofile DIR``.

    python bench/profile_summary.py DIR/clasp-long-c1.prof [--top 25]    # cProfile dump
    python bench/profile_summary.py DIR/clasp-long-c1.txt [--requests N] # py-spy stacks

For a cProfile dump: functions by own time and by cumulative time, with calls per
request (requests read from the ``.json`` beside the dump).

For py-spy collapsed stacks:
prints, as shares of the gateway's busy samples:
- self time by package of the innermost Python frame (C code such as orjson or a
  socket send is charged to the Python function that called it),
- the functions with the most self time, and with the most inclusive time (a
  function counted once per stack, however deep its recursion),
- the hottest lines (self).
With ``--requests N`` (the requests served while sampling, e.g. the ``n`` of that
measurement plus its warm-up) it also converts shares to milliseconds per request
at the sampling rate.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

_PACKAGES = (
    "clasp_gateway", "clasp_claude", "clasp_fallback", "clasp_tool_docs", "starlette", "uvicorn", "httptools",
    "aiohttp", "multidict", "yarl", "asyncio", "pluggy", "logging", "orjson", "uvloop", "contextlib", "typing",
    "dataclasses", "json", "re", "uuid", "hashlib",
)


def package(file: str) -> str:
    parts = file.replace("\\", "/").split("/")
    for p in parts:
        name = p.removesuffix(".py")
        if name in _PACKAGES:
            return name
    return parts[0].removesuffix(".py") if len(parts) > 1 else "stdlib:" + parts[0].removesuffix(".py")


def parse(path: Path) -> list[tuple[list[tuple[str, str, str]], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        frames = []
        for raw in stack.split(";"):
            m = _FRAME.match(raw.strip())
            if m:
                frames.append((m["func"], m["file"], m["line"] or "?"))
            else:
                frames.append((raw.strip(), "?", "?"))
        stacks.append((frames, int(count)))
    return stacks


def summarize_pstats(path: Path, top: int, requests: int | None) -> None:
    """cProfile dump: functions by own time and by cumulative time, with calls per request."""
    import json
    import pstats

    meta = path.with_suffix(".json")
    if requests is None and meta.exists():
        requests = json.loads(meta.read_text()).get("requests") or None
    stats = pstats.Stats(str(path))
    rows = []
    total = 0.0
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        total += tt
        short = file
        for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
            if marker in short:
                short = short.split(marker, 1)[1]
        rows.append((tt, ct, nc, f"{func} ({short}:{line})"))
    n = requests or 1
    unit = "ms/req" if requests else "ms"
    print(f"{path}: {total:.3f} s profiled" + (f", {requests} requests, {total * 1000 / n:.2f} ms/req" if requests else ""))
    print(f"\ntop own time   {unit:>8} {'calls/req':>9}")
    for tt, _ct, nc, name in sorted(rows, reverse=True)[:top]:
        print(f"  {100 * tt / total:5.1f}% {tt * 1000 / n:8.3f} {nc / n:9.1f}  {name}")
    print(f"\ntop cumulative {unit:>8} {'calls/req':>9}")
    for _tt, ct, nc, name in sorted(rows, key=lambda r: r[1], reverse=True)[:top + 15]:
        print(f"  {100 * ct / total:5.1f}% {ct * 1000 / n:8.3f} {nc / n:9.1f}  {name}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--requests", type=int, help="requests served while sampling (for ms/request)")
    p.add_argument("--rate", type=int, default=499, help="py-spy sampling rate used (default 499)")
    args = p.parse_args()
    if args.file.suffix == ".prof":
        summarize_pstats(args.file, args.top, args.requests)
        return

    stacks = parse(args.file)
    total = sum(c for _, c in stacks)
    if not total:
        raise SystemExit("no samples")
    by_pkg: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    for frames, count in stacks:
        func, file, line = frames[-1]
        by_pkg[package(file)] += count
        self_fn[f"{func} ({file})"] += count
        lines[f"{file}:{line} {func}"] += count
        for key in {f"{f} ({fi})" for f, fi, _ in frames}:
            incl_fn[key] += count

    def ms(n: int) -> str:
        if not args.requests:
            return ""
        return f" {n / args.rate * 1000 / args.requests:7.3f} ms/req"

    print(f"{args.file}: {total} samples" + (f", {total / args.rate:.2f} s busy" if args.rate else ""))
    print("\nself time by package of the innermost Python frame")
    for name, n in by_pkg.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%{ms(n)}  {name}")
    print("\ntop self time (function)")
    for name, n in self_fn.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%{ms(n)}  {name}")
    print("\ntop inclusive time (function)")
    for name, n in incl_fn.most_common(args.top + 15):
        print(f"  {100 * n / total:5.1f}%{ms(n)}  {name}")
    print("\nhottest lines (self)")
    for name, n in lines.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%{ms(n)}  {name}")


if __name__ == "__main__":
    main()

"""CPU per call of clasp-claude's request path: Anthropic body -> canonical request, and
the input-token estimate, on the benchmark's Claude-Code-like request (~20 KB, 15 tools).

A measurement, not a test (the unit tests assert no speed: a busy machine would fail
them for nothing). Run it before and after a change to the translator::

    .venv/bin/python bench/claude_request_cpu.py            # µs per call, median of 5 rounds
    .venv/bin/python bench/claude_request_cpu.py --calls 5000

Measured here (2-core VM): ``to_canonical`` ~45 µs, ``estimate_input_tokens`` ~14 µs per call.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).parent))

from clasp_claude.request import estimate_input_tokens, to_canonical  # noqa: E402
from workload import SHORT_MODEL, anthropic_request  # noqa: E402


def per_call_us(fn: Callable[[dict[str, Any]], Any], request: dict[str, Any], calls: int, rounds: int) -> float:
    """Median over ``rounds`` of the CPU microseconds per call (process time, not wall)."""
    fn(copy.deepcopy(request))  # warm caches
    results = []
    for _ in range(rounds):
        body = copy.deepcopy(request)
        start = time.process_time()
        for _ in range(calls):
            fn(body)
        results.append((time.process_time() - start) / calls * 1e6)
    return statistics.median(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported (default 5)")
    args = parser.parse_args()
    request = anthropic_request(SHORT_MODEL)
    print(f"request: {len(str(request)):,} characters, {len(request['tools'])} tools")
    for name, fn in (("to_canonical", to_canonical), ("estimate_input_tokens", estimate_input_tokens)):
        print(f"{name:>22}: {per_call_us(fn, request, args.calls, args.rounds):8.1f} µs CPU per call")


if __name__ == "__main__":
    main()

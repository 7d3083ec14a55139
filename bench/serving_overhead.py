"""CPU per request of :class:`~clasp_gateway.shell.reload.ServingApp`, the layer that
makes reload atomic and drains (it takes the current configuration and counts the
request in flight), measured in-process against the same app without it.

    .venv/bin/python bench/serving_overhead.py              # 200,000 calls, interleaved A/B

The inner app answers at once (an empty ``http.response.start`` / ``body``), so what is
measured is the layer's own cost, not the gateway's. CPU time (``time.process_time``)
per call, alternating A and B in 20 slices so the machine's load falls on both alike.
Results go to ``bench/results/serving_overhead.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clasp_gateway.shell.reload import ServingApp  # noqa: E402


class Inner:
    """Stands for the app create_app builds: answers at once; has what ServingApp reads."""

    def __init__(self, source: str) -> None:
        config = type("C", (), {"source": source})()
        self.starlette_app = type("S", (), {"state": type("St", (), {"config": config})()})()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def calls(app: Any, n: int) -> float:
    scope = {"type": "http", "path": "/v1/messages", "method": "POST"}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    began = time.process_time()
    for _ in range(n):
        await app(scope, receive, send)
    return time.process_time() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "serving_overhead.json"))
    args = parser.parse_args()
    inner = Inner(__file__)
    serving = ServingApp(inner)
    slices = 20
    size = args.calls // slices
    spent = {"bare": 0.0, "serving_app": 0.0}
    for i in range(slices):
        order = [("bare", inner), ("serving_app", serving)]
        for name, app in order if i % 2 == 0 else order[::-1]:
            spent[name] += asyncio.run(calls(app, size))
    per = {name: round(total / (size * slices) * 1e6, 3) for name, total in spent.items()}
    result = {"calls_each": size * slices, "cpu_us_per_call": per,
              "added_cpu_us_per_request": round(per["serving_app"] - per["bare"], 3),
              "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""CPU cost of long-answer continuation (``clasp_gateway/shaping/long_answers.py``), in
process, interleaved A/B (the machine is shared: read the ratios and the differences):

- ``direct``: reading a 200-chunk canonical stream as the routes do;
- ``wrapped, not cut``: the same stream through the continuation wrapper (what every
  request with ``max_tokens`` pays once ``long_answers.max_continuations`` > 0);
- ``wrapped, continued``: 100 chunks cut by ``length``, then a 100-chunk continuation
  (the second part handed over in process: no HTTP, only the wrapper's own work).

Median of 15 interleaved rounds of 300 streams each, CPU time per stream::

    .venv/bin/python bench/long_answers_cpu.py
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

from clasp_gateway import Attempt, Deployment, RequestContext, UpstreamStream, parse_config
from clasp_gateway.shaping.long_answers import LongAnswers, parse_settings
from clasp_gateway.shaping.server_tools import RoundServices

DEP = Deployment(id="d", provider="openai", model="m", api_base="http://x")
REQUEST: Any = {"model": "m", "max_tokens": 4000, "messages": [{"role": "user", "content": "write " * 200}]}
ROUNDS, N = 15, 300


def chunks(n: int, finish: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    out += [{"id": "c", "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": None}]}
            for _ in range(n - 2)]
    out.append({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                "usage": {"prompt_tokens": 300, "completion_tokens": n}})
    return out


WHOLE, CUT, REST = chunks(200, "stop"), chunks(100, "length"), chunks(100, "stop")


async def _iter(items: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for item in items:
        yield item


def stream(items: list[dict[str, Any]]) -> UpstreamStream:
    return UpstreamStream(DEP, Attempt(DEP), items[:1], _iter(items[1:]))


async def _opened(ctx: RequestContext, request: Any, *, stream: bool, continuation: bool = False) -> UpstreamStream:
    return _stream_rest()


def _stream_rest() -> UpstreamStream:
    return stream(REST)


async def _ended(ctx: RequestContext, attempt: Attempt) -> None:
    return None


async def _record(ctx: RequestContext, event: dict[str, Any]) -> None:
    return None


SERVICES = RoundServices(_opened, _ended, _record)
LONG = LongAnswers(parse_settings(parse_config({"models": {}, "long_answers": {"max_continuations": 2}}, "bench")))


async def read(upstream: UpstreamStream) -> int:
    n = 0
    async for _ in upstream:
        n += 1
    return n


async def direct() -> None:
    await read(stream(WHOLE))


async def wrapped(items: list[dict[str, Any]]) -> None:
    ctx = RequestContext("r", "openai", "m", True)
    await read(LONG.wrap(SERVICES, ctx, REQUEST, stream(items), stream=True))


async def main() -> None:
    cases = {"direct (200 chunks)": direct, "wrapped, not cut (200 chunks)": lambda: wrapped(WHOLE),
             "wrapped, continued (100 + 100 chunks)": lambda: wrapped(CUT)}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(ROUNDS):
        for name, case in cases.items():
            start = time.process_time()
            for _ in range(N):
                await case()
            times[name].append((time.process_time() - start) / N * 1e6)
    base = statistics.median(times["direct (200 chunks)"])
    print(f"{'case':<40} {'us CPU/stream':>14} {'vs direct':>10}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<40} {med:>14.1f} {med - base:>+10.1f}")


if __name__ == "__main__":
    asyncio.run(main())

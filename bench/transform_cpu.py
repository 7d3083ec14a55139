"""CPU per request and per stream chunk: the ``transform`` path vs ``litellm.acompletion``.

For Gemini, Cohere and Ollama's native API, a fake upstream (``clasp_gateway.testing.fakes``, in a
thread of this process) answers a Claude-Code-like request (``workload.openai_request``:
~20 KB, 15 tools) with a whole answer, a 10-chunk stream and a 200-chunk stream. Each
variant calls the gateway's adapter directly (what the pipeline calls after
``quirks.prepare_body``):

- ``transform``: ``TransformAdapter`` (LiteLLM's provider config builds and parses,
  the gateway's pooled aiohttp session and own SSE/NDJSON decoding; plain text
  deltas read without LiteLLM's parser);
- ``tf-litellm``: the same with every event through LiteLLM's stream parser (one
  ``ModelResponseStream`` per chunk, converted to a dict);
- ``acompletion``: ``LiteLLMAdapter`` (``litellm.acompletion``: the catch-all path).

CPU is the calling thread's CPU time (``time.thread_time``): the event loop, the
adapter, aiohttp/httpx and LiteLLM all run there; the fake upstream runs in its own
thread and is not counted. Medians over interleaved rounds; per-chunk cost is
``(cpu(200 chunks) - cpu(10 chunks)) / 190``. Run::

    .venv/bin/python bench/transform_cpu.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from workload import openai_request  # noqa: E402

from clasp_gateway.errors import UpstreamError  # noqa: E402
from clasp_gateway.testing import FakeUpstream, Text  # noqa: E402
from clasp_gateway.types import Deployment, RequestHints, Secret, Timeouts  # noqa: E402
from clasp_gateway.wire import catalog  # noqa: E402
from clasp_gateway.wire.credentials import Credentials  # noqa: E402
from clasp_gateway.wire.direct import OpenAICompatible  # noqa: E402
from clasp_gateway.wire.litellm_adapter import LiteLLMAdapter  # noqa: E402
from clasp_gateway.wire.quirks import prepare_body  # noqa: E402
from clasp_gateway.wire.transform import TransformAdapter  # noqa: E402

PROVIDERS = {
    # name: (fake flavor, provider, model, api_base from the fake)
    "gemini": ("gemini", "gemini", "gemini-2.5-flash", lambda up: up.base_url),
    "cohere": ("cohere", "cohere_chat", "command-a-03-2025", lambda up: up.base_url + "/v2/chat"),
    "ollama_chat": ("ollama", "ollama_chat", "llama3.2", lambda up: up.origin),
}
LONG, SHORT = 200, 10


def deployment(provider: str, model: str, api_base: str, mode: str) -> Deployment:
    return Deployment(
        id=f"{provider}-{mode}", provider=provider, model=model, api_base=api_base,
        keys=[Secret("<literal>", "bench-key-0123456789")], mode=mode,  # type: ignore[arg-type]
        info=catalog.model_info(provider, model), timeouts=Timeouts(),
    )


async def one(adapter: Any, dep: Deployment, body: dict[str, Any], stream: bool) -> tuple[float, int]:
    """(CPU seconds of this thread, chunks) for one request, answer fully read.

    The garbage collector is paused during the request and run between requests, so
    no variant pays for another's garbage (this flatters the allocation-heavy
    ``acompletion`` a little); background tasks a variant left (LiteLLM's logging
    callbacks) finish before the clock starts, and are not counted either."""
    for _ in range(5):
        await asyncio.sleep(0.002)
    gc.collect()
    gc.disable()
    try:
        started = time.thread_time()
        n = 0
        async for _ in adapter.open(dep, body, stream=stream):
            n += 1
        return time.thread_time() - started, n
    finally:
        gc.enable()


async def run(rounds: int) -> None:
    direct = OpenAICompatible()
    await direct.start()
    litellm = LiteLLMAdapter(Credentials())
    litellm.ensure_loaded()
    transform = TransformAdapter(litellm.ensure_loaded, direct.upstream)
    every_chunk = TransformAdapter(litellm.ensure_loaded, direct.upstream, fast_paths=False)
    base = openai_request("bench-model")
    print(f"request body: {len(str(base))} chars, {len(base.get('tools') or [])} tools; rounds: {rounds}\n")
    print(f"{'provider':12} {'variant':12} {'whole ms':>9} {'10-chunk ms':>12} {'200-chunk ms':>13} {'per chunk µs':>13}")
    for name, (flavor, provider, model, base_of) in PROVIDERS.items():
        with FakeUpstream(flavor, require_key=False) as up:
            variants = {
                "transform": (transform, deployment(provider, model, base_of(up), "transform")),
                "tf-litellm": (every_chunk, deployment(provider, model, base_of(up), "transform")),
                "acompletion": (litellm, deployment(provider, model, base_of(up), "litellm")),
            }
            cases = {"whole": (False, Text("Sunny and mild.")),
                     "short": (True, Text("x" * SHORT, chunk_size=1)),
                     "long": (True, Text("x" * LONG, chunk_size=1))}
            results: dict[tuple[str, str], list[float]] = {}
            failed: dict[tuple[str, str], str] = {}
            for r in range(rounds + 2):  # two warm-up rounds (first calls build LiteLLM's validators)
                for variant, (adapter, dep) in variants.items():
                    for case, (stream, reply) in cases.items():
                        if (variant, case) in failed:
                            continue
                        body = prepare_body(base, dep, RequestHints(), stream=stream)
                        up.reset()
                        up.queue(reply)
                        try:
                            cpu, _ = await one(adapter, dep, body, stream)
                        except UpstreamError as exc:
                            failed[(variant, case)] = exc.message
                            continue
                        if r >= 2:
                            results.setdefault((variant, case), []).append(cpu)
            for variant in variants:
                med = {case: statistics.median(results[(variant, case)]) * 1000 if (variant, case) in results else None
                       for case in cases}

                def cell(value: float | None, width: int) -> str:
                    return f"{value:{width}.2f}" if value is not None else f"{'fails':>{width}}"

                per_chunk = ((med["long"] - med["short"]) / (LONG - SHORT) * 1000
                             if med["long"] is not None and med["short"] is not None else None)
                print(f"{name:12} {variant:12} {cell(med['whole'], 9)} {cell(med['short'], 12)} "
                      f"{cell(med['long'], 13)} {cell(per_chunk, 13)}")
            for (variant, case), message in failed.items():
                print(f"    {name} {variant} {case}: {message[:160]}")
    await direct.close()


def main() -> None:
    # A variant that fails mid-stream (acompletion on Cohere) drops its connection;
    # the fake's server would log each reset.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    asyncio.run(run(parser.parse_args().rounds))


if __name__ == "__main__":
    main()

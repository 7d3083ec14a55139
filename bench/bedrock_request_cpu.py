"""CPU of one Bedrock call in the gateway's adapter (``clasp-provider-bedrock``).

A fake Bedrock runtime (the plugin's ``tests/fake_bedrock.py``, which verifies every
SigV4 signature with botocore, in a thread of this process) answers a Claude-Code-like
request (``workload.openai_request``: ~20 KB, 15 tools). Each round calls
``BedrockProvider.open`` for a whole answer and for a 10-event stream, with static
credentials; CPU is the calling thread's (``time.thread_time``: the event loop, the
request build, the signing, aiohttp, the decoding; the fake runs in its own thread).
``--build`` measures the request build alone (Converse body, credentials, SigV4
headers: what ``open`` does before it sends: ``request_for``, ``credentials.get``, ``sign``).

``--tree DIR`` imports ``clasp_provider_bedrock`` from ``DIR`` (a copy of another
version, e.g. ``git archive main plugins/clasp-provider-bedrock``); ``--compare DIR``
runs this version and ``DIR``'s in alternating subprocesses (A B A B ...) and prints
both medians, so both see the same machine load. Run::

    .venv/bin/python bench/bedrock_request_cpu.py --compare /tmp/bedrock-before --rounds 6
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "plugins" / "clasp-provider-bedrock"


def measure(tree: str | None, requests: int) -> dict[str, Any]:
    """Median CPU microseconds per call in this process (see the module docstring)."""
    if tree:
        sys.path.insert(0, tree)
    sys.path.insert(0, str(ROOT / "bench"))
    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION"):
        os.environ.pop(name, None)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    import clasp_provider_bedrock
    import litellm  # noqa: F401  (the gateway imports it before serving)
    from botocore.credentials import Credentials
    from workload import openai_request

    from clasp_gateway.config import parse_config
    from clasp_gateway.testing import load_module

    fake = load_module(PLUGIN / "tests" / "fake_bedrock.py", "bench_fake_bedrock")
    Answer = fake.Answer
    body = openai_request("x")
    body.pop("model", None)
    body.pop("stream_options", None)

    def answer() -> Any:
        return Answer(text="Here is the answer to your question, now and in fifteen events.", piece=4096)

    async def run(server: Any) -> dict[str, Any]:
        deployment = parse_config({"models": {"*": [{"model": f"bedrock/{fake.MODEL}", "region": fake.REGION,
                                                       "api_base": server.base_url}]}}).models[0].deployments[0]
        provider = clasp_provider_bedrock.BedrockProvider(
            resolver=lambda: Credentials(fake.ACCESS_KEY, fake.SECRET_KEY, None))
        results: dict[str, list[float]] = {"whole": [], "stream": [], "build": []}

        async def call(stream: bool) -> float:
            server.queue(answer())
            gc.collect()
            start = time.thread_time()
            chunks = [c async for c in provider.open(deployment, dict(body), stream=stream)]
            spent = time.thread_time() - start
            assert chunks, "no answer"
            return spent

        async def build() -> float:
            target = await provider.target(deployment)
            gc.collect()
            start = time.thread_time()
            suffix, payload = provider.request_for(deployment, dict(body), stream=True)
            credentials = await target.credentials.get()
            provider.sign(target.endpoint + suffix, payload, credentials, target.region,
                          "application/vnd.amazon.eventstream")
            return time.thread_time() - start

        for _ in range(5):  # warm: imports, LiteLLM's first transform, the pool, credentials
            await call(False)
            await call(True)
            await build()
        for _ in range(requests):
            results["whole"].append(await call(False))
            results["stream"].append(await call(True))
            results["build"].append(await build())
        await provider.close()
        return {k: statistics.median(v) * 1e6 for k, v in results.items()}

    with fake.FakeBedrock() as server:
        found = asyncio.run(run(server))
    found["module"] = clasp_provider_bedrock.__file__
    return found


def compare(before: str, rounds: int, requests: int) -> None:
    """Alternate subprocesses of this version (after) and ``before``'s; medians of medians."""
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for _ in range(rounds):
        for label, tree in (("before", before), ("after", "")):
            argv = [sys.executable, __file__, "--requests", str(requests), "--json"]
            if tree:
                argv += ["--tree", tree]
            done = subprocess.run(argv, capture_output=True, text=True, check=True)
            runs[label].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; {rounds} rounds x {requests} requests")
    print("modules: " + ", ".join(f"{k}={v[0]['module']}" for k, v in runs.items()))
    print(f"{'CPU per call (us, median)':34}{'before':>10}{'after':>10}{'saved':>10}")
    for kind, what in (("build", "request build (body+creds+SigV4)"), ("whole", "whole answer, full call"),
                       ("stream", "15-event stream, full call")):
        b = statistics.median(r[kind] for r in runs["before"])
        a = statistics.median(r[kind] for r in runs["after"])
        print(f"{what:34}{b:10.0f}{a:10.0f}{b - a:10.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", default="", help="import clasp_provider_bedrock from this directory")
    parser.add_argument("--compare", metavar="DIR", help="alternate with DIR's version")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.compare:
        compare(args.compare, args.rounds, args.requests)
        return
    found = measure(args.tree or None, args.requests)
    print(json.dumps(found) if args.json else found)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""CPU per request of clasp-analytics' hooks, measured in process (no network, no noise
from other processes' scheduling): what ``run_bench.py --ab`` measures end to end, split
by piece, with enough iterations to read microseconds on a busy machine.

For each piece, the median over ``--rounds`` of ``process_time`` per call:

- ``before_call``: in-flight gauge and the conversation fingerprint of the benchmark's
  21 KB Claude Code request (``workload.py``), converted the way the gateway sees it;
- ``record(attempt)`` and ``record(request)``: the metric updates of one request
  (without the retry check: one shared-state script per request, see ``state_bench.py``
  for its cost per backend; on the memory state none, an in-process window instead);
- ``on_stream_chunk``: one chunk through the core's per-chunk dispatch
  (``plugins.call_each_sync``) into the stream inspector, times 15 and 200 chunks;
- ``quality_row_write``: one quality row inserted by the batched writer (SQLite, 500-row
  batches), off the request's path;
- ``request_short``/``request_long``: everything analytics does for one streamed
  request of ``fake_upstream.py``'s short (15 events, a tool call) and long (200
  chunks) answers, as the gateway drives it on the memory state: ``before_call``, the
  chunks through the core's per-stream notifier (text deltas skipped by the core's
  test, which is counted: analytics' inspector is what makes the core run it), both
  ``record`` events (the retry check included) and the queued quality row; each
  request a new conversation (``_repeated``: every request the same one, as
  ``team_cpu.py``'s requests are, so each is a retry). The request's fingerprint is
  computed before (the core's, shared with the ledger);
- multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set, as with ``server.workers`` > 1):
  the same ``record(request)`` writing to mmapped files.

    .venv/bin/python bench/analytics_cpu.py [--iterations 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
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


def measure(fn: Any, iterations: int, rounds: int) -> float:
    """Median CPU microseconds per call."""
    samples = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(iterations):
            fn()
        samples.append((time.process_time() - start) / iterations * 1e6)
    return statistics.median(samples)


def run(iterations: int, rounds: int) -> dict[str, float]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import workload
    from clasp_analytics.quality import StreamInspector
    from clasp_analytics.runtime import AnalyticsRuntime
    from clasp_analytics.settings import parse_settings

    from clasp_gateway import Handover, Principal, RequestContext, hookimpl  # noqa: F401
    from clasp_gateway.plugins import PluginManager, call_each_sync
    from clasp_gateway.testing import config_from

    config = config_from({"models": {}})
    settings = parse_settings(config)

    class FakeGateway:
        hook_failures: dict[str, int] = {}
        database = None
        migrations: list[Any] = []
        handover = Handover()
        state = None

        class config:  # noqa: N801
            class server:  # noqa: N801
                workers = 1

    runtime = AnalyticsRuntime(FakeGateway(), settings)  # type: ignore[arg-type]
    request = workload.openai_request("gpt-4o")
    principal = Principal(key_id="abc123", name="bench", team="platform")

    def new_ctx() -> RequestContext:
        return RequestContext(request_id="req_1", api="anthropic", public_model="claude-sonnet-4-5",
                              client_stream=True, principal=principal, request_class="coding")

    attempt = {"kind": "attempt", "deployment": "openai/gpt-4o", "provider": "openai", "ok": True,
               "upstream_status": 200}
    event = {"kind": "request", "request_id": "req_1", "api": "anthropic", "public_model": "claude-sonnet-4-5",
             "deployment": "openai/gpt-4o", "provider": "openai", "model": "gpt-4o", "team": "platform",
             "key_name": "bench", "status": 200, "cut": False, "request_class": "coding",
             "usage": {"input_tokens": 5000, "output_tokens": 300, "cache_read_input_tokens": 1000},
             "cost_usd": 0.0123, "latency_ms": 900.0, "ttfb_ms": 200.0,
             "attempts": [{"deployment": "openai/gpt-4o", "ok": True}]}
    out: dict[str, float] = {}
    ctx = new_ctx()
    out["before_call_with_fingerprint_us"] = measure(lambda: runtime.before_call(ctx, request), iterations // 10, rounds)
    runtime.retry_window = 0.0  # the retry check's state operations are measured by state_bench.py
    out["record_attempt_us"] = measure(lambda: runtime.record(ctx, attempt), iterations, rounds)

    def one_request() -> None:
        c = new_ctx()
        runtime.before_call(c, request)
        runtime.record(c, event)

    out["before_call_plus_record_request_us"] = measure(one_request, iterations // 10, rounds)
    runtime.quality = False
    runtime.retry_window = 0.0
    out["record_request_metrics_only_us"] = measure(lambda: runtime.record(new_ctx(), event), iterations, rounds)
    runtime.quality = True

    pm = PluginManager()
    pm.register(StreamInspector(), name="inspector")
    chunk = {"choices": [{"index": 0, "delta": {"content": "abcd"}, "finish_reason": None}]}
    tool_chunk = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]},
                               "finish_reason": None}]}

    def failed(plugin: str, error: Exception) -> None:
        raise error

    out["on_stream_chunk_text_us"] = measure(
        lambda: call_each_sync(pm.hook.on_stream_chunk, on_failure=failed, ctx=ctx, chunk=chunk), iterations, rounds)
    out["on_stream_chunk_tool_us"] = measure(
        lambda: call_each_sync(pm.hook.on_stream_chunk, on_failure=failed, ctx=new_ctx(), chunk=tool_chunk),
        iterations, rounds)
    out["stream_15_chunks_us"] = out["on_stream_chunk_text_us"] * 15
    out["stream_200_chunks_us"] = out["on_stream_chunk_text_us"] * 200
    out["quality_row_write_us"] = asyncio.run(_writer_cost(rounds))
    for case in ("short", "long"):
        for repeated in (False, True):
            name = f"request_{case}{'_repeated' if repeated else ''}_us"
            out[name] = asyncio.run(_whole_request(case, repeated, iterations // 10, rounds))
    return out


async def _whole_request(case: str, repeated: bool, iterations: int, rounds: int) -> float:
    """CPU microseconds of analytics' part of one streamed request (see the module docs)."""
    import fake_upstream
    import workload
    from clasp_analytics.quality import StreamInspector
    from clasp_analytics.runtime import AnalyticsRuntime
    from clasp_analytics.settings import parse_settings

    from clasp_gateway import Handover, Principal, RequestContext, request_fingerprint
    from clasp_gateway.plugins import PluginManager, is_text_delta, notifier
    from clasp_gateway.state.memory import MemoryState
    from clasp_gateway.testing import config_from

    class FakeGateway:
        hook_failures: dict[str, int] = {}
        database = object()  # a writer that queues (never flushed here: quality_row_write is that)
        migrations: list[Any] = []
        handover = Handover()
        state = MemoryState()

        class config:  # noqa: N801
            class server:  # noqa: N801
                workers = 1

    runtime = AnalyticsRuntime(FakeGateway(), parse_settings(config_from({"models": {}})))  # type: ignore[arg-type]
    pm = PluginManager()
    pm.register(StreamInspector(), name="inspector")

    def failed(plugin: str, error: Exception) -> None:
        raise error

    notify = notifier(pm.hook.on_stream_chunk, failed, ("ctx", "chunk"))
    chunks = (fake_upstream.short_turn if case == "short" else fake_upstream.long_turn)("gpt-4o")[0]
    request = workload.openai_request("gpt-4o")
    principal = Principal(key_id="abc123", name="bench", team="platform")
    attempt = {"kind": "attempt", "deployment": "openai/gpt-4o", "provider": "openai", "ok": True,
               "upstream_status": 200}
    event = {"kind": "request", "api": "anthropic", "public_model": "claude-sonnet-4-5", "deployment": "openai/gpt-4o",
             "provider": "openai", "model": "gpt-4o", "key_id": "abc123", "key_name": "bench", "team": "platform",
             "project": None, "status": 200, "cut": False, "request_class": "coding",
             "usage": {"input_tokens": 6500, "output_tokens": 42, "cache_read_input_tokens": 0,
                       "cache_creation_input_tokens": 0, "reasoning_tokens": 0},
             "cost_usd": 0.0123, "latency_ms": 900.0, "ttfb_ms": 200.0,
             "attempts": [{"deployment": "openai/gpt-4o", "ok": True}]}
    samples = []
    made = 0
    for _ in range(rounds):
        contexts = []
        for _ in range(iterations):
            made += 1
            ctx = RequestContext(request_id=f"req_{made}", api="anthropic", public_model="claude-sonnet-4-5",
                                 client_stream=True, principal=principal, request_class="coding")
            ctx.user = "same" if repeated else f"user_{made}"
            request_fingerprint(ctx, request)
            contexts.append(ctx)
        start = time.process_time()
        for ctx in contexts:
            runtime.before_call(ctx, request)
            for chunk in chunks:
                if not is_text_delta(chunk):
                    notify(ctx, chunk)
            for ev in (attempt, event):
                pending = runtime.record(ctx, ev)
                if pending is not None:
                    await pending
        samples.append((time.process_time() - start) / iterations * 1e6)
        assert runtime.quality_rows is not None
        runtime.quality_rows.pending.clear()
    return statistics.median(samples)


async def _writer_cost(rounds: int, rows: int = 2000) -> float:
    """CPU per quality row written by the batched writer into SQLite (500-row batches;
    aiosqlite's thread included, since process_time counts every thread)."""
    from clasp_analytics.tables import QUALITY
    from clasp_analytics.writer import BatchWriter
    from sqlalchemy.ext.asyncio import create_async_engine

    directory = tempfile.mkdtemp(prefix="clasp-analytics-bench-")
    engine = create_async_engine(f"sqlite+aiosqlite:///{directory}/bench.db")
    async with engine.begin() as conn:
        await conn.run_sync(QUALITY.metadata.create_all)
    samples = []
    for r in range(rounds):
        writer = BatchWriter(engine, QUALITY, batch=500)
        for i in range(rows):
            row = {"request_id": f"req_{r}_{i}", "ts": time.time(), "api": "anthropic", "public_model": "claude",
                   "request_class": "coding", "provider": "openai", "model": "gpt-4o",
                   "deployment": "openai/gpt-4o", "key_id": "abc", "key_name": "bench", "team": "platform",
                   "project": None, "status": 200, "error": False, "truncated": False,
                   "invalid_tool_json": False, "fingerprint": "f" * 32, "retry_of": None}
            writer.add(tuple(row[column.name] for column in QUALITY.columns))
        start = time.process_time()
        await writer.flush()
        samples.append((time.process_time() - start) / rows * 1e6)
    await engine.dispose()
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", choices=["single", "multiprocess"], help=argparse.SUPPRESS)
    parser.add_argument("--output", default=str(HERE / "results" / "analytics_cpu.json"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.iterations, args.rounds)))
        return 0
    results: dict[str, Any] = {}
    for mode in ("single", "multiprocess"):
        env = dict(os.environ)
        with tempfile.TemporaryDirectory() as directory:
            if mode == "multiprocess":
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            else:
                env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            done = subprocess.run([sys.executable, __file__, "--child", mode, "--iterations", str(args.iterations),
                                   "--rounds", str(args.rounds)], capture_output=True, text=True, env=env,
                                  timeout=900, check=True)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    for mode, figures in results.items():
        print(mode)
        for name, value in figures.items():
            print(f"  {name:40s} {value:8.2f}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

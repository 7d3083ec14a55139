#!/usr/bin/env python3
"""Benchmark the gateway (and the LiteLLM proxy) against the upstream called directly.

Starts, on 127.0.0.1 only: a cheap fake OpenAI-compatible upstream
(``fake_upstream.py``, its own process), the clasp gateway (``clasp serve``: real
uvicorn, its own process) and, if installed, the LiteLLM proxy (``litellm
--config``). Then sends the same Claude-Code-like ``/v1/messages`` stream requests
to both gateways, and the equivalent chat-completions request to the fake directly,
interleaved in rounds, and reports per target:

- added latency p50/p99 (target minus direct) at concurrency 1 and 32,
- gateway CPU ms per request (utime+stime of the process tree from /proc, so a
  paused VM does not inflate it),
- peak RSS (VmHWM) of the gateway process tree,
- time (and CPU) from process start to the first answered request.

Every loop is bounded by a count and a deadline, every child process is killed on
exit. See bench/README.md for what each figure means and how to run it.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import workload  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PIN_GATEWAYS = ""
"""``--pin-gateways``: the CPU list (``taskset -c``) every gateway runs on, or "" (none)."""
GATEWAY_KEY = "sk-bench-gateway-0123456789abcdef0123456789abcdef"
UPSTREAM_KEY = "sk-bench-upstream-0123456789abcdef"
DEFAULT_LITELLM_VENV = os.environ.get("CLASP_BENCH_LITELLM_VENV", "/root/.cache/clasp/litellm-proxy-venv")

CASES = {
    # name: (public model, upstream model, description)
    "short": (workload.SHORT_MODEL, workload.UPSTREAM_SHORT, "21 KB Claude Code request, short stream (15 events)"),
    "long": (workload.LONG_MODEL, workload.UPSTREAM_LONG, "21 KB Claude Code request, 200-chunk stream sent in a burst"),
    "paced": (workload.PACED_MODEL, workload.UPSTREAM_PACED,
              "21 KB Claude Code request, 200-chunk stream, one chunk per --gap-ms (opt-in: slow at concurrency 1)"),
}


# --- /proc accounting ---------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    pids: list[int] = []
    todo = [pid]
    while todo and len(pids) < 256:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process tree (all threads, including exited ones)."""
    user = system = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            user += int(fields[11])
            system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def run_ns(pid: int) -> int:
    """Nanoseconds the process tree's live threads have run on a CPU
    (``/proc/PID/task/TID/schedstat``: the scheduler's clock, not the 10 ms tick of
    ``/proc/PID/stat``), so a short batch's CPU is exact. Threads that exited are not
    counted (the gateway keeps its threads); 0 where schedstat is unavailable."""
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += int(Path(f"/proc/{p}/task/{task}/schedstat").read_text().split()[0])
    return total


def cpu_seconds(pid: int) -> float:
    """utime+stime of the process tree."""
    return sum(cpu_times(pid))


def machine_busy() -> float:
    """CPU seconds all processes of the machine spent busy (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def _status_kb(pid: int, key: str) -> int:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
    return total


def peak_rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmHWM") / 1024


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


# --- a minimal HTTP/1.1 client (cheap, keep-alive, one request at a time per connection) -------


class ClientError(Exception):
    pass


class Connection(asyncio.Protocol):
    """One keep-alive connection. ``request`` sends pre-rendered bytes and waits for the
    whole response (content-length or chunked), timing first body byte and the end."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.lost = False
        self._reset()

    def _reset(self) -> None:
        self.buf = bytearray()
        self.hdr_end = -1
        self.status = 0
        self.length: int | None = None
        self.chunked = False
        self.t_first = 0.0
        self.t_end = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        w = self.waiter
        if w is not None and not w.done():
            if self.hdr_end >= 0 and self.length is None and not self.chunked:
                self.t_end = time.perf_counter()
                w.set_result(None)  # body delimited by close
            else:
                w.set_exception(ClientError("connection closed mid-response"))

    def data_received(self, data: bytes) -> None:
        w = self.waiter
        if w is None or w.done():
            return
        buf = self.buf
        buf += data
        if self.hdr_end < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            self.status = int(head[9:12])
            self.hdr_end = end + 4
            pos = head.find(b"\r\ncontent-length:")
            if pos >= 0:
                stop = head.find(b"\r\n", pos + 2)
                self.length = int(head[pos + 17: stop if stop >= 0 else None])
            self.chunked = b"\r\ntransfer-encoding: chunked" in head
        if not self.t_first and len(buf) > self.hdr_end:
            self.t_first = time.perf_counter()
        if self.chunked:
            if buf.endswith(b"0\r\n\r\n") and (len(buf) == self.hdr_end + 5 or buf[-7:-5] == b"\r\n"):
                self.t_end = time.perf_counter()
                w.set_result(None)
        elif self.length is not None and len(buf) >= self.hdr_end + self.length:
            self.t_end = time.perf_counter()
            w.set_result(None)

    async def request(self, raw: bytes, timeout: float) -> tuple[int, float, float, bytes]:  # noqa: ASYNC109
        """Send ``raw``; return (status, seconds to first body byte, seconds to end, body)."""
        if self.lost or self.transport is None:
            raise ClientError("connection is closed")
        self._reset()
        self.waiter = asyncio.get_running_loop().create_future()
        t0 = time.perf_counter()
        self.transport.write(raw)
        await asyncio.wait_for(self.waiter, timeout)
        body = bytes(self.buf[self.hdr_end:])
        return self.status, (self.t_first or self.t_end) - t0, self.t_end - t0, body

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(port: int) -> Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(Connection, "127.0.0.1", port)
    return conn


def dechunk(body: bytes) -> bytes:
    out, pos = bytearray(), 0
    while pos < len(body):
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end].split(b";")[0], 16)
        if size == 0:
            break
        out += body[end + 2: end + 2 + size]
        pos = end + 2 + size + 2
    return bytes(out)


def render_request(path: str, port: int, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"host: 127.0.0.1:{port}", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --- targets ------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int = 0
    pid: int = 0
    proc: subprocess.Popen[bytes] | None = None
    requests: dict[str, bytes] = field(default_factory=dict)  # case -> raw request
    startup: dict[str, Any] = field(default_factory=dict)
    is_direct: bool = False
    openai_format: bool = False

    def check(self, case: str, status: int, body: bytes) -> str | None:
        """A reason the answer is wrong, or None (cheap: runs on every answer)."""
        if status != 200:
            return f"HTTP {status}"
        tail = body[-400:]
        if self.openai_format:
            return None if b"[DONE]" in tail else "no [DONE]"
        return None if b"message_stop" in tail else "no message_stop"

    def validate(self, case: str, status: int, body: bytes, chunked: bool) -> str | None:
        """A thorough check of one answer (run on the first answer of each case)."""
        problem = self.check(case, status, body)
        if problem:
            return problem
        text = dechunk(body) if chunked else body
        if self.openai_format:
            n = text.count(b"data: ") - 1
        else:
            n = text.count(b"event: content_block_delta")
        want = 10 if case == "short" else 198
        if n < want:
            return f"expected >= {want} deltas, got {n}: {text[:300]!r}"
        return None


class Processes:
    """Every child we start, so each is stopped at exit (by its own pid/group)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        atexit.register(self.stop_all)  # also when the run is interrupted

    def start(self, cmd: list[str], env: dict[str, str], log: Path, stdin: bool = False) -> subprocess.Popen[bytes]:
        out = open(log, "wb")
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE if stdin else out, stderr=out,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, start_new_session=True, cwd=str(ROOT),
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc.stdin:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def clasp_config(path: Path, port: int, upstream: int, log_level: str, extra: str = "") -> None:
    lines = [
        "server:", "  host: 127.0.0.1", f"  port: {port}", f"  log_level: {log_level}",
        "keys:", "  - key: ${CLASP_BENCH_KEY}", "    name: bench", "models:",
    ]
    for public, model, _ in CASES.values():
        lines += [f'  "{public}":', f"    - model: openai/{model}",
                  f"      api_base: http://127.0.0.1:{upstream}/v1", "      api_key: ${CLASP_BENCH_UPSTREAM_KEY}"]
    path.write_text("\n".join(lines) + "\n" + (extra.strip() + "\n" if extra.strip() else ""))


def litellm_config(path: Path, upstream: int) -> None:
    lines = ["model_list:"]
    for public, model, _ in CASES.values():
        lines += [f"  - model_name: {public}", "    litellm_params:", f"      model: openai/{model}",
                  f"      api_base: http://127.0.0.1:{upstream}/v1", f"      api_key: {UPSTREAM_KEY}"]
    lines += [
        "general_settings:", f"  master_key: {GATEWAY_KEY}",
        "litellm_settings:",
        # Without it, openai/* models behind /v1/messages go to /v1/responses.
        "  use_chat_completions_url_for_anthropic_messages: true",
        "  telemetry: false",
    ]
    path.write_text("\n".join(lines) + "\n")


async def first_answer(target: Target, raw: bytes, deadline: float, proc: subprocess.Popen[bytes]) -> str | None:
    """Poll until ``target`` answers ``raw`` correctly; None on success, else why not."""
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with code {proc.returncode} (see its log)"
        try:
            conn = await asyncio.wait_for(connect(target.port), 1.0)
        except (OSError, TimeoutError):
            await asyncio.sleep(0.01)
            continue
        try:
            status, _, _, body = await conn.request(raw, max(0.1, min(30.0, deadline - time.monotonic())))
            problem = target.validate("short", status, body, conn.chunked)
            if problem is None:
                return None
            last = problem
            if status == 404:
                last += " (is the clasp-claude plugin installed and loading?)"
        except (ClientError, OSError, TimeoutError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        await asyncio.sleep(0.05)
    return f"no correct answer before the deadline ({last})"


async def start_target(
    procs: Processes, target: Target, cmd: list[str], env: dict[str, str], log: Path, start_s: float
) -> bool:
    t0 = time.monotonic()
    if PIN_GATEWAYS:  # every gateway on the same CPU(s): a slower core never favours one of them
        cmd = ["taskset", "-c", PIN_GATEWAYS, *cmd]
    proc = procs.start(cmd, env, log)
    target.proc, target.pid = proc, proc.pid
    problem = await first_answer(target, target.requests["short"], t0 + start_s, proc)
    wall = time.monotonic() - t0
    if problem is not None:
        target.startup = {"error": problem}
        print(f"  {target.name}: FAILED to answer: {problem} (log: {log})", flush=True)
        return False
    target.startup = {
        "first_answer_s": round(wall, 3),
        "cpu_s": round(cpu_seconds(proc.pid), 2),
        "rss_mb": round(rss_mb(proc.pid), 1),
    }
    print(f"  {target.name}: first answer after {wall:.2f} s (CPU {target.startup['cpu_s']:.2f} s, "
          f"RSS {target.startup['rss_mb']:.0f} MB)", flush=True)
    return True


# --- load ----------------------------------------------------------------------------------------


@dataclass
class Sample:
    total: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    cpu: float = 0.0
    sys_cpu: float = 0.0
    upstream_cpu: float = 0.0
    wall: float = 0.0
    other_cpu: float = 0.0
    rounds: list[float | None] = field(default_factory=list)
    """Per batch (one per round), the gateway's CPU ms per answered request, from the
    scheduler's clock (:func:`run_ns`): paired by round with another target's, see
    :func:`paired_added_cpu`."""


async def run_batch(
    target: Target, case: str, n: int, conc: int, deadline: float, request_s: float,
    sample: Sample | None, upstream_pid: int,
) -> None:
    """``n`` requests with ``conc`` workers, each on its own keep-alive connection."""
    raw = target.requests[case]
    conc = max(1, min(conc, n))
    conns: list[Connection] = []
    for _ in range(conc):
        conns.append(await asyncio.wait_for(connect(target.port), 5.0))
    remaining = [n]
    errors: dict[str, int] = {}

    async def worker(i: int) -> None:
        conn = conns[i]
        while remaining[0] > 0 and time.monotonic() < deadline:
            remaining[0] -= 1
            try:
                status, ttfb, total, body = await conn.request(raw, request_s)
                problem = target.check(case, status, body)
            except (ClientError, OSError, TimeoutError) as exc:
                problem = type(exc).__name__
                conn.close()
                with contextlib.suppress(OSError, TimeoutError):
                    conn = conns[i] = await asyncio.wait_for(connect(target.port), 5.0)
            if problem is None:
                if sample is not None:
                    sample.total.append(total)
                    sample.ttfb.append(ttfb)
            else:
                errors[problem] = errors.get(problem, 0) + 1

    cpu0 = cpu_times(target.pid) if not target.is_direct else (0.0, 0.0)
    ns0 = run_ns(target.pid) if not target.is_direct else 0
    answered0 = len(sample.total) if sample is not None else 0
    up0 = cpu_seconds(upstream_pid)
    me0 = sum(os.times()[:2])
    busy0 = machine_busy()
    w0 = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(conc)))
    wall = time.monotonic() - w0
    busy1 = machine_busy()
    me1 = sum(os.times()[:2])
    up1 = cpu_seconds(upstream_pid)
    cpu1 = cpu_times(target.pid) if not target.is_direct else (0.0, 0.0)
    ns1 = run_ns(target.pid) if not target.is_direct else 0
    for conn in conns:
        conn.close()
    if sample is not None:
        answered = len(sample.total) - answered0
        # One entry per batch (None: nothing answered), so rounds pair by position.
        sample.rounds.append((ns1 - ns0) / 1e6 / answered if answered and ns1 > ns0 else None)
        sample.cpu += sum(cpu1) - sum(cpu0)
        sample.sys_cpu += cpu1[1] - cpu0[1]
        sample.upstream_cpu += up1 - up0
        sample.wall += wall
        ours = (sum(cpu1) - sum(cpu0)) + (up1 - up0) + (me1 - me0)
        sample.other_cpu += max(0.0, (busy1 - busy0) - ours)
        for k, v in errors.items():
            sample.errors[k] = sample.errors.get(k, 0) + v


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 2)


def summarize(sample: Sample) -> dict[str, Any]:
    n = len(sample.total)
    return {
        "n": n,
        "errors": sample.errors,
        "p50_ms": ms(pct(sample.total, 50)),
        "p99_ms": ms(pct(sample.total, 99)),
        "ttfb_p50_ms": ms(pct(sample.ttfb, 50)),
        "mean_ms": ms(statistics.fmean(sample.total)) if n else None,
        "cpu_ms_per_req": round(sample.cpu * 1000 / n, 2) if n else None,
        "sys_cpu_ms_per_req": round(sample.sys_cpu * 1000 / n, 2) if n else None,
        "upstream_cpu_ms_per_req": round(sample.upstream_cpu * 1000 / n, 2) if n else None,
        "req_per_s": round(n / sample.wall, 1) if sample.wall else None,
        "other_load_cores": round(sample.other_cpu / sample.wall, 2) if sample.wall else None,
        "cpu_rounds_ms": [None if v is None else round(v, 4) for v in sample.rounds],
    }


def parse_cpus(spec: str) -> set[int]:
    """A ``taskset -c`` CPU list ("1", "2,3", "0-3") as a set."""
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def paired_added_cpu(base: list[float | None], other: list[float | None]) -> dict[str, Any] | None:
    """``other``'s CPU per request minus ``base``'s, round by round (the two ran
    back to back in each round, so a slow spell of the machine mostly hits both), as
    the median and quartiles of those differences: the A/B figure that a burst of
    host contention during a few batches does not move, where the totals'
    difference does. ``None`` with fewer than three paired rounds."""
    diffs = sorted(o - b for b, o in zip(base, other, strict=False) if b is not None and o is not None)
    if len(diffs) < 3:
        return None
    q1, median, q3 = statistics.quantiles(diffs, n=4, method="inclusive")
    return {"median": round(median, 3), "q1": round(q1, 3), "q3": round(q3, 3), "rounds": len(diffs)}


# --- profiling (optional) ---------------------------------------------------------------------


def start_profiler(
    procs: Processes, args: argparse.Namespace, targets: list[Target], case: str, conc: int, tmp: Path
) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the clasp gateway during one measurement (``--profile DIR``).

    Idle samples are dropped by py-spy, so only time the gateway spent running counts
    (its own requests; the other targets' batches leave it idle).
    """
    if not args.profile:
        return None
    clasp = next((t for t in targets if t.name == "clasp"), None)
    if clasp is None:
        return None
    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).parent / "py-spy")
    cmd = [spy, "record", "--pid", str(clasp.pid), "--rate", str(args.profile_rate), "--format", "raw",
           "--output", str(out / f"clasp-{case}-c{conc}.txt"), "--nonblocking"]
    proc = procs.start(cmd, base_env(), tmp / f"py-spy-{case}-c{conc}.log")
    time.sleep(0.5)  # let it attach
    return proc


def cprofile_toggle(
    args: argparse.Namespace, targets: list[Target], label: str, *, on: bool, requests: int = 0
) -> str | None:
    """Switch cProfile in the clasp gateway on (SIGUSR1) or off and dump (SIGUSR2)."""
    clasp = next((t for t in targets if t.name == "clasp"), None)
    if not args.cprofile or clasp is None:
        return None
    out = Path(args.cprofile)
    if on:
        (out / "label").write_text(label)
        os.kill(clasp.pid, signal.SIGUSR1)
        time.sleep(0.2)
        return label
    dump = out / f"{label}.prof"
    dump.unlink(missing_ok=True)
    os.kill(clasp.pid, signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while not dump.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    (out / f"{label}.json").write_text(json.dumps({"requests": requests}))
    return label


def stop_profiler(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


# --- main ----------------------------------------------------------------------------------------


def fmt(v: Any, width: int, digits: int = 1) -> str:
    if v is None:
        return "-".rjust(width)
    if isinstance(v, float):
        return f"{v:.{digits}f}".rjust(width)
    return str(v).rjust(width)


def print_table(results: dict[str, Any]) -> None:
    print()
    print(f"{'case':<6} {'target':<8} {'conc':>4} {'n':>5} {'err':>4} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'+p50 ms':>8} {'+p99 ms':>8} {'ttfb50':>7} {'cpu ms/req':>10} {'of sys':>6} {'req/s':>7}")
    for case, by_conc in results["cases"].items():
        for conc, by_target in by_conc.items():
            for name, r in by_target.items():
                print(f"{case:<6} {name:<8} {conc:>4} {r['n']:>5} {sum(r['errors'].values()):>4} "
                      f"{fmt(r['p50_ms'], 8, 2)} {fmt(r['p99_ms'], 8, 2)} {fmt(r.get('added_p50_ms'), 8, 2)} "
                      f"{fmt(r.get('added_p99_ms'), 8, 2)} {fmt(r['ttfb_p50_ms'], 7, 2)} "
                      f"{fmt(r['cpu_ms_per_req'] if name != 'direct' else None, 10, 2)} {fmt(r['sys_cpu_ms_per_req'] if name != 'direct' else None, 6, 2)} {fmt(r['req_per_s'], 7)}")
    paired = [(case, conc, name, r["added_cpu_vs_clasp"]) for case, by_conc in results["cases"].items()
              for conc, by_target in by_conc.items() for name, r in by_target.items() if r.get("added_cpu_vs_clasp")]
    if paired:
        print("\nCPU per request against clasp, round by round (scheduler clock): median (quartiles) of the paired differences")
        for case, conc, name, p in paired:
            print(f"  {case:<6} c={conc:<3} {name:<8} {p['median']:+.3f} ms ({p['q1']:+.3f}..{p['q3']:+.3f}), {p['rounds']} rounds")
    print()
    print(f"{'target':<8} {'first answer s':>14} {'CPU to first s':>14} {'RSS then MB':>11} {'peak RSS MB':>11}")
    for name, t in results["targets"].items():
        s = t.get("startup", {})
        print(f"{name:<8} {fmt(s.get('first_answer_s'), 14, 2)} {fmt(s.get('cpu_s'), 14, 2)} "
              f"{fmt(s.get('rss_mb'), 11, 0)} {fmt(t.get('peak_rss_mb'), 11, 0)}"
              + (f"   {s['error']}" if s.get("error") else ""))
    load = results.get("other_load_cores")
    if load is not None:
        print(f"\nother processes used {load:.2f} of {os.cpu_count()} cores while measuring"
              + ("  (NOISY: latency and CPU figures are inflated; rerun on a quiet machine)" if load > 0.25 else ""))


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    # Ctrl-C / SIGTERM cancel the run; the finally below stops every process it started.
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main_task.cancel)
    procs = Processes()
    env = base_env()
    if PIN_GATEWAYS:
        # This client and the fake upstream (started below, it inherits this) on the other CPUs.
        gateways = parse_cpus(PIN_GATEWAYS)
        others = set(os.sched_getaffinity(0)) - gateways
        if not others:
            raise SystemExit(f"--pin-gateways {PIN_GATEWAYS} leaves no CPU for the client and the fake upstream")
        os.sched_setaffinity(0, others)
    tmp = Path(tempfile.mkdtemp(prefix="clasp-bench-"))
    started = time.monotonic()
    hard_deadline = started + args.max_seconds
    results: dict[str, Any] = {"cases": {}, "targets": {}}
    try:
        # 1. the fake upstream
        fake = procs.start([sys.executable, str(HERE / "fake_upstream.py"), "--port", "0",
                            "--gap-ms", str(args.gap_ms)], env, tmp / "fake.log", stdin=True)
        assert fake.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(fake.stdout.readline), 30)
        if not line.startswith(b"PORT "):
            raise SystemExit(f"fake upstream did not start: {line!r} (see {tmp / 'fake.log'})")
        up_port = int(line.split()[1])
        direct = Target("direct", port=up_port, pid=fake.pid, is_direct=True, openai_format=True)
        for case, (_, upstream_model, _) in CASES.items():
            direct.requests[case] = render_request(
                "/v1/chat/completions", up_port, {**workload.OPENAI_HEADERS, "authorization": f"Bearer {UPSTREAM_KEY}"},
                workload.encode(workload.openai_request(upstream_model)))
        targets = [direct]

        def gateway_target(name: str, port: int, auth: dict[str, str]) -> Target:
            t = Target(name, port=port)
            for case, (public, _, _) in CASES.items():
                t.requests[case] = render_request(
                    "/v1/messages?beta=true", port, {**workload.ANTHROPIC_HEADERS, **auth},
                    workload.encode(workload.anthropic_request(public)))
            return t

        print(f"starting (logs in {tmp})", flush=True)
        # 2. clasp gateway (and, with --ab, a second tree of it for an A/B comparison)
        if args.only in (None, "clasp"):
            for name, src in (("clasp", args.clasp_src), ("clasp-b", args.ab)):
                if name == "clasp-b" and not src:
                    continue
                port = free_port()
                cfg = tmp / f"{name}.yaml"
                clasp_config(cfg, port, up_port, args.log_level, args.b_config if name == "clasp-b" else args.a_config)
                # Each gateway's default database (virtual keys, ledger) in its own directory of the run.
                cenv = {**env, "CLASP_BENCH_KEY": GATEWAY_KEY, "CLASP_BENCH_UPSTREAM_KEY": UPSTREAM_KEY,
                        "CLASP_DATA_DIR": str(tmp / f"{name}-data")}
                plugins_only = args.b_plugins if name == "clasp-b" else args.a_plugins
                if plugins_only is not None:  # e.g. "claude,fallback": the team features off
                    cenv["CLASP_LOAD_PLUGINS"] = plugins_only
                if src:
                    # Another tree of the gateway (a copy, a worktree) ahead of the editable install.
                    root = Path(src).resolve()  # noqa: ASYNC240 (start-up, not under load)
                    plugins = sorted((root / "plugins").glob("*"))  # noqa: ASYNC240
                    paths = [str(root)] + [str(p) for p in plugins if (p / "pyproject.toml").exists()]  # noqa: ASYNC240
                    cenv["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
                key = GATEWAY_KEY
                if args.b_virtual_key if name == "clasp-b" else args.a_virtual_key:
                    # clasp-b's clients present a virtual key (clasp-budgets), made on its database.
                    made = await asyncio.to_thread(
                        subprocess.run, [args.clasp, "keys", "create", "--name", "bench", "--config", str(cfg)],
                        capture_output=True, text=True, env=cenv, timeout=300)
                    if made.returncode != 0:
                        raise SystemExit(f"clasp keys create failed: {made.stderr}")
                    key = made.stdout.strip()
                clasp = gateway_target(name, port, {"x-api-key": key})
                cmd = [args.clasp, "--config", str(cfg), "serve"]
                if args.cprofile and name == "clasp":
                    python = str(Path(args.clasp).parent / "python")
                    out = str(Path(args.cprofile).resolve())  # noqa: ASYNC240
                    cmd = [python, str(HERE / "cprofile_serve.py"), out, *cmd[1:]]
                if await start_target(procs, clasp, cmd, cenv, tmp / f"{name}.log", args.start_timeout):
                    targets.append(clasp)
                results["targets"][name] = {"cmd": "clasp --config clasp.yaml serve", "src": src or "installed",
                                            "startup": clasp.startup}
        # 2b. the floor: a byte-copying aiohttp proxy, for calibration
        if args.floor:
            port = free_port()
            floor = Target("floor", port=port, openai_format=True)
            for case, (_, upstream_model, _) in CASES.items():
                floor.requests[case] = render_request(
                    "/v1/chat/completions", port, {**workload.OPENAI_HEADERS, "authorization": f"Bearer {UPSTREAM_KEY}"},
                    workload.encode(workload.openai_request(upstream_model)))
            cmd = [sys.executable, str(HERE / "passthrough.py"), "--port", str(port),
                   "--upstream", f"http://127.0.0.1:{up_port}"]
            if await start_target(procs, floor, cmd, env, tmp / "floor.log", args.start_timeout):
                targets.append(floor)
            results["targets"]["floor"] = {"cmd": "passthrough.py", "startup": floor.startup}
        # 3. LiteLLM proxy
        if args.only in (None, "litellm"):
            bin_ = Path(args.litellm_venv) / "bin" / "litellm"
            if not bin_.exists():
                msg = f"not installed ({bin_}); run bench/install_litellm_proxy.sh"
                print(f"  litellm: {msg}", flush=True)
                results["targets"]["litellm"] = {"startup": {"error": msg}}
            else:
                port = free_port()
                cfg = tmp / "litellm.yaml"
                litellm_config(cfg, up_port)
                lt = gateway_target("litellm", port, {"x-api-key": GATEWAY_KEY})
                lenv = {**env, "LITELLM_OFFLINE_MODE": "true", "DISABLE_ADMIN_UI": "True",
                        "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true"}
                cmd = [str(bin_), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)]
                if await start_target(procs, lt, cmd, lenv, tmp / "litellm.log", args.start_timeout):
                    targets.append(lt)
                results["targets"]["litellm"] = {"cmd": "litellm --config litellm.yaml --port P",
                                                  "version": _litellm_version(args.litellm_venv),
                                                  "startup": lt.startup}

        # 4. validate one answer of each case on each target
        for t in targets:
            for case in CASES:
                conn = await connect(t.port)
                try:
                    status, _, _, body = await conn.request(t.requests[case], args.timeout)
                finally:
                    conn.close()
                problem = t.validate(case, status, body, conn.chunked)
                if problem:
                    raise SystemExit(f"{t.name} answered the {case} case wrongly: {problem}")

        # 5. load, interleaved in rounds so drift and pauses hit every target alike
        other_cpu = other_wall = 0.0
        for case in args.cases:
            results["cases"][case] = {}
            for conc in args.concurrency:
                n = max(args.requests, conc) if conc > 1 else args.requests
                rounds = max(1, min(args.rounds, n // max(conc, 1)))
                per_round = -(-n // rounds)
                samples = {t.name: Sample() for t in targets}
                for t in targets:  # warm-up: connection pools, caches, lazy imports
                    await run_batch(t, case, args.warmup, conc, hard_deadline, args.timeout, None, fake.pid)
                spy = start_profiler(procs, args, targets, case, conc, tmp)
                label = cprofile_toggle(args, targets, f"clasp-{case}-c{conc}", on=True)
                for r in range(rounds):
                    order = targets[r % len(targets):] + targets[: r % len(targets)]
                    for t in order:
                        left = n - len(samples[t.name].total) - sum(samples[t.name].errors.values())
                        await run_batch(t, case, min(per_round, left), conc, hard_deadline, args.timeout,
                                        samples[t.name], fake.pid)
                if spy is not None:
                    stop_profiler(spy)
                if label:
                    cprofile_toggle(args, targets, label, on=False, requests=len(samples["clasp"].total))
                row = {name: summarize(s) for name, s in samples.items()}
                base = row["direct"]
                for name, got in row.items():
                    if name != "direct" and got["n"] and base["n"]:
                        got["added_p50_ms"] = round(got["p50_ms"] - base["p50_ms"], 2)
                        got["added_p99_ms"] = round(got["p99_ms"] - base["p99_ms"], 2)
                        got["added_ttfb_p50_ms"] = round(got["ttfb_p50_ms"] - base["ttfb_p50_ms"], 2)
                if "clasp" in samples:
                    for name, other in samples.items():
                        if name not in ("clasp", "direct") and row[name]["n"]:
                            paired = paired_added_cpu(samples["clasp"].rounds, other.rounds)
                            if paired is not None:
                                row[name]["added_cpu_vs_clasp"] = paired
                results["cases"][case][str(conc)] = row
                other_cpu += sum(s.other_cpu for s in samples.values())
                other_wall += sum(s.wall for s in samples.values())
                done = "  ".join(f"{k}: p50 {v['p50_ms']} ms cpu {v['cpu_ms_per_req']} ms" for k, v in row.items())
                print(f"  {case} c={conc}: {done}", flush=True)
                if time.monotonic() > hard_deadline:
                    print("  stopping early: --max-seconds reached", flush=True)
                    break
            if time.monotonic() > hard_deadline:
                break

        # CPU used by processes outside the benchmark while it measured (other work on
        # the machine): latency figures are only comparable between quiet runs.
        results["other_load_cores"] = round(other_cpu / other_wall, 2) if other_wall else None
        for t in targets:
            if not t.is_direct:
                results["targets"][t.name]["peak_rss_mb"] = round(peak_rss_mb(t.pid), 1)
                results["targets"][t.name]["rss_end_mb"] = round(rss_mb(t.pid), 1)
        results["targets"]["direct"] = {"fake_upstream_peak_rss_mb": round(peak_rss_mb(fake.pid), 1)}
    finally:
        procs.stop_all()
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    print(f"logs of this run: {tmp}", flush=True)
    return results


def _litellm_version(venv: str) -> str | None:
    for d in (Path(venv) / "lib").glob("python*/site-packages/litellm-*.dist-info"):
        return d.name.split("-")[1].removesuffix(".dist-info")
    return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "clasp_gateway", "plugins"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200, help="measured requests per target, case and concurrency (default 200)")
    p.add_argument("--only", choices=["clasp", "litellm"], help="benchmark one gateway (the direct baseline always runs)")
    p.add_argument("--quick", action="store_true", help="a smoke run that finishes in under a minute")
    p.add_argument("--cases", default="short,long", help="comma list of: short, long, paced (default short,long)")
    p.add_argument("--concurrency", default="1,32", help="comma list of concurrency levels (default 1,32)")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds per measurement (default 4)")
    p.add_argument("--warmup", type=int, default=32, help="unmeasured requests per target before each measurement (default 32)")
    p.add_argument("--gap-ms", type=float, default=1.0, help="upstream pause between chunks in the paced case (default 1)")
    p.add_argument("--floor", action="store_true", help="also run passthrough.py, a byte-copying proxy (the floor)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds for a gateway to answer its first request")
    p.add_argument("--max-seconds", type=float, default=900.0, help="stop measuring after this many seconds")
    p.add_argument("--log-level", default="info", help="clasp server.log_level (default info, as shipped)")
    p.add_argument("--clasp", default=str(ROOT / ".venv" / "bin" / "clasp"), help="the clasp executable")
    p.add_argument("--clasp-src", help="run the gateway from this source tree (e.g. a git worktree) instead of the installed one")
    p.add_argument("--pin-gateways", metavar="CPUS", default="",
                   help="run every gateway on these CPUs (taskset -c list, e.g. 1) and this client and the fake "
                        "upstream on the others: the gateways of an A/B share one core's speed and never compete "
                        "with the load generator")
    p.add_argument("--ab", metavar="SRC", help="also run a second gateway from source tree SRC as target clasp-b, "
                   "interleaved with the first: an A/B comparison of a change")
    p.add_argument("--b-config", default="", metavar="YAML",
                   help="top-level YAML added to clasp-b's clasp.yaml only, e.g. 'state: {backend: sqlite}' "
                        "(with --ab: the same tree under two configurations)")
    p.add_argument("--b-virtual-key", action="store_true",
                   help="clasp-b's requests present a virtual key (clasp keys create on its database) instead of "
                        "the static key: with --ab, the CPU of a cached virtual-key lookup against a static key")
    p.add_argument("--a-config", default="", metavar="YAML",
                   help="top-level YAML added to the first gateway's (clasp's) clasp.yaml only: with --cprofile, "
                        "profiles that configuration")
    p.add_argument("--a-virtual-key", action="store_true", help="like --b-virtual-key, for the first gateway")
    p.add_argument("--a-plugins", metavar="LIST",
                   help="CLASP_LOAD_PLUGINS for the first gateway (clasp) only, e.g. claude,fallback")
    p.add_argument("--b-plugins", metavar="LIST",
                   help="CLASP_LOAD_PLUGINS for clasp-b only (with --ab): e.g. --a-plugins claude,fallback against "
                        "all plugins, interleaved")
    p.add_argument("--litellm-venv", default=DEFAULT_LITELLM_VENV, help="venv holding the LiteLLM proxy")
    p.add_argument("--profile", metavar="DIR", help="sample the clasp gateway with py-spy during each measurement; "
                   "writes DIR/clasp-CASE-cCONC.txt (collapsed stacks; summarize with profile_summary.py)")
    p.add_argument("--cprofile", metavar="DIR", help="run the clasp gateway under cProfile during each "
                   "measurement (warm-up excluded); writes DIR/clasp-CASE-cCONC.prof (see profile_summary.py)")
    p.add_argument("--profile-rate", type=int, default=499, help="py-spy samples per second (default 499)")
    p.add_argument("--output", default=str(HERE / "results" / "latest.json"), help="JSON results file")
    args = p.parse_args()
    if args.quick:
        # A smoke run: every target, case and code path once, in under a minute (LiteLLM's
        # start-up alone takes ~15 s here). Its figures are rough.
        args.requests = min(args.requests, 12)
        args.rounds = 1
        args.warmup = 2
        if args.concurrency == p.get_default("concurrency"):
            args.concurrency = "1,8"
        args.max_seconds = min(args.max_seconds, 50.0)
        args.start_timeout = min(args.start_timeout, 40.0)
    args.cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    if args.pin_gateways:
        try:
            cpus = parse_cpus(args.pin_gateways)
        except ValueError:
            p.error(f"--pin-gateways: not a CPU list: {args.pin_gateways!r}")
        if not cpus <= set(os.sched_getaffinity(0)):
            p.error(f"--pin-gateways: CPUs {sorted(cpus)} are not all available here")
        global PIN_GATEWAYS
        PIN_GATEWAYS = args.pin_gateways
    if args.requests < 1 or any(c < 1 or c > 256 for c in args.concurrency):
        p.error("--requests must be >= 1 and concurrency within 1..256")

    runner: Any = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        pass
    t0 = time.process_time()
    try:
        results = runner(bench(args))
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("\ninterrupted: every process started was stopped", file=sys.stderr)
        return 130
    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": _git_commit(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "args": {k: getattr(args, k) for k in ("requests", "quick", "cases", "concurrency", "rounds", "gap_ms", "log_level",
                                                  "ab", "a_config", "b_config", "a_virtual_key", "b_virtual_key",
                                                  "a_plugins", "b_plugins", "pin_gateways")},
        "request_bytes": len(workload.encode(workload.anthropic_request(workload.SHORT_MODEL))),
        "bench_client_cpu_s": round(time.process_time() - t0, 2),
        "cases": {k: v[2] for k, v in CASES.items()},
    }
    results = {"meta": meta, **results}
    print_table(results)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {out} ({results['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

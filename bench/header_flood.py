#!/usr/bin/env python3
"""What an anonymous oversized request header costs the gateway (issue 7, defect 13).

Starts ``clasp serve`` (its own process, the shipped HTTP stack) on 127.0.0.1 with a
key and no reachable upstream, then sends one request whose single header is
``--mb`` megabytes (default 64), without a key, over a raw socket, and reports:

- the status line the gateway answered (or that it closed the connection),
- the gateway's CPU seconds spent on it (utime+stime from /proc, all threads),
- its peak RSS (VmHWM),
- how long a concurrent ``GET /health`` on another connection waited.

Run it before and after a change: ``.venv/bin/python bench/header_flood.py``.
Every wait is bounded; the gateway process is stopped on exit.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_ready(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the gateway exited during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                if b" 200 " in sock.recv(1024):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("the gateway did not become ready")


def health_latency(port: int, results: list[float], stop: threading.Event) -> None:
    """Time GET /health repeatedly on fresh connections while the flood runs."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                sock.recv(1024)
        except OSError:
            pass
        results.append(time.monotonic() - started)
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=64, help="size of the one header, in MB")
    args = parser.parse_args()

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "clasp.yaml"
        config.write_text(
            "keys: [{key: header-flood-key-0123456789, name: bench}]\n"
            "models:\n  '*': [{model: openai/gpt-4o, api_base: 'http://127.0.0.1:9/v1', api_key: sk-x}]\n"
        )
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "CLASP_LOAD_PLUGINS": "claude"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "clasp_gateway.cli", "serve", "--config", str(config), "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        )
        try:
            wait_ready(port, proc, time.monotonic() + 60)
            cpu_before = cpu_seconds(proc.pid)
            latencies: list[float] = []
            stop = threading.Event()
            prober = threading.Thread(target=health_latency, args=(port, latencies, stop), daemon=True)
            prober.start()
            answer = b""
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
                sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-filler: ")
                chunk = b"a" * (1024 * 1024)
                try:
                    for _ in range(args.mb):
                        sock.sendall(chunk)
                    sock.sendall(b"\r\ncontent-length: 2\r\n\r\n{}")
                except OSError as exc:
                    answer = f"(send stopped: {exc.strerror})".encode()
                try:
                    answer = (sock.recv(4096).split(b"\r\n", 1)[0] or b"(closed)") + b" " + answer
                except OSError as exc:
                    answer += f" (recv: {exc.strerror})".encode()
            elapsed = time.monotonic() - started
            stop.set()
            prober.join(timeout=60)
            cpu = cpu_seconds(proc.pid) - cpu_before
            print(f"{args.mb} MB header: answer {answer.decode(errors='replace')!r}")
            print(f"  gateway CPU {cpu:.2f} s, wall {elapsed:.2f} s, peak RSS {peak_rss_mb(proc.pid):.0f} MB")
            if latencies:
                print(f"  concurrent GET /health: worst {max(latencies) * 1000:.0f} ms over {len(latencies)} probes")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

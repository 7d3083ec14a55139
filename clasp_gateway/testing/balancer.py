"""A real load balancer for tests and benchmarks: Debian's haproxy in front of gateway
replicas, started in the foreground and stopped by its process id.

```python
with GatewayProcesses(config, count=3) as gateways, Haproxy([g.port for g in gateways]) as lb:
    lb.wait_all_up(3)
    httpx.post(lb.base_url + "/v1/messages", ...)    # answers carry x-clasp-replica: r0, r1, r2
```

:data:`HAPROXY_CONFIG` is the configuration the project recommends in front of
``clasp serve`` replicas: each request balanced on its own (round robin), health
checks on ``/ready`` every 0.5 s (a draining replica answers 503 at once and leaves the
pool after two checks; a check may take 3 s, so a busy replica is not taken for a dead
one: on a loaded machine 300 ms timed out, and haproxy then had no server left),
and ``retry-on conn-failure empty-response 503`` with ``option redispatch``: a request
whose replica died before answering (refused connection, connection closed without a
byte) or was draining (its shaped 503) is sent to another replica. A stream that had
started is never retried (its bytes reached the client). One case is left to the
client: a request that arrives on a client connection that already carried one, and
whose replica connection closes before any answer, makes haproxy close the client's
connection without an answer (and without a log line), the HTTP/1.1 signal that the
request was not processed and may be retried (haproxy issues #2375, #3414). The
Anthropic and OpenAI SDKs retry it (``max_retries``, 2 by default); ``option
http-server-close`` makes it rarer but does not remove it. ``option
http-buffer-request``: haproxy reads the whole body before choosing a replica, without
which a request with a body is not retried when its replica dies after receiving it
(``SH--`` 502 in haproxy's log). Requests are only retried while haproxy holds them
whole (bodies up to its buffer size, 16 KiB by default: raise ``tune.bufsize`` for long
prompts, e.g. ``tune.bufsize 262144``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .processes import free_port

HAPROXY_CONFIG = """\
global
    maxconn {maxconn}
{log}defaults
    mode http
{request_log}    timeout connect 1s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 10s
    timeout check 3s
    option http-buffer-request
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response 503
    option httpchk GET /ready
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
frontend gateway
    bind {host}:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    http-response set-header x-clasp-replica %s
{servers}
"""
"""haproxy's configuration (``{servers}``: one ``server rN host:port check`` line each)."""


def haproxy_binary() -> str:
    """Debian's haproxy; installed now when missing and this process is root (as
    ``scripts/install.sh --test`` does). Raises RuntimeError when it cannot be had."""
    found = shutil.which("haproxy")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "haproxy"], check=False, capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=600)
        found = shutil.which("haproxy")
    if found is None:
        raise RuntimeError("haproxy is not installed: apt-get install -y haproxy (scripts/install.sh --test does)")
    return found


class Haproxy:
    """haproxy in front of ``ports`` on 127.0.0.1 (replica ``i`` is named ``r{i}`` in
    the ``x-clasp-replica`` answer header); a context manager."""

    def __init__(self, ports: list[int], *, maxconn: int = 4096, directory: Path | None = None,
                 log: bool = False) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._dir = Path(tempfile.mkdtemp(prefix="clasp-haproxy-")) if directory is None else directory
        self._own_dir = directory is None
        servers = "\n".join(f"    server r{i} 127.0.0.1:{port} check" for i, port in enumerate(ports))
        self.config_path = self._dir / "haproxy.cfg"
        # log: one line per request to ``log_path`` (which replica, retries, how it ended).
        logging = "    log stdout format raw local0 info\n" if log else ""
        self.log_path = self._dir / "haproxy.log"
        self.config_path.write_text(HAPROXY_CONFIG.format(maxconn=maxconn, host="127.0.0.1", port=self.port,
                                                          servers=servers, log=logging,
                                                          request_log="    log global\n    option httplog\n" if log else ""))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Haproxy:
        binary = haproxy_binary()
        check = subprocess.run([binary, "-c", "-f", str(self.config_path)], capture_output=True, text=True,
                               timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejected {self.config_path}: {check.stdout}{check.stderr}")
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen([binary, "-db", "-f", str(self.config_path)], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def wait_all_up(self, replicas: int, timeout: float = 30.0) -> None:
        """Wait until ``/ready`` through haproxy has answered 200 from ``replicas`` replicas."""
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while len(seen) < replicas:
            if time.monotonic() > deadline:
                raise TimeoutError(f"haproxy saw only {sorted(seen)} ready after {timeout:.0f}s")
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}")
            try:
                with opener.open(self.base_url + "/ready", timeout=2) as answer:
                    if answer.status == 200:
                        seen.add(answer.headers.get("x-clasp-replica", ""))
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)

    def log_text(self) -> str:
        """What haproxy wrote (its request log with ``log=True``)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; removes its directory if it made one."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Haproxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


__all__ = ["HAPROXY_CONFIG", "Haproxy", "haproxy_binary"]

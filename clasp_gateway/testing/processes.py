"""Real processes for tests: a Redis, and gateways run as ``clasp serve`` subprocesses.

For any plugin's tests (no pytest needed to import this module): shared state is only
proven by several processes, so these helpers start them, wait until they are ready,
and always stop what they started (by process id, SIGTERM then SIGKILL).

```python
with redis_server() as redis, redis.namespace() as ns:       # a fresh key prefix
    config = {"state": {"backend": "redis", "url": ns.url, "prefix": ns.prefix}, ...}
    with GatewayProcesses(config, count=2) as gateways:      # two replicas, one config
        httpx.get(gateways[0].base_url + "/health")
```

As pytest fixtures::

    @pytest.fixture(scope="session")
    def redis() -> Iterator[RedisServer]:
        with redis_server() as server:
            yield server
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

LOCAL_REDIS = ("127.0.0.1", 6379)
"""The machine's Redis, used when it answers."""
READY_LINE = "Application startup complete."
"""What uvicorn logs once per worker when its lifespan start-up finished."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (racy by nature: a server of our own binds
    port 0 where it can; this is for configurations that must name a port first)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redis_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis at ``host:port`` answers PING (not merely accepts connections)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _stop(proc: subprocess.Popen[Any], timeout: float, *, group: bool) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL (the process group when ``group``:
    a supervisor killed hard leaves its workers behind, in its own new group)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    if group:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    else:
        proc.kill()
    proc.wait(timeout=10)


# --- Redis -------------------------------------------------------------------------------------


class RedisNamespace:
    """A key prefix of one's own on a Redis, so tests never see each other's keys."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix

    def keys(self) -> list[str]:
        """Every key under this prefix (for assertions)."""
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            return sorted(k.decode() for k in client.scan_iter(match=self.prefix + "*", count=1000))
        finally:
            client.close()

    def clear(self) -> int:
        """Delete every key under this prefix; returns how many there were."""
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            found = 0
            batch: list[bytes] = []
            for key in client.scan_iter(match=self.prefix + "*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    found += int(client.unlink(*batch))
                    batch = []
            if batch:
                found += int(client.unlink(*batch))
            return found
        except redis.RedisError:
            return 0  # the server is gone (a test stopped it): nothing to clean
        finally:
            client.close()


class RedisServer:
    """A real Redis for tests: the machine's when it answers, else a ``redis-server``
    of our own on a free port (stopped by :meth:`stop`)."""

    def __init__(self, host: str, port: int, proc: subprocess.Popen[bytes] | None = None, db: int = 14) -> None:
        self.host = host
        self.port = port
        self.proc = proc
        self.db = db
        self.owned = proc is not None
        """Whether we started this server (and stop it); the machine's is never touched."""

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"

    @classmethod
    def start_own(cls, port: int | None = None) -> RedisServer:
        """Start a private ``redis-server`` (no persistence) and wait until it answers."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        port = port or free_port()
        proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while not redis_answers("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc, 5, group=False)
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.02)
        return cls("127.0.0.1", port, proc, db=0)

    def restart(self) -> None:
        """Start our own server again on the same port (after :meth:`stop`)."""
        if not self.owned:
            raise RuntimeError("only a redis-server started by these helpers can be restarted")
        if self.proc is None:
            self.proc = RedisServer.start_own(self.port).proc

    def stop(self) -> None:
        """Stop the server if we started it (the machine's Redis is left alone)."""
        if self.proc is not None:
            _stop(self.proc, 10, group=False)
            self.proc = None

    @contextmanager
    def namespace(self) -> Iterator[RedisNamespace]:
        """A fresh key prefix, its keys deleted afterwards."""
        ns = RedisNamespace(self.url, f"clasp-test:{uuid.uuid4().hex[:12]}:")
        try:
            yield ns
        finally:
            ns.clear()


@contextmanager
def redis_server(*, own: bool = False) -> Iterator[RedisServer]:
    """A Redis for the duration of the block: the machine's at 127.0.0.1:6379 when it
    answers (and ``own`` is False), else our own ``redis-server``, stopped at the end.
    ``own=True`` for tests that stop and restart the server."""
    if not own and redis_answers(*LOCAL_REDIS):
        yield RedisServer(*LOCAL_REDIS)
        return
    server = RedisServer.start_own()
    try:
        yield server
    finally:
        server.stop()


# --- gateways ------------------------------------------------------------------------------------


class GatewayProcess:
    """One ``clasp serve`` process (with ``server.workers`` > 1: a supervisor and its workers)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (graceful: uvicorn drains and runs the shutdown hooks), then SIGKILL."""
        _stop(self.proc, timeout, group=True)


class GatewayProcesses:
    """``count`` gateway processes on one config, each on its own port; a context manager.

    ``config`` is a clasp.yaml mapping (or text, or a path). ``env`` adds to (and
    ``None`` values remove from) the environment the processes inherit (for example
    ``CLASP_LOAD_PLUGINS``). With ``server.workers: N`` in the config, each process
    is a supervisor with N workers; readiness waits for every worker.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | str | Path,
        count: int = 1,
        *,
        env: Mapping[str, str | None] | None = None,
        ready_timeout: float = 60.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.count = count
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.processes: list[GatewayProcess] = []
        self._dir = Path(tempfile.mkdtemp(prefix="clasp-gateways-"))
        if isinstance(config, Path):
            self.config_path = config
            data = yaml.safe_load(config.read_text()) or {}
        else:
            data = yaml.safe_load(config) if isinstance(config, str) else dict(config)
            self.config_path = self._dir / "clasp.yaml"
            self.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        server = data.get("server") if isinstance(data, dict) else None
        self.workers = int(server.get("workers", 1)) if isinstance(server, dict) else 1
        self.env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        self.env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1",
                         "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
        for key, value in (env or {}).items():
            if value is None:
                self.env.pop(key, None)
            else:
                self.env[key] = value

    def __getitem__(self, index: int) -> GatewayProcess:
        return self.processes[index]

    def __iter__(self) -> Iterator[GatewayProcess]:
        return iter(self.processes)

    def __len__(self) -> int:
        return len(self.processes)

    def start(self) -> GatewayProcesses:
        """Start every process, then wait until each is ready (or fail with its log)."""
        try:
            for i in range(self.count):
                port = free_port()
                log_path = self._dir / f"gateway-{i}.log"
                with open(log_path, "wb") as log:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "clasp_gateway.cli", "--config", str(self.config_path),
                         "serve", "--port", str(port)],
                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                        start_new_session=True,  # its own group: its workers can be killed with it
                    )
                self.processes.append(GatewayProcess(proc, port, log_path))
            for gateway in self.processes:
                self._wait_ready(gateway)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, gateway: GatewayProcess) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if not gateway.alive():
                raise RuntimeError(f"gateway on port {gateway.port} exited with code {gateway.proc.returncode}:\n"
                                   + gateway.log_text()[-4000:])
            if gateway.log_text().count(READY_LINE) >= self.workers and _ready(gateway.base_url):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway on port {gateway.port} not ready after {self.ready_timeout:.0f}s:\n"
                                   + gateway.log_text()[-4000:])
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL) and remove the temporary files."""
        for gateway in self.processes:
            gateway.stop(self.stop_timeout)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> GatewayProcesses:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _ready(base_url: str) -> bool:
    try:
        with _NO_PROXY.open(base_url + "/ready", timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


__all__ = [
    "GatewayProcess", "GatewayProcesses", "RedisNamespace", "RedisServer", "free_port", "redis_answers",
    "redis_server",
]

"""The container image without a container engine: deploy/Dockerfile's build step run
as a non-root user in a fresh directory, then the gateway started from what it built.

What ``docker build`` does, step by step: the context filtered by ``.dockerignore`` is
copied to a fresh directory (:mod:`tests.deploy_context`); the build stage's one
``RUN`` (``sh deploy/image/build.sh PREFIX``: a venv, a non-editable install of the
gateway and its plugins, byte-compiled) runs there as ``nobody``; the source tree is
then deleted and the venv made read-only to the user that runs it, as in the runtime
stage (root owns /opt/clasp, uid 10001 runs the gateway). The gateway then runs as the
image runs it: the Dockerfile's ``ENV`` and ``ENTRYPOINT``/``CMD``, ``clasp db upgrade``
first (the migrate Job), on PostgreSQL and Redis, with secrets as files; the image's
HEALTHCHECK script decides when it is ready, a streamed answer comes through, and
SIGTERM ends it cleanly.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib.util import cache_from_source
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from clasp_gateway.testing import FakeUpstream, Text, free_port, openai_models
from tests import deploy_context
from tests.background import Background

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BUILD_TIMEOUT = 1200.0
"""Seconds the build may take on a loaded 2-core machine (pip install + compileall)."""
CLIENT_KEY = "clasp-static-image-test-0123456789abcdef0123456789abcdef"
METRICS_TOKEN = "image-test-metrics-token-0123456789abcdef"


def _builder() -> dict[str, Any]:
    """How to run as a non-root user: ``nobody`` when the tests run as root (CI does),
    else the current user (already not root)."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def _interpreter() -> str:
    """A Python 3.11+ the build's user may run: the system's (as the image's
    ``python:3.11-slim`` has it at /usr/local/bin) when the tests run as root, whose own
    interpreter may live under /root; else the one running the tests."""
    candidates = ["/usr/local/bin/python3", "/usr/bin/python3"] if os.geteuid() == 0 else []
    for candidate in [*candidates, os.path.join(sys.base_prefix, "bin", "python3")]:
        if os.path.exists(candidate):
            check = subprocess.run([candidate, "-c", "import sys, venv, ensurepip; assert sys.version_info >= (3, 11)"],
                                   capture_output=True, timeout=30, **_builder())
            if check.returncode == 0:
                return candidate
    raise AssertionError("no Python 3.11+ with venv that a non-root user may run (apt-get install python3-venv)")


def _chown(path: Path, uid: int, gid: int) -> None:
    for directory, dirnames, filenames in os.walk(path):
        os.chown(directory, uid, gid, follow_symlinks=False)
        for name in dirnames + filenames:
            os.chown(os.path.join(directory, name), uid, gid, follow_symlinks=False)


def _image_env(prefix: Path, config: Path, data: Path) -> dict[str, str]:
    """The runtime stage's ``ENV``, read from the Dockerfile, with the image's paths
    mapped to this test's directories."""
    parser = DockerfileParser(path=str(DEPLOY / "Dockerfile"))
    env = {key: value for key, value in parser.envs.items()}
    paths = {"/opt/clasp": str(prefix), "/etc/clasp/clasp.yaml": str(config), "/var/lib/clasp": str(data)}
    mapped: dict[str, str] = {}
    for key, value in env.items():
        for image_path, here in paths.items():
            value = value.replace(image_path, here)
        mapped[key] = value.replace("$PATH", "/usr/local/bin:/usr/bin:/bin")
    mapped.update({"LANG": "C.UTF-8", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    return mapped


class Image:
    """What the build stage produced, and where."""

    def __init__(self, root: Path, prefix: Path, build_log: str, seconds: float) -> None:
        self.root = root
        self.prefix = prefix
        self.build_log = build_log
        self.seconds = seconds
        self.site = next(prefix.glob("lib/python3*/site-packages"))


class Build:
    """``deploy/image/build.sh`` running in a fresh directory as the image's build user,
    its output in a temporary file. Started by ``tests/conftest.py`` as soon as a run is
    known to need the image (the build takes ~45 s of CPU: it then runs on the machine's
    other core beside the other tests), or by the :func:`image` fixture itself."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="clasp-image-"))
        self.root.chmod(0o755)
        self.context = self.root / "src"
        self.prefix = self.root / "opt-clasp"
        self.process: Background | None = None
        try:
            deploy_context.copy_context(self.context)
            home = self.root / "home"
            home.mkdir()
            self.builder = _builder()
            if self.builder:
                _chown(self.root, self.builder["user"], self.builder["group"])
            env = {key: value for key, value in os.environ.items() if key.startswith("PIP_")}
            env.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
                        "PYTHON": _interpreter(),
                        "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
            self.started = time.monotonic()
            self.process = Background(["sh", "deploy/image/build.sh", str(self.prefix)], cwd=self.context, env=env,
                                      **self.builder)
        except BaseException:
            self.discard()
            raise

    def finish(self) -> Image:
        """Wait for the build (at most :data:`BUILD_TIMEOUT` from its start); the image's
        runtime stage from what it built."""
        assert self.process is not None
        code, log = self.process.result(BUILD_TIMEOUT - (time.monotonic() - self.started))
        seconds = time.monotonic() - self.started
        assert code == 0, f"build.sh failed:\n{log[-8000:]}"
        shutil.rmtree(self.context)  # the runtime stage has no source tree
        if self.builder:
            _chown(self.prefix, 0, 0)  # COPY --from: root owns /opt/clasp; the gateway's user cannot write there
        return Image(self.root, self.prefix, log, seconds)

    def discard(self) -> None:
        """Stop the build if it still runs and remove everything it made."""
        if self.process is not None:
            self.process.stop()
        shutil.rmtree(self.root, ignore_errors=True)


_started: Build | None = None


def start_build() -> None:
    """Start the build now (``tests/conftest.py``, once the run's tests are known)."""
    global _started
    if _started is None:
        try:
            _started = Build()
        except Exception:  # reported where it belongs: the image fixture starts it again
            _started = None


def discard_build() -> None:
    """The session ends: a build that no test used is stopped and removed."""
    global _started
    if _started is not None:
        _started.discard()
        _started = None


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    global _started
    build, _started = _started or Build(), None
    try:
        yield build.finish()
    finally:
        build.discard()


def test_the_build_ran_as_a_user_and_installed_the_packages_not_links(image: Image) -> None:
    owner = (image.site / "clasp_gateway" / "__init__.py").stat()
    assert os.geteuid() != 0 or owner.st_uid == 0, "chowned to root after a build as nobody"
    assert (image.site / "clasp_gateway" / "py.typed").exists()
    assert not list(image.site.glob("__editable__*")) and not list(image.site.glob("*.egg-link"))
    for package in ("clasp_claude", "clasp_fallback", "clasp_budgets", "clasp_analytics", "clasp_cache", "clasp_router"):
        assert (image.site / package / "__init__.py").exists(), package
    assert (image.site / "clasp_analytics" / "static").is_dir(), "package data travels with the package"
    for example in ("clasp_example_tagger", "clasp_provider_example", "clasp_router_example", "clasp_tool_docs"):
        assert not (image.site / example).exists(), f"{example} is an example, not part of the image"


def test_everything_is_byte_compiled_with_unchecked_hashes(image: Image) -> None:
    """PYTHONDONTWRITEBYTECODE and a read-only venv at run time: without compiled files
    every start would compile LiteLLM from source (about a minute of CPU)."""
    missing: list[str] = []
    flags: set[int] = set()
    for package in ("clasp_gateway", "litellm", "clasp_claude", "clasp_budgets"):
        for source in (image.site / package).rglob("*.py"):
            compiled = Path(cache_from_source(str(source)))
            if not compiled.exists():
                missing.append(str(source.relative_to(image.site)))
                continue
            flags.add(int.from_bytes(compiled.read_bytes()[4:8], "little"))
    assert not missing, f"{len(missing)} sources without bytecode, e.g. {missing[:5]}"
    assert flags == {1}, "hash-based, unchecked (PEP 552): valid whatever the files' mtimes after COPY"


@pytest.fixture
def container(image: Image, redis_server: Any, postgres_server: Any) -> Iterator[dict[str, Any]]:
    """The directories and configuration a container of the image would have."""
    builder = _builder()
    run = Path(tempfile.mkdtemp(prefix="clasp-container-", dir=image.root))
    run.chmod(0o755)
    data, secrets = run / "var-lib-clasp", run / "run-secrets"
    data.mkdir()
    secrets.mkdir()
    with redis_server.namespace() as ns, postgres_server.database() as database_url, \
            FakeUpstream("openai") as upstream:
        values = {"clasp_admin_key": "clasp-admin-image-test-0123456789abcdef0123456789abcdef",
                  "clasp_api_key": CLIENT_KEY, "clasp_metrics_token": METRICS_TOKEN,
                  "redis_url": ns.url, "database_url": database_url, "openai_api_key": "sk-upstream-test-1234567890"}
        for name, value in values.items():
            (secrets / name).write_text(value)
        config = yaml.safe_load((DEPLOY / "clasp.yaml").read_text())
        config["state"]["prefix"] = ns.prefix
        config["models"] = openai_models(upstream.base_url)
        for deployments in config["models"].values():
            for deployment in deployments:
                deployment["api_key"] = "file:/run/secrets/openai_api_key"
        text = yaml.safe_dump(config, sort_keys=False).replace("file:/run/secrets/", f"file:{secrets}/")
        config_path = run / "clasp.yaml"
        config_path.write_text(text)
        if builder:
            _chown(run, builder["user"], builder["group"])
            for path in (secrets, config_path, *secrets.iterdir()):
                os.chown(path, 0, builder["group"])  # root-owned, group-readable: the Secret volume's 0440
                path.chmod(0o750 if path.is_dir() else 0o440)
        env = _image_env(image.prefix, config_path, data)
        yield {"env": env, "data": data, "upstream": upstream, "builder": builder, "config": config_path}


def _run(image: Image, container: dict[str, Any], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(image.prefix / "bin" / "clasp"), *args], cwd=container["data"], env=container["env"],
                          capture_output=True, text=True, timeout=timeout, **container["builder"])


def _healthcheck(image: Image, container: dict[str, Any], port: int) -> int:
    """The image's HEALTHCHECK command, as the Dockerfile spells it."""
    parser = DockerfileParser(path=str(DEPLOY / "Dockerfile"))
    line = next(i["value"] for i in reversed(parser.structure) if i["instruction"] == "HEALTHCHECK")
    command = json.loads(line[line.index("CMD") + 3:].strip())
    command = [part.replace("/opt/clasp/healthcheck.py", str(DEPLOY / "image" / "healthcheck.py"))
               .replace("/opt/clasp", str(image.prefix)) for part in command]
    env = {**container["env"], "CLASP_PORT": str(port)}
    return subprocess.run(command, env=env, capture_output=True, timeout=30, **container["builder"]).returncode


def test_the_gateway_runs_from_the_image_as_a_user(image: Image, container: dict[str, Any]) -> None:
    upgrade = _run(image, container, "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    port = free_port()
    parser = DockerfileParser(path=str(DEPLOY / "Dockerfile"))
    cmd = json.loads(parser.cmd) if parser.cmd else []
    entrypoint = json.loads(next(i["value"] for i in reversed(parser.structure) if i["instruction"] == "ENTRYPOINT"))
    argv = [part.replace("/opt/clasp", str(image.prefix)) for part in entrypoint] + cmd
    assert argv[1:] == ["serve"]
    log_path = container["data"] / "gateway.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*argv, "--host", "127.0.0.1", "--port", str(port)], cwd=container["data"],
                                env=container["env"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, **container["builder"])
    try:
        assert _healthcheck(image, container, port) != 0, "not healthy before it listens"
        deadline = time.monotonic() + 120
        while _healthcheck(image, container, port) != 0:
            assert proc.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "not ready in 120 s:\n" + log_path.read_text()[-4000:]
            time.sleep(0.2)
        base = f"http://127.0.0.1:{port}"
        container["upstream"].queue(Text("hello from the image", usage=(9, 4)))
        body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream("POST", base + "/v1/messages", json=body, timeout=30,
                          headers={"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}) as response:
            assert response.status_code == 200, response.read()
            events = response.read().decode()
        text = "".join(json.loads(line[6:])["delta"].get("text", "") for line in events.splitlines()
                       if line.startswith("data: ") and '"content_block_delta"' in line)
        assert text == "hello from the image" and "event: message_stop" in events, events
        refused = httpx.get(base + "/metrics", timeout=10)
        assert refused.status_code == 401
        metrics = httpx.get(base + "/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30)
        assert metrics.status_code == 200, metrics.text
        assert 'clasp_state_up{backend="redis"} 1.0' in metrics.text
        assert 'clasp_database_up{dialect="postgresql"} 1.0' in metrics.text
        proc.send_signal(signal.SIGTERM)  # exec form: the gateway itself gets the orchestrator's SIGTERM
        assert proc.wait(timeout=60) == 0, "a drained gateway exits 0:\n" + log_path.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    log = log_path.read_text()
    assert "Application shutdown complete" in log, log[-2000:]
    # The request's row and its attempt's reached PostgreSQL before the process ended.
    assert re.search(r"ledger closed: 2 row\(s\) written, 0 spooled, \d+ replayed, 0 dropped", log), log[-2000:]
    for name in ("clasp-admin-image-test", CLIENT_KEY, METRICS_TOKEN, "sk-upstream-test-1234567890"):
        assert name not in log, f"a secret reached the log: {name[:12]}..."
    written = {p.name for p in container["data"].iterdir()} - {"gateway.log"}
    assert all(not name.endswith(".py") for name in written), written


def test_the_healthcheck_script_needs_nothing_but_the_standard_library() -> None:
    """It runs with ``python -I`` in the slim image; a third-party import would break it."""
    result = subprocess.run([sys.executable, "-I", "-c", "import ast, sys; tree = ast.parse(open(sys.argv[1]).read()); "
                             "print(sorted({a.name.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.Import) "
                             "for a in n.names} | {n.module.split('.')[0] for n in ast.walk(tree) "
                             "if isinstance(n, ast.ImportFrom) and n.module}))", str(DEPLOY / "image" / "healthcheck.py")],
                            capture_output=True, text=True, timeout=30)
    imported = set(json.loads(result.stdout.replace("'", '"')))
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported

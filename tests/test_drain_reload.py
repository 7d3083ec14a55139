"""Reload without a restart, with real ``clasp serve`` processes: SIGHUP and
``POST /admin/reload`` apply a new clasp.yaml atomically while streams run (not one
request fails), or reject it whole with every reason while the running configuration
keeps serving; with ``server.workers: 2`` every worker reloads."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from clasp_gateway.testing import GATEWAY_KEY, FakeUpstream, GatewayProcesses, Text

ADMIN_KEY = "sk-reload-admin-0123456789abcdef0123"
NEW_KEY = "sk-reload-new-key-0123456789abcdef012"
ENV = {"CLASP_LOAD_PLUGINS": "claude,fallback"}


def config(upstream: FakeUpstream, *, extra_keys: list[dict[str, Any]] | None = None, **server: Any) -> dict[str, Any]:
    return {
        "server": {"log_level": "info", **server},
        "models": {"m": [{"id": "d", "model": "openai/gpt-4o-mini", "api_base": upstream.base_url, "api_key": "sk-x"}]},
        "keys": [{"key": GATEWAY_KEY, "name": "client", "team": "qa"},
                 {"key": ADMIN_KEY, "name": "ops", "role": "admin"}, *(extra_keys or [])],
    }


def write(path: Path, data: dict[str, Any] | str) -> None:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Load:
    """Threads streaming /v1/messages back to back until stopped; every outcome kept."""

    def __init__(self, base_url: str, threads: int = 4) -> None:
        self.base_url = base_url
        self.stop = threading.Event()
        self.texts: list[str] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                try:
                    text, events = "", []
                    with client.stream("POST", self.base_url + "/v1/messages",
                                       headers={"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"},
                                       json={"model": "m", "max_tokens": 50, "stream": True,
                                             "messages": [{"role": "user", "content": "hi"}]}) as response:
                        if response.status_code != 200:
                            response.read()
                            self.errors.append(f"{response.status_code} {response.text[:300]}")
                            continue
                        for line in response.iter_lines():
                            if line.startswith("event: "):
                                events.append(line[7:])
                            elif '"text_delta"' in line:
                                text += line.split('"text":"', 1)[1].split('"', 1)[0]
                    if events[-1:] != ["message_stop"]:
                        self.errors.append(f"stream ended with {events[-3:]}")
                    self.texts.append(text)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def seen(self, text: str) -> int:
        return self.texts.count(text)


def admin_reload(base_url: str) -> httpx.Response:
    return httpx.post(base_url + "/admin/reload", headers={"x-api-key": ADMIN_KEY}, timeout=30)


def models_status(base_url: str, key: str) -> int:
    return httpx.get(base_url + "/v1/models", headers={"x-api-key": key}, timeout=10).status_code


def test_reloads_under_load_drop_nothing_and_bad_files_are_rejected_whole(tmp_path: Path) -> None:
    path = tmp_path / "clasp.yaml"
    with FakeUpstream("openai") as one, FakeUpstream("openai") as two:
        one.script = lambda body, rec: Text("from one", chunk_size=2, chunk_delay=0.01)
        two.script = lambda body, rec: Text("from two", chunk_size=2, chunk_delay=0.01)
        write(path, config(one))
        with GatewayProcesses(path, env=ENV) as gateways, Load(gateways[0].base_url) as load:
            gateway = gateways[0]
            url = gateway.base_url
            wait_for(lambda: load.seen("from one") >= 5, "traffic on the first configuration")
            assert models_status(url, NEW_KEY) == 401

            # 1. SIGHUP: the model moves to another upstream, a key is added.
            write(path, config(two, extra_keys=[{"key": NEW_KEY, "name": "new"}]))
            gateway.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: load.seen("from two") >= 5, "traffic on the second configuration")
            assert "reload (SIGHUP): " in gateway.log_text() and "applied as configuration 2" in gateway.log_text()
            assert models_status(url, NEW_KEY) == 200

            # 2. The admin call: back to the first upstream, the key removed.
            write(path, config(one))
            refused = httpx.post(url + "/admin/reload", headers={"x-api-key": GATEWAY_KEY}, timeout=10)
            assert refused.status_code == 403 and refused.json()["type"] == "error"
            answer = admin_reload(url)
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "reloaded" and answer.json()["generation"] == 3
            assert "keys" in answer.json()["changed"] and "models" in answer.json()["changed"]
            before = load.seen("from one")
            wait_for(lambda: load.seen("from one") >= before + 5, "traffic on the third configuration")
            assert models_status(url, NEW_KEY) == 401

            # 3. A broken file: every problem reported, nothing applied.
            broken = config(two)
            broken["models"]["m"][0].pop("model")
            broken["keys"][0]["role"] = "emperor"
            write(path, broken)
            rejected = admin_reload(url)
            assert rejected.status_code == 400, rejected.text
            error = rejected.json()["error"]
            assert error["type"] == "invalid_request_error" and len(error["problems"]) >= 2, error
            assert any("role" in p for p in error["problems"]) and any("model" in p for p in error["problems"])
            gateway.proc.send_signal(signal.SIGHUP)  # the same file by signal: rejected too, logged
            wait_for(lambda: gateway.log_text().count("reload (SIGHUP) rejected") == 1, "the SIGHUP rejection")

            # 4. A change that needs a restart: rejected with that reason.
            write(path, config(two, port=1))
            restart = admin_reload(url)
            assert restart.status_code == 400 and "server: changed" in restart.text, restart.text
            before = load.seen("from one")
            wait_for(lambda: load.seen("from one") >= before + 5, "the third configuration still serving")
            assert "sk-reload" not in gateway.log_text()  # keys never reach the log
        assert load.errors == [], load.errors[:5]
        assert load.seen("from two") >= 5 and load.seen("from one") >= 15
        assert len(load.texts) == load.seen("from one") + load.seen("from two")


def test_every_worker_reloads(tmp_path: Path) -> None:
    """``server.workers: 2``: the admin call on one worker reloads both (through the
    supervisor), and SIGHUP to the supervisor too; each worker's log lines carry its pid."""
    path = tmp_path / "clasp.yaml"
    with FakeUpstream("openai") as one, FakeUpstream("openai") as two:
        one.script = lambda body, rec: Text("from one")
        two.script = lambda body, rec: Text("from two")
        write(path, config(one, workers=2))
        with GatewayProcesses(path, env=ENV, ready_timeout=120) as gateways:
            gateway = gateways[0]

            def answers() -> set[str]:
                seen = set()
                for i in range(30):  # new connections: the workers share the listening socket
                    response = httpx.post(gateway.base_url + "/v1/chat/completions",
                                          headers={"x-api-key": GATEWAY_KEY, "connection": "close"},
                                          json={"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]},
                                          timeout=30)
                    assert response.status_code == 200, response.text
                    seen.add(response.json()["choices"][0]["message"]["content"])
                return seen

            assert answers() == {"from one"}
            write(path, config(two, workers=2))
            assert admin_reload(gateway.base_url).status_code == 200
            wait_for(lambda: gateway.log_text().count("applied as configuration 2") == 2, "both workers reloaded")
            assert answers() == {"from two"}
            write(path, config(one, workers=2))
            gateway.proc.send_signal(signal.SIGHUP)  # the supervisor passes it on
            wait_for(lambda: gateway.log_text().count("applied as configuration 3") == 2, "both workers reloaded")
            assert answers() == {"from one"}
            log = gateway.log_text()
    pids = set(re.findall(r"\[(\d+)\] INFO clasp.reload: reload", log))
    assert len(pids) == 2, log[-3000:]  # two workers, each its own line
    assert log.count("applied as configuration 4") == 0  # the admin call's echo was not applied twice

"""``server.workers`` > 1 shares one state: with no ``state:`` section the workers share
a SQLite file, so a breaker opened through one worker is open in the other, and error
codes do not depend on which worker took the connection; ``state: {backend: memory}``
with several workers is refused at start-up, saying why. (clasp-fallback's
``test_workers_of_one_gateway_share_breakers_without_redis`` checks
``/health/providers`` from both workers.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from clasp_gateway.testing import GATEWAY_KEY, Error, FakeUpstream, GatewayProcesses


def test_memory_state_with_two_workers_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "clasp.yaml"
    path.write_text(yaml.safe_dump({"server": {"workers": 2, "port": 1}, "state": {"backend": "memory"},
                                    "models": {}}))
    done = subprocess.run([sys.executable, "-m", "clasp_gateway.cli", "--config", str(path), "serve"],
                          capture_output=True, text=True, timeout=120, env={"CLASP_LOAD_PLUGINS": "",
                                                                            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                                                                            "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "state.backend: memory" in done.stderr and "2 workers would each have their own" in done.stderr
    assert "Started" not in done.stderr  # refused before binding
    check = subprocess.run([sys.executable, "-m", "clasp_gateway.cli", "--config", str(path), "check", "--no-probe"],
                           capture_output=True, text=True, timeout=120, env={"CLASP_LOAD_PLUGINS": "",
                                                                             "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                                                                             "PATH": "/usr/bin:/bin"})
    assert check.returncode == 1 and "error: state.backend: memory" in check.stdout, check.stdout + check.stderr


def test_error_codes_agree_whichever_worker_answers(tmp_path: Path) -> None:
    with FakeUpstream("openai") as broken:
        broken.script = lambda body, rec: Error(500)
        config = {
            "server": {"workers": 2, "log_level": "info"},
            "keys": [{"key": GATEWAY_KEY, "name": "client", "team": "qa"}],
            "models": {"solo": [{"id": "only", "model": "openai/gpt-4o-mini", "api_base": broken.base_url,
                                 "api_key": "sk-up-0123456789"}]},
            "fallback": {"retry": {"attempts": 0}, "breaker": {"failures": 2, "cooldown": 60}},
        }
        with GatewayProcesses(config, env={"CLASP_LOAD_PLUGINS": "fallback"}, ready_timeout=120) as gateways:
            url = gateways[0].base_url + "/v1/chat/completions"
            body = {"model": "solo", "messages": [{"role": "user", "content": "hi"}]}
            with httpx.Client(timeout=30) as client:  # one kept-alive connection: one worker sees both failures
                first = [client.post(url, headers={"x-api-key": GATEWAY_KEY}, json=body) for _ in range(2)]
            assert [r.status_code for r in first] == [first[0].status_code] * 2 and first[0].status_code >= 500
            answers = []
            for _ in range(40):  # new connections: the workers share the listening socket
                response = httpx.post(url, headers={"x-api-key": GATEWAY_KEY, "connection": "close"}, json=body,
                                      timeout=30)
                answers.append((response.status_code, response.json()["error"]["type"],
                                response.headers["request-id"]))
            log = gateways[0].log_text()
    calls = [r for r in broken.requests if r.path.endswith("/chat/completions")]
    assert len(calls) == 2, "an open breaker sends nothing upstream, in either worker"
    assert len({(status, kind) for status, kind, _ in answers}) == 1, answers  # the same answer from both
    workers = {m.group(1) for rid in (a[2] for a in answers)
               for m in [re.search(r"\[(\d+)\] INFO clasp\.access: " + rid, log)] if m}
    assert len(workers) == 2, f"both workers should have answered: {workers}"

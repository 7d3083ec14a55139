"""``server.workers: 2``: every scrape, whichever worker answers it, adds up both
workers' samples (prometheus-client's multiprocess mode in a directory made for the
run by ``prepare_workers``, and removed after)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from clasp_gateway.testing import FakeUpstream, GatewayProcesses, Text, load_module, openai_models

support = load_module(Path(__file__).with_name("analytics_support.py"), "clasp_analytics_test_support")
KEY = "sk-analytics-workers-0123456789abcdef01"
ADMIN_KEY = "sk-analytics-workers-admin-0123456789ab"
REQUESTS = 40


def test_totals_add_up_over_two_workers(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    for _ in range(REQUESTS):
        fake_upstream.queue(Text("hello", usage=(10, 2)))
    config = {
        "server": {"workers": 2, "log_level": "info"},
        "keys": [{"key": KEY, "name": "workers", "team": "ops"},
                 {"key": ADMIN_KEY, "name": "admin", "role": "admin"}],
        "models": openai_models(fake_upstream.base_url),
        "storage": {"url": f"sqlite:///{tmp_path / 'clasp.db'}"},
    }
    env = {"CLASP_LOAD_PLUGINS": "analytics,fallback", "PROMETHEUS_MULTIPROC_DIR": None}
    with GatewayProcesses(config, env=env, ready_timeout=120) as gateways:
        url = gateways[0].base_url
        with httpx.Client(timeout=30) as client:
            for i in range(REQUESTS):  # a new connection each: the workers share the listening socket
                response = client.post(url + "/v1/chat/completions", headers={"x-api-key": KEY, "connection": "close"},
                                       json={"model": "gpt-4o", "messages": [{"role": "user", "content": f"hi {i}"}]})
                assert response.status_code == 200, response.text
            match = re.search(r"metrics: workers share samples in (\S+)", gateways[0].log_text())
            assert match is not None, gateways[0].log_text()[-2000:]
            directory = Path(match.group(1))
            pids = {p.name.split("_")[-1] for p in directory.glob("counter_*.db")}
            assert len(pids) == 2, f"both workers should have served: {sorted(pids)}"
            for _ in range(6):  # whichever worker answers the scrape, the sums are the same
                scraped = client.get(url + "/metrics", headers={"x-api-key": ADMIN_KEY, "connection": "close"})
                assert scraped.status_code == 200, scraped.text
                text = scraped.text
                found = support.samples(text)
                assert support.total(found, "clasp_requests_total", status="200", team="ops") == REQUESTS
                assert support.total(found, "clasp_tokens_total", direction="input") == 10 * REQUESTS
                assert support.total(found, "clasp_requests_in_flight") == 0
            member = client.get(url + "/metrics", headers={"x-api-key": KEY, "connection": "close"})
            assert member.status_code == 403  # the default: an admin key
    assert not directory.exists(), "the run's samples directory is removed when the gateway stops"


def test_a_directory_the_operator_set_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clasp_analytics.multiproc import per_run_directory

    mine = tmp_path / "prom"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(mine))
    with per_run_directory() as used:
        assert used == str(mine) and mine.is_dir()
    assert mine.is_dir()
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    with per_run_directory() as made:
        assert Path(made).is_dir()
    assert not Path(made).exists()

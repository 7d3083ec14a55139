"""Experiments: the split (sticky, weighted, inside the regions), shadow copies (bounded,
never billed to the key), and the comparison report against a seeded ledger whose
answer is known (SQLite and PostgreSQL), then end to end with the ledger, feedback,
the admin route and ``clasp experiment report``."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from clasp_router.experiments import Experiment, ShadowBudget, bucket, parse_experiments, sticky_id
from clasp_router.experiments_cli import main as experiment_main
from clasp_router.experiments_report import report, two_proportion, verdict, welch
from sqlalchemy.ext.asyncio import create_async_engine

from clasp_gateway import ConfigError, RequestContext
from clasp_gateway.testing import GATEWAY_KEY, FakeUpstream, GatewayServer, Text, config_from

ADMIN_KEY = "sk-clasp-admin-experiments-0123456789ab"


# --- the pure parts ------------------------------------------------------------------------


def test_bucket_is_stable_and_weighted() -> None:
    assert bucket("e", "alice") == bucket("e", "alice") != bucket("other", "alice")
    share = sum(bucket("e", f"user-{i}") < 0.1 for i in range(20_000)) / 20_000
    assert 0.09 < share < 0.11


def test_sticky_ids() -> None:
    request: Any = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "first"}]}
    later: Any = {"messages": [*request["messages"], {"role": "assistant", "content": "a"},
                               {"role": "user", "content": "second"}]}
    a = RequestContext("req_1", "openai", "m", False, user="alice")
    b = RequestContext("req_2", "openai", "m", False, user="alice")
    assert sticky_id("conversation", a, request) == sticky_id("conversation", b, later)  # one conversation
    assert sticky_id("user", a, request) == "alice" and sticky_id("request", a, request) == "req_1"


def test_two_proportion_z_test_known_values() -> None:
    z, p = two_proportion(80, 100, 60, 100)  # 80% vs 60%: pooled 0.7, se 0.0648
    assert z == pytest.approx(-3.0861, abs=1e-3) and p == pytest.approx(0.00203, abs=1e-4)
    assert two_proportion(0, 0, 1, 1) == (0.0, 1.0)
    z, p = welch([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert z == 0.0 and p == 1.0


def test_shadow_budget_bounds_rate_concurrency_and_dollars() -> None:
    exp = Experiment("e", "r", "c", mode="shadow", max_shadow_per_minute=3, max_shadow_concurrency=2,
                     max_shadow_usd_per_day=1.0)
    budget = ShadowBudget()
    assert budget.admit(exp, 0.0) and budget.admit(exp, 1.0)
    assert not budget.admit(exp, 2.0)  # two running
    budget.running = 0
    assert budget.admit(exp, 3.0) and not budget.admit(exp, 4.0)  # three this minute
    budget.running = 0
    assert budget.admit(exp, 61.0)
    budget.running, budget.spent_today = 0, 1.0
    assert not budget.admit(exp, 62.0)  # the day's dollars are spent
    assert budget.admit(exp, 86_400.0 + 1)


def test_settings_report_every_mistake_at_once() -> None:
    config = config_from({"models": {"m": [{"id": "a", "model": "openai/gpt-4o-mini", "api_key": "x"}]},
                          "experiments": {"bad": {"route": "nope", "candidate": "ghost", "mode": "ab", "weight": 2},
                                          "missing": {"mode": "split"}}})
    with pytest.raises(ConfigError) as info:
        parse_experiments(config)
    text = "\n".join(info.value.problems)
    for part in ("experiments.bad.route", "experiments.bad.candidate", "experiments.bad.mode",
                 "experiments.bad.weight", "experiments.missing.route: required", "experiments.missing.candidate"):
        assert part in text, text


# --- the report against a seeded ledger ----------------------------------------------------


def async_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1).replace("sqlite:///", "sqlite+aiosqlite:///", 1)


def seed_rows(name: str, arm: str, n: int, ok: int, cost: float, latency: float, start: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        rows.append({
            "request_id": f"{name}-{arm}-{i}", "ts": 1_000_000.0 + start + i, "public_model": "m",
            "tags": {"experiment": name, "arm": arm}, "status": 200 if i < ok else 502,
            "error": None if i < ok else "UpstreamError: down", "cut": False, "cost_usd": cost,
            "duration_ms": latency + i % 10, "ttfb_ms": latency / 2, "input_tokens": 0, "output_tokens": 0,
            "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0, "saved_usd": 0.0,
            "stream": False, "attempts": 1, "retries": 0, "fallbacks": 0,
        })
    return rows


async def seed(url: str) -> None:
    from clasp_analytics.tables import FEEDBACK
    from clasp_analytics.tables import METADATA as ANALYTICS
    from clasp_budgets.ledger.tables import METADATA as LEDGER
    from clasp_budgets.ledger.tables import REQUESTS

    engine = create_async_engine(async_url(url))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(LEDGER.create_all)
            await conn.run_sync(ANALYTICS.create_all)
            rows = (seed_rows("worse", "control", 200, 180, 0.010, 1000, 0)
                    + seed_rows("worse", "candidate", 200, 150, 0.002, 400, 1000)
                    + seed_rows("better", "control", 100, 80, 0.010, 1000, 2000)
                    + seed_rows("better", "candidate", 100, 80, 0.004, 500, 3000)
                    + seed_rows("small", "control", 10, 10, 0.01, 100, 4000)
                    + seed_rows("small", "candidate", 5, 5, 0.01, 100, 5000)
                    + seed_rows("other", "candidate", 50, 0, 0.01, 100, 6000))  # another experiment's
            await conn.execute(REQUESTS.insert(), rows)
            feedback = [{"request_id": f"better-control-{i}", "ts": 1_000_000.0, "key_id": "k", "by_admin": False,
                         "score": 0.4 + (i % 3) * 0.1, "comment": None, "metrics": {"tests_passed": 1}}
                        for i in range(40)]
            feedback += [{"request_id": f"better-candidate-{i}", "ts": 1_000_000.0, "key_id": "k", "by_admin": False,
                          "score": 0.8 + (i % 3) * 0.1, "comment": None, "metrics": {"tests_passed": 0}}
                         for i in range(40)]
            await conn.execute(FEEDBACK.insert(), feedback)
    finally:
        await engine.dispose()


async def run_report(url: str, name: str) -> dict[str, Any]:
    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as conn:
            return await report(conn, Experiment(name, "m", "cand"))
    finally:
        await engine.dispose()


def test_the_report_on_a_seeded_ledger(database_url: str) -> None:
    asyncio.run(seed(database_url))
    worse = asyncio.run(run_report(database_url, "worse"))
    control, candidate = worse["arms"]["control"], worse["arms"]["candidate"]
    assert (control["requests"], control["success"], candidate["requests"], candidate["success"]) == (200, 180, 200, 150)
    assert control["success_rate"] == 0.9 and candidate["success_rate"] == 0.75
    assert control["cost_usd"]["per_request"] == pytest.approx(0.01) and candidate["cost_usd"]["total"] == pytest.approx(0.4)
    assert candidate["latency_ms"]["p50"] == 404.0 and control["ttfb_ms_p50"] == 500.0
    assert worse["verdict"] == "candidate worse" and worse["tests"]["success"]["p"] < 0.001
    # Same success, clearly better feedback: the scores decide.
    better = asyncio.run(run_report(database_url, "better"))
    assert better["tests"]["success"]["p"] == 1.0 and better["verdict"] == "candidate better"
    assert better["arms"]["candidate"]["feedback"]["scored"] == 40
    assert better["arms"]["candidate"]["feedback"]["mean_score"] == pytest.approx(0.8975, abs=1e-3)
    assert better["arms"]["control"]["feedback"]["metrics"] == {"tests_passed": 1.0}
    assert better["tests"]["feedback_score"]["z"] > 0
    small = asyncio.run(run_report(database_url, "small"))
    assert small["verdict"] == "not enough data" and "at least 30" in small["reason"]
    assert verdict(*(_arm(n, ok) for n, ok in ((100, 90), (100, 89))))["verdict"] == "not enough data"


def _arm(n: int, ok: int) -> Any:
    from clasp_router.experiments_report import Arm

    arm = Arm("x", ids=[str(i) for i in range(n)])
    arm.ok = ok
    return arm


# --- end to end ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_plugins() -> Iterator[None]:
    old = os.environ.get("CLASP_LOAD_PLUGINS")
    os.environ["CLASP_LOAD_PLUGINS"] = "router,fallback,claude,budgets_ledger,analytics"
    yield
    if old is None:
        os.environ.pop("CLASP_LOAD_PLUGINS", None)
    else:
        os.environ["CLASP_LOAD_PLUGINS"] = old


def test_a_split_end_to_end_with_the_ledger_feedback_and_the_report(
        full_plugins: None, tmp_path: Path, kit: Any) -> None:
    with FakeUpstream("openai") as main, FakeUpstream("openai") as cand:
        main.script = lambda body, rec: Text("from main", usage=(10, 10))
        cand.script = lambda body, rec: Text("from candidate", usage=(10, 10))
        raw = {
            "keys": [{"key": GATEWAY_KEY, "name": "tests", "team": "qa"},
                     {"key": ADMIN_KEY, "name": "admin", "role": "admin"}],
            "models": {"m": [kit.deployment(main, "main")], "cand": [kit.deployment(cand, "cand")]},
            "storage": {"url": f"sqlite:///{tmp_path}/e2e.db"},
            "ledger": {"flush_interval": 0.05, "spool_path": str(tmp_path / "spool.jsonl")},
            "experiments": {"try-cand": {"route": "m", "candidate": "cand", "weight": 0.5, "sticky": "user"}},
        }
        server = GatewayServer(config_from(raw)).start()
        try:
            # Users picked so that each arm gets 11 (the split is a stable hash of the user).
            users, wanted = [], {True: 11, False: 11}
            for i in range(1000):
                side = bucket("try-cand", f"user-{i}") < 0.5
                if wanted[side]:
                    wanted[side] -= 1
                    users.append(f"user-{i}")
            seen: dict[str, str] = {}
            for user in users:
                r = httpx.post(server.base_url + "/v1/chat/completions",
                               headers={"x-api-key": GATEWAY_KEY, "x-clasp-user": user},
                               json={"model": "m", "messages": [{"role": "user", "content": f"q {user}"}],
                                     "max_tokens": 20}, timeout=10)
                assert r.status_code == 200, r.text
                seen[r.headers["request-id"]] = r.json()["choices"][0]["message"]["content"]
            assert set(seen.values()) == {"from main", "from candidate"}
            # A client cannot put itself in an arm.
            r = httpx.post(server.base_url + "/v1/chat/completions", timeout=10,
                           headers={"x-api-key": GATEWAY_KEY, "x-clasp-tags": "experiment=try-cand,arm=bogus"},
                           json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 200
            extra = r.json()["choices"][0]["message"]["content"]
            for request_id, answer in seen.items():
                score = 1.0 if answer == "from candidate" else 0.0
                f = httpx.post(server.base_url + "/v1/feedback", headers={"x-api-key": GATEWAY_KEY}, timeout=10,
                               json={"request_id": request_id, "score": score})
                assert f.status_code == 201, f.text
            assert httpx.get(server.base_url + "/admin/experiments/try-cand", timeout=5,
                             headers={"x-api-key": GATEWAY_KEY}).status_code == 403
            assert httpx.get(server.base_url + "/admin/experiments/nope", timeout=5,
                             headers={"x-api-key": ADMIN_KEY}).status_code == 404
            deadline = time.monotonic() + 10
            while True:
                r = httpx.get(server.base_url + "/admin/experiments/try-cand?min_requests=5", timeout=5,
                              headers={"x-api-key": ADMIN_KEY})
                assert r.status_code == 200, r.text
                arms = r.json()["arms"]
                if arms["control"]["requests"] + arms["candidate"]["requests"] == 23 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        finally:
            server.stop()
    body = r.json()
    candidates = sum(1 for a in [*seen.values(), extra] if a == "from candidate")
    assert arms["candidate"]["requests"] == candidates and arms["control"]["requests"] == 23 - candidates
    assert 11 <= candidates <= 12 and arms["candidate"]["feedback"]["scored"] == 11
    assert arms["candidate"]["feedback"]["mean_score"] == 1.0 and arms["control"]["feedback"]["mean_score"] == 0.0
    assert body["verdict"] == "candidate better" and "feedback_score" in body["tests"]
    assert arms["candidate"]["cost_usd"]["per_request"] > 0
    # The same report on the command line.
    path = tmp_path / "clasp.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in raw.items() if k != "keys"} | {"keys": raw["keys"]}))
    out = _capture(lambda: experiment_main(["report", "try-cand", "--min-requests", "5", "--json"], str(path)))
    assert json.loads(out)["verdict"] == "candidate better"
    text = _capture(lambda: experiment_main(["report", "try-cand", "--min-requests", "5"], str(path)))
    assert "verdict: candidate better" in text and "control" in text
    # `clasp report experiment NAME` sits beside clasp-budgets' `clasp report`.
    from clasp_gateway.cli import main as clasp_main

    out = _capture(lambda: clasp_main(["-c", str(path), "report", "experiment", "try-cand", "--min-requests", "5",
                                       "--json"]))
    assert json.loads(out)["arms"]["candidate"]["requests"] == candidates


def _capture(fn: Callable[[], int]) -> str:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert fn() == 0
    return buffer.getvalue()


def test_shadow_copies_are_recorded_without_a_key_and_never_delay_the_answer(
        kit: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from clasp_gateway import hookimpl

    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "router,fallback,claude")

    events: list[dict[str, Any]] = []

    class Events:
        @hookimpl
        def record(self, ctx: Any, event: dict[str, Any]) -> None:
            events.append(event)

    with FakeUpstream("openai") as main, FakeUpstream("openai") as cand:
        main.script = lambda body, rec: Text("from main", usage=(10, 10))
        cand.script = lambda body, rec: Text("slow candidate", usage=(10, 10), delay=2.0)
        config = config_from({
            "models": {"m": [kit.deployment(main, "main")], "cand": [kit.deployment(cand, "cand")]},
            "experiments": {"shadow": {"route": "m", "candidate": "cand", "mode": "shadow", "shadow_rate": 1.0,
                                       "max_shadow_per_minute": 2}},
        })
        with GatewayServer(config, plugins=[Events()]) as server:
            for _ in range(3):
                r = httpx.post(server.base_url + "/v1/chat/completions", headers={"x-api-key": GATEWAY_KEY},
                               json={"model": "m", "messages": [{"role": "user", "content": "q"}]}, timeout=10)
                assert r.json()["choices"][0]["message"]["content"] == "from main"
            cand.wait_for(2, timeout=5)
            deadline = time.monotonic() + 5
            while sum(1 for e in events if e.get("api") == "shadow") < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
    shadows = [e for e in events if e.get("api") == "shadow"]
    assert len(shadows) == 2 and len(cand.requests) == 2  # max_shadow_per_minute
    assert all(e["key_id"] is None and e["team"] is None and e["tags"] == {"experiment": "shadow", "arm": "shadow"}
               for e in shadows)
    assert shadows[0]["status"] == 200 and shadows[0]["cost_usd"] > 0 and shadows[0]["latency_ms"] >= 2000
    real = [e for e in events if e["kind"] == "request" and e.get("api") == "openai"]
    assert len(real) == 3 and all(e["tags"]["arm"] == "control" for e in real)
    # Every real answer was recorded before the first copy came back: none waited for it.
    assert max(events.index(e) for e in real) < min(events.index(e) for e in shadows)

"""The admin analytics API and ``POST /v1/feedback`` through a running gateway, on
SQLite and PostgreSQL: admin only, known answers from a seeded ledger, feedback tied
to the key that made the request, and no key in any answer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clasp_gateway.testing import FakeUpstream, GatewayServer, Text, config_from, load_module, openai_models

support = load_module(Path(__file__).with_name("analytics_support.py"), "clasp_analytics_test_support")
T0 = support.T0
ADMIN = {"x-api-key": support.ADMIN_KEY}
MEMBER = {"x-api-key": support.MEMBER_KEY}
OTHER = {"x-api-key": support.OTHER_KEY}
WHOLE = {"since": str(T0), "until": str(T0 + 10 * 86400)}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as fake:
        yield fake


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, database_url: str) -> Iterator[GatewayServer]:
    """One gateway per module and dialect, its ledger seeded with the known rows."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLASP_LOAD_PLUGINS", support.PLUGINS)
        config = config_from({"models": openai_models(upstream.base_url), "storage": {"url": database_url},
                              "analytics": {"quality": {"retry_window": 60}}})
        with GatewayServer(config, plugins=[support.RoleKeys()]) as server:
            support.seed_into(database_url)
            yield server


def get(gw: GatewayServer, path: str, headers: dict[str, str] = ADMIN, **params: Any) -> httpx.Response:
    return httpx.get(gw.base_url + path, headers=headers, params={**WHOLE, **params}, timeout=30)


@pytest.mark.parametrize("path", ["summary", "timeseries", "breakdown", "dimensions", "quality", "cohorts", "export"])
def test_every_endpoint_is_admin_only(gw: GatewayServer, path: str) -> None:
    assert get(gw, f"/admin/analytics/{path}", {}).status_code == 401
    assert get(gw, f"/admin/analytics/{path}", MEMBER).status_code == 403
    denied = get(gw, f"/admin/analytics/{path}", {"x-api-key": "sk-not-a-key-0123456789abcdef"})
    assert denied.status_code == 401 and denied.json()["type"] == "error"
    assert get(gw, f"/admin/analytics/{path}").status_code == 200


def test_summary_through_the_api(gw: GatewayServer) -> None:
    totals = get(gw, "/admin/analytics/summary").json()["totals"]
    assert (totals["requests"], totals["input_tokens"], totals["errors"]) == (8, 13500, 2)
    assert totals["cost_usd"] == pytest.approx(0.0968)
    red = get(gw, "/admin/analytics/summary", team="red", tag="feature=review").json()["totals"]
    assert (red["requests"], red["input_tokens"]) == (2, 3000)


def test_bad_parameters_are_shaped_400s(gw: GatewayServer) -> None:
    for params in ({"since": "soon"}, {"bucket": "fortnight"}, {"by": "colour"}):
        path = "/admin/analytics/breakdown" if "by" in params else "/admin/analytics/timeseries"
        response = get(gw, path, **params)
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_exports_stream_with_a_download_name(gw: GatewayServer) -> None:
    response = get(gw, "/admin/analytics/export", format="jsonl", team="green")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
    assert 'filename="clasp-requests-' in response.headers["content-disposition"]
    assert [line for line in response.text.splitlines() if line].__len__() == 2
    cohort = get(gw, "/admin/analytics/cohorts", by="team", format="csv")
    assert cohort.status_code == 200 and cohort.text.splitlines()[0].startswith("value,first_seen,")
    assert get(gw, "/admin/analytics/export", format="xlsx").status_code == 400


def chat(gw: GatewayServer, headers: dict[str, str], content: str) -> httpx.Response:
    return httpx.post(gw.base_url + "/v1/chat/completions", headers=headers, timeout=30,
                      json={"model": "gpt-4o", "messages": [{"role": "user", "content": content}]})


def feedback(gw: GatewayServer, headers: dict[str, str], body: Any) -> httpx.Response:
    return httpx.post(gw.base_url + "/v1/feedback", headers=headers, json=body, timeout=30)


def test_feedback_from_the_key_that_made_the_request_or_an_admin(gw: GatewayServer, upstream: FakeUpstream) -> None:
    upstream.queue(Text("an answer"))
    request_id = chat(gw, MEMBER, f"feedback {time.time()}").headers["request-id"]
    stored = feedback(gw, MEMBER, {"request_id": request_id, "score": 1, "comment": "fixed it",
                                   "metrics": {"tests_passed": True, "review_rounds": 2}})
    assert stored.status_code == 201, stored.text
    assert stored.json()["deployment"] == "openai/gpt-4o" and stored.json()["public_model"] == "gpt-4o"
    assert feedback(gw, OTHER, {"request_id": request_id, "score": 0}).status_code == 404  # not theirs
    assert feedback(gw, ADMIN, {"request_id": request_id, "metrics": {"pr_merged": False}}).status_code == 201
    assert feedback(gw, {}, {"request_id": request_id, "score": 1}).status_code == 401
    assert feedback(gw, MEMBER, {"request_id": "req_unknown", "score": 1}).status_code == 404
    now = time.time()
    rows = get(gw, "/admin/analytics/quality", since=str(now - 3600), until=str(now + 60)).json()["rows"]
    row = next(r for r in rows if r["deployment"] == "openai/gpt-4o")
    assert row["feedback"]["count"] == 2 and row["feedback"]["avg_score"] == 1.0
    assert row["feedback"]["metrics"]["tests_passed"] == {"mean": 1.0, "count": 1}
    assert row["feedback"]["metrics"]["pr_merged"] == {"mean": 0.0, "count": 1}


@pytest.mark.parametrize(("body", "field"), [
    ({"score": 1}, "request_id"),
    ({"request_id": "x", "score": "high"}, "score"),
    ({"request_id": "x", "score": float("1e300")}, "score"),
    ({"request_id": "x", "metrics": {"bad name": 1}}, "metrics"),
    ({"request_id": "x", "metrics": {"ok": "yes"}}, "metrics.ok"),
    ({"request_id": "x"}, "at least one of"),
    ({"request_id": "x", "score": 1, "user": "me"}, "user: unknown field"),
    (["not", "an", "object"], "JSON object"),
])
def test_bad_feedback_is_a_400_naming_the_field(gw: GatewayServer, body: Any, field: str) -> None:
    response = feedback(gw, MEMBER, body)
    assert response.status_code == 400
    assert field in response.json()["error"]["message"]


def test_a_retried_conversation_is_recorded(gw: GatewayServer, upstream: FakeUpstream) -> None:
    content = f"retry me {time.time()}"
    upstream.queue(Text("first"), Text("second"))
    now = time.time()
    before = retried_requests(gw, now)
    chat(gw, MEMBER, content)
    chat(gw, MEMBER, content)
    deadline = time.monotonic() + 10  # the quality rows are written in batches, off the hot path (1 s)
    while retried_requests(gw, now) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert retried_requests(gw, now) == before + 1


def retried_requests(gw: GatewayServer, now: float) -> int:
    rows = get(gw, "/admin/analytics/quality", since=str(now - 3600), until=str(now + 60)).json()["rows"]
    return sum(round(r["retried_rate"] * r["requests"]) for r in rows if r["deployment"] == "openai/gpt-4o")


def test_no_key_or_secret_in_any_answer(gw: GatewayServer) -> None:
    from clasp_gateway.testing import UPSTREAM_KEY

    for path in ("summary", "timeseries", "breakdown", "dimensions", "quality", "cohorts", "export"):
        text = get(gw, f"/admin/analytics/{path}").text
        for secret in (*support.SECRETS, UPSTREAM_KEY):
            assert secret not in text


def test_the_admin_endpoints_are_in_the_openapi_document(gw: GatewayServer) -> None:
    document = httpx.get(gw.base_url + "/admin/openapi.json", headers=ADMIN).json()
    for name in ("summary", "timeseries", "breakdown", "dimensions", "quality", "cohorts", "export"):
        assert f"/admin/analytics/{name}" in document["paths"]
    assert "summary" in document["paths"]["/admin/analytics/summary"]["get"]


def test_a_live_request_reaches_the_reports_through_the_ledger(gw: GatewayServer, upstream: FakeUpstream) -> None:
    upstream.queue(Text("counted", usage=(17, 4)))
    assert chat(gw, OTHER, f"live {time.time()}").status_code == 200
    now = time.time()
    window = {"since": str(now - 600), "until": str(now + 60), "key": "other-key"}
    deadline = time.monotonic() + 15  # the ledger writes in batches, off the hot path
    totals = get(gw, "/admin/analytics/summary", **window).json()["totals"]
    while totals["requests"] < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
        totals = get(gw, "/admin/analytics/summary", **window).json()["totals"]
    assert (totals["requests"], totals["input_tokens"], totals["output_tokens"]) == (1, 17, 4)
    assert totals["cost_usd"] > 0 and totals["duration_ms"]["p50"] is not None
    assert get(gw, "/admin/analytics/breakdown", by="team", **window).json()["rows"][0]["value"] == "blue"

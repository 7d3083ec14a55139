"""The dashboard in a real browser: Playwright for Python driving Debian's chromium
(``executable_path``; ``scripts/install.sh --test`` installs it). A seeded ledger with
known totals: the numbers on the page must equal them, filters must change them
correctly, the page and its API are 401 without an admin key, and no key or secret
appears in the HTML or in any API answer the page reads. Screenshots go to
``test-artifacts/dashboard-*.png`` (git-ignored)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clasp_gateway.testing import UPSTREAM_KEY, FakeUpstream, GatewayServer, config_from, load_module, openai_models

support = load_module(Path(__file__).with_name("analytics_support.py"), "clasp_analytics_test_support")
ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
SECRETS = (*support.SECRETS, UPSTREAM_KEY)


@pytest.fixture(scope="module")
def gw(sqlite_url: str) -> Iterator[GatewayServer]:
    """A gateway whose ledger holds the seed, moved so its last request was an hour ago."""
    with FakeUpstream("openai") as upstream, pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLASP_LOAD_PLUGINS", support.PLUGINS)
        config = config_from({"models": openai_models(upstream.base_url), "storage": {"url": sqlite_url}})
        with GatewayServer(config, plugins=[support.RoleKeys()]) as server:
            rows = support.seed_rows()
            shift = time.time() - 3600 - max(r["ts"] for r in rows)
            for row in rows:
                row["ts"] += shift
            support.seed_into(sqlite_url, rows)
            yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "chromium is missing: run `bash scripts/install.sh --test` (as root)"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


def test_the_page_and_its_api_are_401_without_an_admin_key(gw: GatewayServer) -> None:
    page = httpx.get(gw.base_url + "/admin/dashboard")
    assert page.status_code == 401
    assert 'data-state="signed-out"' in page.text and 'id="login-form"' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert "<script>" not in page.text and " style=" not in page.text and "onclick" not in page.text
    member = httpx.get(gw.base_url + "/admin/dashboard", headers={"x-api-key": support.MEMBER_KEY})
    assert member.status_code == 403 and 'data-state="signed-out"' in member.text
    for path in ("summary", "timeseries", "breakdown", "dimensions"):
        assert httpx.get(gw.base_url + f"/admin/analytics/{path}").status_code == 401
    bad_login = httpx.post(gw.base_url + "/admin/dashboard/login", json={"key": support.MEMBER_KEY})
    assert bad_login.status_code == 403 and "set-cookie" not in bad_login.headers
    cross_site = httpx.post(gw.base_url + "/admin/dashboard/login", content=f'{{"key": "{support.ADMIN_KEY}"}}',
                            headers={"content-type": "text/plain"})  # what another site's page could send
    assert cross_site.status_code == 400 and "set-cookie" not in cross_site.headers
    assert httpx.get(gw.base_url + "/admin/dashboard/assets/../settings.py").status_code == 404


def wait_value(page: Any, element_id: str, value: str) -> None:
    page.wait_for_function(
        "([id, v]) => document.getElementById(id).dataset.value === v && document.body.dataset.loading === 'false'",
        arg=[element_id, value], timeout=15_000)


def values(page: Any, *ids: str) -> dict[str, str]:
    return {i: page.get_attribute(f"#{i}", "data-value") or "" for i in ids}


def test_the_numbers_on_the_page_equal_the_ledger(gw: GatewayServer, browser: Any) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1500})
    page = context.new_page()
    answers: list[Any] = []
    problems: list[str] = []
    page.on("response", lambda r: answers.append(r) if "/admin/analytics/" in r.url else None)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" and "401" not in m.text
            and "403" not in m.text else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    # Signed out: the login form; a wrong key says so and sets nothing.
    response = page.goto(gw.base_url + "/admin/dashboard")
    assert response is not None and response.status == 401
    page.fill("#login-key", "sk-wrong-0123456789abcdefghij")
    page.click("#login-submit")
    page.wait_for_selector("#login-error:not([hidden])")
    page.screenshot(path=str(ARTIFACTS / "dashboard-login.png"))
    page.fill("#login-key", support.ADMIN_KEY)
    page.click("#login-submit")
    page.wait_for_selector("body[data-state='signed-in']")
    assert page.evaluate("document.cookie") == ""  # HttpOnly: the key is out of the script's reach
    assert page.evaluate("sessionStorage.length + localStorage.length") == 0
    assert support.ADMIN_KEY not in page.url

    # Everything (30 days): the seed's totals, worked out by hand in test_reports.py.
    page.select_option("#f-range", "30")
    wait_value(page, "total-requests", "8")
    assert values(page, "total-input-tokens", "total-output-tokens", "total-cache-read-tokens", "total-errors",
                  "total-cache-hits", "latency-p50", "latency-p90", "ttfb-p50", "total-retries",
                  "total-fallbacks") == {
        "total-input-tokens": "13500", "total-output-tokens": "1990", "total-cache-read-tokens": "600",
        "total-errors": "2", "total-cache-hits": "2", "latency-p50": "1000", "latency-p90": "5000",
        "ttfb-p50": "200", "total-retries": "3", "total-fallbacks": "1"}
    assert float(values(page, "total-cost")["total-cost"]) == pytest.approx(0.0968)
    assert float(values(page, "total-saved")["total-saved"]) == pytest.approx(0.065)
    assert page.inner_text("#total-requests") == "8" and page.inner_text("#total-input-tokens") == "13,500"
    assert page.inner_text("#total-cost") == "$0.0968" and page.inner_text("#error-rate") == "25.0%"
    assert page.inner_text("#cache-hit-rate") == "25.0%" and page.inner_text("#latency-p50") == "1,000 ms"
    rows = page.locator("#breakdown tbody tr")
    assert rows.count() == 2 and rows.nth(0).get_attribute("data-value") == "gpt-4o"
    assert page.locator("#chart-volume canvas").count() == 1
    page.screenshot(path=str(ARTIFACTS / "dashboard-all.png"), full_page=True)

    # Filters change the numbers, one dimension after another.
    page.select_option("#f-team", "red")
    wait_value(page, "total-requests", "4")
    assert values(page, "total-input-tokens", "total-cache-hits") == {"total-input-tokens": "4900",
                                                                      "total-cache-hits": "2"}
    assert float(values(page, "total-cost")["total-cost"]) == pytest.approx(0.0458)
    page.screenshot(path=str(ARTIFACTS / "dashboard-team-red.png"), full_page=True)
    page.select_option("#f-model", "haiku")
    wait_value(page, "total-requests", "1")
    assert float(values(page, "total-cost")["total-cost"]) == pytest.approx(0.0008)
    page.click("#f-reset")
    wait_value(page, "total-requests", "3")  # reset: the default range is the last 7 days
    page.select_option("#f-range", "30")
    wait_value(page, "total-requests", "8")
    page.select_option("#f-tag", "feature=review")
    wait_value(page, "total-requests", "3")
    assert values(page, "total-input-tokens")["total-input-tokens"] == "8000"
    page.select_option("#f-tag", "")
    page.select_option("#f-provider", "azure")
    wait_value(page, "total-requests", "1")
    assert values(page, "total-errors", "total-unpriced") == {"total-errors": "1", "total-unpriced": "1"}
    page.select_option("#f-provider", "")
    page.select_option("#f-key", "dave")
    wait_value(page, "total-requests", "2")
    page.select_option("#f-key", "")
    page.select_option("#f-class", "background")
    wait_value(page, "total-requests", "2")
    page.select_option("#f-class", "")
    page.select_option("#f-project", "web")
    wait_value(page, "total-requests", "2")
    page.select_option("#breakdown-by", "team")
    page.wait_for_function("() => document.querySelector('#breakdown tbody tr') !== null && "
                           "document.querySelector('#breakdown tbody tr').dataset.value === 'blue'")
    page.screenshot(path=str(ARTIFACTS / "dashboard-project-web.png"), full_page=True)

    # No key or secret anywhere the page got, and no script error (CSP included).
    html = page.content()
    texts = [answer.text() for answer in answers]
    for secret in SECRETS:
        assert secret not in html
        assert not any(secret in text for text in texts)
    assert len(texts) > 10 and problems == []

    page.click("#logout")
    page.wait_for_selector("body[data-state='signed-out']")
    context.close()
    assert httpx.get(gw.base_url + "/admin/analytics/summary").status_code == 401

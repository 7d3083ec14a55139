"""The browser sign-in against a real issuer on 127.0.0.1: the redirect with PKCE, the
callback exchanging the code, the session cookie (HttpOnly, SameSite=Lax, Path=/admin,
Secure behind https) and what it grants; and the attacks on the flow: a state from
another browser, a replayed code, a forged or expired cookie, an open redirect."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from clasp_gateway.testing import GatewayServer, config_from, free_port, load_module

support = load_module(Path(__file__).with_name("oidc_issuer.py"), "clasp_oidc_test_issuer")
ADMIN_KEY, CLIENT_ID, FakeIssuer, oidc_section = support.ADMIN_KEY, support.CLIENT_ID, support.FakeIssuer, support.oidc_section

SESSION_SECRET = "s" * 20 + "-session-secret-for-tests-0123456789"


@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    found = FakeIssuer().start()
    yield found
    found.stop()


def start(issuer: FakeIssuer, sqlite_url: str, server: dict[str, Any] | None = None, **login: Any) -> GatewayServer:
    port = free_port()
    config = config_from({
        "keys": [{"key": ADMIN_KEY, "role": "admin"}], "storage": {"url": sqlite_url}, "server": server or {},
        "oidc": oidc_section(issuer, login={"public_url": f"http://127.0.0.1:{port}",
                                            "session_secret": SESSION_SECRET, **login}),
    })
    return GatewayServer(config, port=port).start()


@pytest.fixture(scope="module")
def server(issuer: FakeIssuer, sqlite_url: str) -> Iterator[GatewayServer]:
    running = start(issuer, sqlite_url)
    yield running
    running.stop()


def sign_in(server: GatewayServer, client: httpx.Client, next_path: str | None = None) -> httpx.Response:
    """The whole dance: gateway -> issuer -> gateway callback."""
    first = client.get(server.base_url + "/admin/login", params={"next": next_path} if next_path else None)
    assert first.status_code == 302, first.text
    at_issuer = client.get(first.headers["location"])
    assert at_issuer.status_code == 302
    return client.get(at_issuer.headers["location"])


def test_sign_in_sets_a_session_that_works_on_the_admin_api(server: GatewayServer, issuer: FakeIssuer) -> None:
    with httpx.Client(timeout=10) as client:
        first = client.get(server.base_url + "/admin/login")
        location = urlsplit(first.headers["location"])
        query = parse_qs(location.query)
        assert location.path == "/authorize" and query["client_id"] == [CLIENT_ID]
        assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
        assert query["redirect_uri"] == [server.base_url + "/admin/oidc/callback"]
        flow_cookie = first.headers["set-cookie"]
        assert "HttpOnly" in flow_cookie and "Path=/admin/oidc" in flow_cookie and "SameSite=lax" in flow_cookie

        back = client.get(client.get(first.headers["location"]).headers["location"])
        assert back.status_code == 303 and back.headers["location"] == "/admin/dashboard"
        cookies = back.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith("clasp_session="))
        assert "HttpOnly" in session and "Path=/admin" in session and "SameSite=lax" in session
        assert "Secure" not in session  # plain http on loopback, no behind_https
        # the verifier reached the token endpoint with the client's credentials (Basic)
        assert issuer.token_requests[-1]["code_verifier"] and "client_secret" not in issuer.token_requests[-1]

        me = client.get(server.base_url + "/admin/me")
        assert me.status_code == 200 and me.json()["role"] == "admin" and me.json()["id"] == "oidc:u-ada"
        # the cookie is scoped to /admin: a model route never sees it
        assert client.post(server.base_url + "/v1/messages", json={}).status_code == 401

        assert client.post(server.base_url + "/admin/logout").status_code == 204
        assert client.get(server.base_url + "/admin/me").status_code == 401


def test_the_session_works_on_the_dashboard_and_not_from_other_sites(server: GatewayServer) -> None:
    with httpx.Client(timeout=10) as client:
        sign_in(server, client)
        page = client.get(server.base_url + "/admin/dashboard")
        assert page.status_code == 200 and 'data-state="signed-in"' in page.text
        same = client.get(server.base_url + "/admin/me", headers={"origin": server.base_url})
        assert same.status_code == 200
        for forged in ({"origin": "https://evil.example.com"}, {"origin": "null"}, {"sec-fetch-site": "cross-site"}):
            answer = client.post(server.base_url + "/admin/teams", json={"name": "pwned"}, headers=forged)
            assert answer.status_code == 401, (forged, answer.text)
        assert client.get(server.base_url + "/admin/teams/pwned").status_code == 404


def test_next_lands_under_admin_only(server: GatewayServer) -> None:
    with httpx.Client(timeout=10) as client:
        assert sign_in(server, client, "/admin/reports/spend").headers["location"] == "/admin/reports/spend"
    for evil in ("https://evil.example.com/", "//evil.example.com/admin", "/v1/messages", "/admin\\@evil"):
        with httpx.Client(timeout=10) as client:
            assert sign_in(server, client, evil).headers["location"] == "/admin/dashboard", evil


def test_state_from_another_browser_is_refused(server: GatewayServer) -> None:
    with httpx.Client(timeout=10) as victim, httpx.Client(timeout=10) as attacker:
        # the attacker starts a sign-in and sends the victim the callback link (login CSRF)
        first = attacker.get(server.base_url + "/admin/login")
        callback = attacker.get(first.headers["location"]).headers["location"]
        victim.get(server.base_url + "/admin/login")  # the victim has a flow of their own
        answer = victim.get(callback)
        assert answer.status_code == 400 and "state" in answer.json()["error"]["message"]
        assert "clasp_session=" not in " ".join(answer.headers.get_list("set-cookie"))
        fresh = httpx.get(callback, timeout=10)  # no flow cookie at all
        assert fresh.status_code == 400 and "no sign-in under way" in fresh.json()["error"]["message"]


def test_a_code_is_good_once(server: GatewayServer) -> None:
    with httpx.Client(timeout=10) as client:
        first = client.get(server.base_url + "/admin/login")
        callback = client.get(first.headers["location"]).headers["location"]
        flow = client.cookies.get("clasp_oidc_flow")
        assert flow and client.get(callback).status_code == 303
        again = httpx.get(callback, cookies={"clasp_oidc_flow": flow}, timeout=10)  # the same flow, replayed
        assert again.status_code == 401 and "refused the code" in again.json()["error"]["message"]


def test_forged_tampered_and_expired_sessions_are_401(server: GatewayServer, issuer: FakeIssuer) -> None:
    from clasp_oidc.session import Signer

    with httpx.Client(timeout=10) as client:
        sign_in(server, client)
        value = client.cookies.get("clasp_session")
        assert value
        payload, mac = value.split(".")
        forged = Signer(b"not-the-secret-" * 3).sign("session", {"sub": "x", "role": "admin"}, 2e9)
        for bad in (payload[:-2] + "AA." + mac, forged, Signer(SESSION_SECRET.encode()).sign(
                "session", {"sub": "x", "role": "admin"}, 1000)):
            answer = httpx.get(server.base_url + "/admin/me", cookies={"clasp_session": bad}, timeout=10)
            assert answer.status_code == 401 and "sign in again" in answer.json()["error"]["message"]
        # the flow cookie's signature is for another purpose: it is never a session
        flow = Signer(SESSION_SECRET.encode()).sign("flow", {"sub": "x", "role": "admin"}, 2e9)
        assert httpx.get(server.base_url + "/admin/me", cookies={"clasp_session": flow}).status_code == 401


def test_a_user_without_a_role_gets_no_session(server: GatewayServer, issuer: FakeIssuer) -> None:
    issuer.user = {**issuer.user, "groups": ["marketing"]}
    try:
        with httpx.Client(timeout=10) as client:
            answer = sign_in(server, client)
            assert answer.status_code == 403
            assert "clasp_session" not in client.cookies
    finally:
        issuer.user = {**issuer.user, "groups": ["platform-admins"]}


def test_secure_cookie_behind_a_tls_proxy(issuer: FakeIssuer, sqlite_url: str) -> None:
    running = start(issuer, sqlite_url, secure_cookie=True)
    try:
        with httpx.Client(timeout=10) as client:
            first = client.get(running.base_url + "/admin/login")
            assert "Secure" in first.headers["set-cookie"]
    finally:
        running.stop()


@pytest.mark.parametrize(("server", "forwarded", "secure"), [
    ({"behind_https": True}, None, True),
    ({"trusted_proxies": ["127.0.0.1"]}, "https", True),
    ({"trusted_proxies": ["127.0.0.1"]}, "http", False),
    ({"trusted_proxies": ["10.0.0.0/8"]}, "https", False),  # a client's own header counts for nothing
    ({}, "https", False),
])
def test_secure_by_tls_proxy_settings(issuer: FakeIssuer, sqlite_url: str, server: dict[str, Any],
                                      forwarded: str | None, secure: bool) -> None:
    running = start(issuer, sqlite_url, server)
    try:
        sent = {"x-forwarded-proto": forwarded} if forwarded else {}
        first = httpx.get(running.base_url + "/admin/login", headers=sent, timeout=10)
        assert ("Secure" in first.headers["set-cookie"]) is secure
    finally:
        running.stop()

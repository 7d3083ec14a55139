"""Ending sessions before they expire, as an operator and an attacker would see it: a
copy of a cookie after its owner signed out, an administrator revoking one session or
every session of a person, a member trying to revoke, and two gateway processes
sharing their state (Redis, or one SQLite file) and their database (SQLite), where a
revocation on one replica holds on the other at once, including for a session the
other never saw before."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clasp_gateway.testing import GatewayProcesses, GatewayServer, config_from, free_port, load_module

support = load_module(Path(__file__).with_name("oidc_issuer.py"), "clasp_oidc_test_issuer")
ADMIN_KEY, FakeIssuer, oidc_section = support.ADMIN_KEY, support.FakeIssuer, support.oidc_section

SESSION_SECRET = "r" * 20 + "-session-secret-for-revocation-0123456789"
MEMBER_KEY = "static-member-key-Qp4Zt7Hn2Ld"


@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    found = FakeIssuer().start()
    yield found
    found.stop()


def settings(issuer: FakeIssuer, public_url: str, **extra: Any) -> dict[str, Any]:
    return {"keys": [{"key": ADMIN_KEY, "role": "admin"}, {"key": MEMBER_KEY, "role": "member", "name": "mallory"}],
            "oidc": oidc_section(issuer, login={"public_url": public_url, "session_secret": SESSION_SECRET}), **extra}


@pytest.fixture(scope="module")
def server(issuer: FakeIssuer, sqlite_url: str) -> Iterator[GatewayServer]:
    port = free_port()
    running = GatewayServer(config_from(settings(issuer, f"http://127.0.0.1:{port}", storage={"url": sqlite_url})),
                            port=port).start()
    yield running
    running.stop()


def sign_in(base_url: str, client: httpx.Client) -> str:
    """The browser dance through ``base_url``; the session cookie's value."""
    first = client.get(base_url + "/admin/login")
    assert first.status_code == 302, first.text
    back = client.get(client.get(first.headers["location"]).headers["location"])
    assert back.status_code == 303, back.text
    value = client.cookies.get("clasp_session")
    assert value
    return value


def session_id(cookie: str) -> str:
    payload = cookie.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sid"])


def me(base_url: str, cookie: str) -> httpx.Response:
    return httpx.get(base_url + "/admin/me", cookies={"clasp_session": cookie}, timeout=10)


def revoke(base_url: str, body: Any, key: str = ADMIN_KEY) -> httpx.Response:
    return httpx.post(base_url + "/admin/sessions/revoke", json=body, headers={"authorization": f"Bearer {key}"},
                      timeout=10)


def test_sign_out_revokes_every_copy_of_the_cookie(server: GatewayServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clasp.audit")
    with httpx.Client(timeout=10) as client:
        stolen = sign_in(server.base_url, client)
        assert me(server.base_url, stolen).status_code == 200
        out = client.post(server.base_url + "/admin/logout")
        assert out.status_code == 204
        cleared = next(c for c in out.headers.get_list("set-cookie") if c.startswith("clasp_session="))
        assert "Max-Age=0" in cleared or "expires=" in cleared.lower()
    # The cookie is still validly signed and unexpired, yet refused.
    refused = me(server.base_url, stolen)
    assert refused.status_code == 401 and "signed out or revoked" in refused.json()["error"]["message"]
    sid = session_id(stolen)
    lines = [r for r in caplog.records if r.name == "clasp.audit"]
    assert [getattr(r, "clasp_access", {}).get("audit") for r in lines][-2:] == ["oidc.sign_in", "oidc.sign_out"]
    assert all(sid in r.getMessage() for r in lines[-2:])
    assert stolen not in caplog.text
    # Signing out again (or without a session) is harmless.
    assert httpx.post(server.base_url + "/admin/logout", cookies={"clasp_session": stolen}).status_code == 204
    assert httpx.post(server.base_url + "/admin/logout").status_code == 204


def test_an_admin_revokes_one_session_or_a_person(server: GatewayServer, issuer: FakeIssuer,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clasp.audit")
    with httpx.Client(timeout=10) as laptop, httpx.Client(timeout=10) as phone, httpx.Client(timeout=10) as other:
        first, second = sign_in(server.base_url, laptop), sign_in(server.base_url, phone)
        issuer.user = {**issuer.user, "sub": "u-grace", "email": "grace@example.com"}
        try:
            grace = sign_in(server.base_url, other)
        finally:
            issuer.user = {**issuer.user, "sub": "u-ada", "email": "ada@example.com"}
        for cookie in (first, second, grace):
            assert me(server.base_url, cookie).status_code == 200

        answer = revoke(server.base_url, {"session": session_id(first)})
        assert answer.status_code == 200 and answer.json() == {"revoked": {"session": session_id(first)}}
        assert me(server.base_url, first).status_code == 401
        assert me(server.base_url, second).status_code == 200  # only that one

        answer = revoke(server.base_url, {"subject": "u-ada"})
        assert answer.status_code == 200 and answer.json()["revoked"]["subject"] == "u-ada"
        assert me(server.base_url, second).status_code == 401
        assert me(server.base_url, grace).status_code == 200  # another person
        time.sleep(0.01)
        fresh = sign_in(server.base_url, laptop)  # signing in again after the revocation works
        assert me(server.base_url, fresh).status_code == 200
    audits = [getattr(r, "clasp_access", {}) for r in caplog.records if r.name == "clasp.audit"]
    revocations = [a for a in audits if a.get("audit") == "oidc.revoke"]
    assert [a.get("session") or a.get("subject") for a in revocations] == [session_id(first), "u-ada"]
    assert all(a["actor"] for a in revocations)


def test_only_an_admin_may_revoke_and_requests_are_checked(server: GatewayServer) -> None:
    with httpx.Client(timeout=10) as client:
        cookie = sign_in(server.base_url, client)
    assert revoke(server.base_url, {"subject": "u-ada"}, key=MEMBER_KEY).status_code == 403
    assert httpx.post(server.base_url + "/admin/sessions/revoke", json={"subject": "u-ada"}).status_code == 401
    assert me(server.base_url, cookie).status_code == 200  # nothing was revoked
    for bad in ({}, {"session": "a", "subject": "b"}, {"session": ""}, {"subject": "x" * 300}, {"session": 7}, []):
        answer = revoke(server.base_url, bad)
        assert answer.status_code == 400, (bad, answer.text)
    assert me(server.base_url, cookie).status_code == 200


def wait_for(check: Any, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.mark.parametrize("shared", ["redis", "sqlite"])
def test_revocations_hold_across_replicas(issuer: FakeIssuer, sqlite_url: str, redis_server: Any, tmp_path: Path,
                                          shared: str) -> None:
    """Two ``clasp serve`` processes: both accept a session signed in through either;
    a sign-out on one is refused on the other at once (the announcement), and a
    person revoked on one is refused on the other, for a session it never saw too."""
    state = ({"url": redis_server.url, "prefix": f"clasp-oidc-{time.monotonic_ns()}:"} if shared == "redis"
             else {"url": f"sqlite:///{tmp_path / 'state.db'}"})
    port = free_port()
    config = settings(issuer, f"http://127.0.0.1:{port}", storage={"url": sqlite_url}, state=state)
    public = f"http://127.0.0.1:{port}"  # the identity provider sends browsers back there
    with GatewayProcesses(config, 2, env={"CLASP_LOAD_PLUGINS": "oidc,budgets_keys"}) as gateways:
        signing, other = gateways[0], gateways[1]
        with httpx.Client(timeout=10) as client:
            cookie = sign_in_through(signing.base_url, other.base_url, public, client)
        answers = me(signing.base_url, cookie), me(other.base_url, cookie)
        assert [a.status_code for a in answers] == [200, 200], (answers[1].text, signing.log_text(), other.log_text())
        out = httpx.post(signing.base_url + "/admin/logout", cookies={"clasp_session": cookie}, timeout=10)
        assert out.status_code == 204
        assert wait_for(lambda: me(other.base_url, cookie).status_code == 401)  # the announcement, not the recheck
        assert me(signing.base_url, cookie).status_code == 401

        with httpx.Client(timeout=10) as client:
            unseen = sign_in_through(signing.base_url, other.base_url, public, client)
        assert me(signing.base_url, unseen).status_code == 200
        assert revoke(signing.base_url, {"subject": "u-ada"}).status_code == 200
        refused = me(other.base_url, unseen)  # never seen by this replica: read from the shared list
        assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
        assert me(signing.base_url, unseen).status_code == 401
        logs = signing.log_text() + other.log_text()
        assert "oidc sessions of u-ada revoked by" in logs
        assert unseen not in logs and cookie not in logs


def sign_in_through(signing: str, other: str, public: str, client: httpx.Client) -> str:
    """Sign in: the flow starts on ``other``, the identity provider sends the browser
    back to ``public`` (the callback), which ``signing`` serves when it is not that
    port (a load balancer in front of both would do the same)."""
    first = client.get(other + "/admin/login")
    assert first.status_code == 302, first.text
    callback = client.get(first.headers["location"]).headers["location"]
    back = client.get(callback.replace(public, signing, 1))
    assert back.status_code == 303, back.text
    value = client.cookies.get("clasp_session")
    assert value
    return value


async def test_a_replica_that_missed_the_announcement_reads_the_shared_list() -> None:
    """A process that starts (or reconnects) after a revocation never hears it
    announced: the shared list answers it, and a "not revoked" answer is trusted for
    ``recheck`` seconds only."""
    from clasp_oidc.revocation import Revocations

    from clasp_gateway import StateSettings, create_state

    now = [1_000.0]
    state = create_state(StateSettings(backend="memory"))
    await state.open()
    try:
        first = Revocations(state, 3600, clock=lambda: now[0], recheck=30)
        late = Revocations(state, 3600, clock=lambda: now[0], recheck=30)
        await first.revoke_subject("u-ada")
        await first.revoke_session("sid-2", now[0] + 600)
        assert await late.is_revoked("sid-1", "u-ada", issued_at=999.0)  # signed in before: revoked
        assert await late.is_revoked("sid-2", "u-grace", issued_at=999.0)  # that one session
        assert not await late.is_revoked("sid-3", "u-ada", issued_at=1_000.5)  # signed in after
        assert not await late.is_revoked("sid-4", "u-grace", issued_at=999.0)
        # Revoked where "late" cannot hear it (no announcement): known within the recheck.
        await state.set("oidc:revoked:session:sid-4", b"1", ttl=600)
        assert not await late.is_revoked("sid-4", "u-grace", issued_at=999.0)  # still trusted
        now[0] += 31
        assert await late.is_revoked("sid-4", "u-grace", issued_at=999.0)
        # The subject's entry lasts as long as a session could: then every one has expired.
        now[0] += 3600
        assert not await late.is_revoked("sid-5", "u-ada", issued_at=999.0)
    finally:
        await late.close()
        await first.close()
        await state.close()


async def test_a_state_outage_fails_closed_for_a_session_never_checked() -> None:
    """Redis stops: a session this process checked keeps its verdict (admins are not
    locked out), one it never saw is a 503 (a revoked session must not come back), and
    a revocation that cannot be written says so (503) instead of pretending."""
    from clasp_oidc.revocation import Revocations, RevocationsUnavailable

    from clasp_gateway import Secret, StateSettings, create_state
    from clasp_gateway.testing import redis_server

    with redis_server(own=True) as own:
        state = create_state(StateSettings(backend="redis", url=Secret(own.url, own.url), timeout=0.5))
        await state.open()
        try:
            revocations = Revocations(state, 3600)
            assert not await revocations.is_revoked("checked", "u-ada", issued_at=time.time())
            own.stop()
            assert not await revocations.is_revoked("checked", "u-ada", issued_at=time.time())
            with pytest.raises(RevocationsUnavailable) as refused:
                await revocations.is_revoked("unseen", "u-ada", issued_at=time.time())
            assert refused.value.status == 503
            with pytest.raises(RevocationsUnavailable):
                await revocations.revoke_subject("u-ada")
        finally:
            await revocations.close()
            await state.close()

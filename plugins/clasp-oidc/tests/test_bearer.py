"""Bearer JWTs on the admin API against a real issuer on 127.0.0.1: what verifies (RS256,
ES256, a rotated key), and every forgery that must not (expired, not yet valid, wrong
audience, wrong issuer, ``alg: none``, HS256 signed with the public key, unknown
``kid``, a key of the wrong type); roles and team from the groups claim; SSO
identities kept off model routes by default."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from clasp_gateway.testing import GatewayServer, config_from, load_module

support = load_module(Path(__file__).with_name("oidc_issuer.py"), "clasp_oidc_test_issuer")
ADMIN_KEY, CLIENT_ID, FakeIssuer, new_key, oidc_section = (
    support.ADMIN_KEY, support.CLIENT_ID, support.FakeIssuer, support.new_key, support.oidc_section)


@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    found = FakeIssuer().start()
    yield found
    found.stop()


@pytest.fixture(scope="module")
def server(issuer: FakeIssuer, sqlite_url: str) -> Iterator[GatewayServer]:
    config = config_from({"keys": [{"key": ADMIN_KEY, "name": "ops", "role": "admin"}],
                          "storage": {"url": sqlite_url}, "oidc": oidc_section(issuer)})
    with GatewayServer(config) as running:
        yield running


def call(server: GatewayServer, token: str, path: str = "/admin/me", method: str = "GET", **kw: Any) -> httpx.Response:
    return httpx.request(method, server.base_url + path, headers={"authorization": f"Bearer {token}"}, timeout=10,
                         **kw)


def test_a_valid_token_is_its_user_with_the_mapped_role(server: GatewayServer, issuer: FakeIssuer) -> None:
    answer = call(server, issuer.mint())
    assert answer.status_code == 200, answer.text
    me = answer.json()
    assert (me["id"], me["name"], me["role"], me["team"]) == ("oidc:u-ada", "ada@example.com", "admin", None)
    ec_key = next(k for k in issuer.keys if k.alg == "ES256")
    assert call(server, issuer.mint(key=ec_key)).status_code == 200


def test_team_admin_and_member_from_groups(server: GatewayServer, issuer: FakeIssuer) -> None:
    lead = call(server, issuer.mint(sub="u-bo", email="bo@example.com", groups=["red-leads", "engineering"])).json()
    assert (lead["role"], lead["team"]) == ("team_admin", "red")
    dev = call(server, issuer.mint(sub="u-cy", groups="engineering red-devs")).json()
    assert (dev["role"], dev["team"]) == ("member", "red")
    # a member's token on an admin route: 403; a user in no mapped group: 403 everywhere
    assert call(server, issuer.mint(groups=["engineering"]), "/admin/keys").status_code == 403
    nobody = call(server, issuer.mint(groups=["marketing"]))
    assert nobody.status_code == 403 and "none of their groups" in nobody.json()["error"]["message"]


def test_an_sso_team_admin_manages_its_team_only(server: GatewayServer, issuer: FakeIssuer) -> None:
    admin = {"x-api-key": ADMIN_KEY}
    for team in ("red", "blue"):
        httpx.post(server.base_url + "/admin/teams", json={"name": team}, headers=admin, timeout=10)
    blue = httpx.post(server.base_url + "/admin/keys", json={"name": "blue bot", "team": "blue"}, headers=admin,
                      timeout=10).json()
    lead = issuer.mint(sub="u-bo", groups=["red-leads"])
    created = call(server, lead, "/admin/keys", "POST", json={"name": "red bot"})
    assert created.status_code == 201 and created.json()["team"] == "red"
    assert call(server, lead, "/admin/keys", "POST", json={"name": "x", "team": "blue"}).status_code == 403
    listed = call(server, lead, "/admin/keys").json()["data"]
    assert {k["team"] for k in listed} == {"red"}
    assert call(server, lead, f"/admin/keys/{blue['id']}").status_code == 404
    audit = httpx.get(server.base_url + "/admin/audit", params={"target": created.json()["id"]}, headers=admin,
                      timeout=10).json()["data"]
    assert audit[0]["actor"]["id"] == "oidc:u-bo"


@pytest.mark.parametrize(("case", "expect"), [
    ("expired", "expired"), ("not_yet_valid", "not valid yet"), ("wrong_audience", "audience"),
    ("wrong_issuer", "issuer"), ("alg_none", "alg 'none'"), ("hs256_public_key", "alg 'HS256'"),
    ("unknown_kid", "does not publish"), ("no_exp", "'exp'"), ("bad_signature", "signature"),
    ("alg_mismatch", "does not match"), ("garbage", "malformed"),
])
def test_forged_and_stale_tokens_are_401(server: GatewayServer, issuer: FakeIssuer, case: str, expect: str) -> None:
    now = int(time.time())
    rsa_key = next(k for k in issuer.keys if k.kid == "k1")
    if case == "expired":
        token = issuer.mint(iat=now - 600, exp=now - 60)
    elif case == "not_yet_valid":
        token = issuer.mint(nbf=now + 600)
    elif case == "wrong_audience":
        token = issuer.mint(aud="another-client")
    elif case == "wrong_issuer":
        token = issuer.mint(iss="https://evil.example.com")
    elif case == "alg_none":
        token = jwt.encode({"iss": issuer.url, "aud": CLIENT_ID, "sub": "x", "iat": now, "exp": now + 60,
                            "groups": ["platform-admins"]}, None, algorithm="none", headers={"kid": "k1"})
    elif case == "hs256_public_key":
        pem = rsa_key.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
        # PyJWT refuses a PEM as an HMAC secret; forge the signature by hand
        header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT","kid":"k1"}')
        body = jwt.utils.base64url_encode(json.dumps(
            {"iss": issuer.url, "aud": CLIENT_ID, "sub": "x", "iat": now, "exp": now + 60,
             "groups": ["platform-admins"]}).encode())
        signature = hmac.new(pem, header + b"." + body, "sha256").digest()
        token = (header + b"." + body + b"." + jwt.utils.base64url_encode(signature)).decode()
    elif case == "unknown_kid":
        token = issuer.mint(key=new_key("k-unpublished"))
    elif case == "no_exp":
        token = issuer.mint(exp=None)
    elif case == "bad_signature":
        stranger = new_key("k1")  # same kid, another key
        token = issuer.mint(key=stranger)
    elif case == "alg_mismatch":
        token = issuer.mint(alg="RS384")  # k1 declares RS256
    else:
        token = "eyJhbGciOi.not-a.token"
    answer = call(server, token)
    assert answer.status_code == 401, (case, answer.text)
    error = answer.json()
    assert error["type"] == "error" and expect in error["error"]["message"], (case, error)
    assert token not in answer.text


def test_key_rotation_refetches_once_and_unknown_kids_do_not_flood(server: GatewayServer, issuer: FakeIssuer) -> None:
    now = [time.monotonic()]
    server.gateway.pm.get_plugin("clasp_oidc.runtime").issuer.clock = lambda: now[0]
    assert call(server, issuer.mint()).status_code == 200
    before = issuer.jwks_fetches
    rotated = issuer.rotate("k2")
    now[0] += 31  # past jwks_min_refresh since the last fetch (the forgery tests' unknown kid)
    assert call(server, issuer.mint(key=rotated)).status_code == 200  # unknown kid: one refetch finds it
    assert issuer.jwks_fetches == before + 1
    for _ in range(5):  # made-up kids within jwks_min_refresh: no more fetches
        assert call(server, issuer.mint(key=new_key("k-made-up"))).status_code == 401
    assert issuer.jwks_fetches == before + 1


def test_sso_identities_stay_off_model_routes_by_default(server: GatewayServer, issuer: FakeIssuer) -> None:
    answer = httpx.post(server.base_url + "/v1/messages", timeout=10,
                        headers={"authorization": f"Bearer {issuer.mint()}"},
                        json={"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 401
    assert httpx.get(server.base_url + "/admin/me", headers={"x-api-key": ADMIN_KEY}).status_code == 200


def test_an_issuer_advertising_another_name_is_not_trusted(sqlite_url: str) -> None:
    issuer = FakeIssuer().start()
    try:
        issuer.advertised_issuer = "https://impostor.example.com"
        config = config_from({"keys": [{"key": ADMIN_KEY, "role": "admin"}], "storage": {"url": sqlite_url},
                              "oidc": oidc_section(issuer)})
        with GatewayServer(config) as running:
            answer = call(running, issuer.mint())
            assert answer.status_code == 503 and "names the issuer" in answer.json()["error"]["message"]
    finally:
        issuer.stop()


def test_the_section_reports_every_mistake_at_once() -> None:
    from clasp_gateway import ConfigError
    from clasp_gateway.shell.app import create_app

    config = config_from({"oidc": {"issuer": "http://idp.example.com", "algorithms": ["HS256"],
                                   "roles": {"admin": ["x"]}, "login": {"public_url": "https://g.example.com",
                                                                        "session_secret": "short"}}})
    with pytest.raises(ConfigError) as raised:
        create_app(config)
    text = str(raised.value)
    assert "oidc.issuer: must be https" in text and "oidc.client_id: required" in text
    assert "oidc.algorithms.0" in text


def test_known_keys_outlive_an_issuer_outage(sqlite_url: str) -> None:
    issuer = FakeIssuer().start()
    config = config_from({"keys": [{"key": ADMIN_KEY, "role": "admin"}], "storage": {"url": sqlite_url},
                          "oidc": oidc_section(issuer, jwks_ttl="60s")})
    with GatewayServer(config) as running:
        now = [time.monotonic()]
        running.gateway.pm.get_plugin("clasp_oidc.runtime").issuer.clock = lambda: now[0]
        token = issuer.mint()
        assert call(running, token).status_code == 200
        issuer.stop()
        now[0] += 3600  # the keys are stale and the issuer is gone: the known key still verifies
        assert call(running, token).status_code == 200
        unknown = call(running, issuer.mint(key=new_key("k-new")))  # one we cannot fetch: never accepted
        assert unknown.status_code == 503 and unknown.headers["retry-after"] == "5"

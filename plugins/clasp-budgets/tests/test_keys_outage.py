"""The key database going away under a running gateway (a PostgreSQL database dropped
with its connections): keys the gateway has seen keep working, new ones and the admin
API get a shaped 503 with ``retry-after``, never a 500, and the outage is logged once."""

from __future__ import annotations

import logging

import clasp_budgets.keys.plugin as keys_plugin
import httpx
import pytest

from clasp_gateway.testing import FakeUpstream, GatewayServer, PostgresServer, config_from, openai_models

ADMIN_KEY = "admin-static-key-Oo41mNw0pLx2"


def test_the_database_going_away(postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture) -> None:
    url = postgres_server.create()
    try:
        with FakeUpstream("openai") as upstream:
            config = config_from({"keys": [{"key": ADMIN_KEY, "name": "ops", "role": "admin"}],
                                  "storage": {"url": url}, "models": openai_models(upstream.base_url)})
            with GatewayServer(config, plugins=[keys_plugin]) as gateway:
                def call(method: str, path: str, key: str, **kw: object) -> httpx.Response:
                    return httpx.request(method, gateway.base_url + path, headers={"x-api-key": key}, timeout=30,
                                         **kw)  # type: ignore[arg-type]

                known = call("POST", "/admin/keys", ADMIN_KEY, json={"name": "known"}).json()["key"]
                fresh = call("POST", "/admin/keys", ADMIN_KEY, json={"name": "fresh"}).json()["key"]
                assert call("GET", "/v1/models", known).status_code == 200
                postgres_server.drop(url)
                with caplog.at_level(logging.WARNING, logger="clasp.keys"):
                    for _ in range(3):
                        assert call("GET", "/v1/models", known).status_code == 200
                        refused = call("GET", "/v1/models", fresh)
                        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
                        assert refused.json()["error"]["type"] == "api_error"
                        assert "key store is unavailable" in refused.json()["error"]["message"]
                        listed = call("GET", "/admin/keys", ADMIN_KEY)
                        assert listed.status_code == 503 and listed.json()["type"] == "error"
                    assert call("GET", "/v1/models", ADMIN_KEY).status_code == 200  # static keys: untouched
                outages = [r for r in caplog.records if "virtual keys: the key store is unavailable" in r.getMessage()]
                assert len(outages) == 1
                assert known not in caplog.text and fresh not in caplog.text
    finally:
        postgres_server.drop(url)

"""The admin API and virtual keys through a real gateway, on SQLite and PostgreSQL: the
anthropic and openai SDKs as clients with a virtual key, the roles, input checks, the
audit log, the OpenAPI document, and the attacker's view (no key, a member key, a
team_admin key against another team; a key never in an answer, a log line or a row)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import clasp_budgets.keys.plugin as keys_plugin
import httpx
import openai
import pytest
import sqlalchemy as sa
from clasp_budgets.keys.tables import AUDIT, KEYS, TEAMS
from openapi_spec_validator import validate

from clasp_gateway import RequestContext, database_for, hookimpl
from clasp_gateway.testing import FakeUpstream, GatewayServer, Text, config_from, openai_models

ADMIN_KEY = "admin-static-key-Zq81mNw0pLx4"
DEV_KEY = "dev-static-key-Hy72kQe9vBn3"
USER = [{"role": "user", "content": "hello"}]


async def everything_stored(url: str) -> str:
    db = database_for(config_from({"storage": {"url": url}}))
    try:
        async with db.connect() as conn:
            found = [str((await conn.execute(sa.select(table))).all()) for table in (KEYS, TEAMS, AUDIT)]
    finally:
        await db.dispose()
    return "\n".join(found)


class Seen(logging.Handler):
    """Every log line the gateway writes while the module runs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage() + (str(record.exc_info) if record.exc_info else ""))


class Users:
    """Who each request was attributed to (``ctx.user``), as the ledger would read it."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    @hookimpl
    def record(self, ctx: RequestContext, event: dict[str, Any]) -> None:
        if event.get("kind") == "request":
            self.seen.append(ctx.user)


USERS = Users()


class Env:
    def __init__(self, server: GatewayServer, upstream: FakeUpstream, seen: Seen, url: str) -> None:
        self.server, self.upstream, self.seen, self.url = server, upstream, seen, url
        self.answers: list[str] = []
        self.keys: list[str] = []

    def call(self, method: str, path: str, key: str | None = ADMIN_KEY, **kw: Any) -> httpx.Response:
        headers = {"x-api-key": key} if key else {}
        answer = httpx.request(method, self.server.base_url + path, headers=headers, timeout=30, **kw)
        self.answers.append(answer.text + str(dict(answer.headers)))
        return answer

    def new_key(self, key: str | None = ADMIN_KEY, **body: Any) -> dict[str, Any]:
        answer = self.call("POST", "/admin/keys", key, json=body)
        assert answer.status_code == 201, answer.text
        made: dict[str, Any] = answer.json()
        self.keys.append(made["key"])
        return made


@pytest.fixture(scope="module")
def env(database_url: str) -> Iterator[Env]:
    seen = Seen()
    logging.getLogger().addHandler(seen)
    with FakeUpstream("openai") as upstream:
        config = config_from({
            "keys": [{"key": ADMIN_KEY, "name": "ops", "role": "admin"}, {"key": DEV_KEY, "name": "dev"}],
            "storage": {"url": database_url}, "models": openai_models(upstream.base_url),
        })
        with GatewayServer(config, plugins=[keys_plugin, USERS]) as server:
            yield Env(server, upstream, seen, database_url)
    logging.getLogger().removeHandler(seen)


@pytest.fixture(scope="module")
def teams(env: Env) -> dict[str, Any]:
    for name, body in (("red", {"models": ["claude-*", "gpt-4o"], "rpm": 100}), ("blue", {"tpm": 5000})):
        answer = env.call("POST", "/admin/teams", json={"name": name, **body})
        assert answer.status_code == 201, answer.text
    return {"red_admin": env.new_key(name="red boss", team="red", role="team_admin"),
            "red_member": env.new_key(name="red dev", team="red", user_id="ana", rpm=1000),
            "blue_member": env.new_key(name="blue dev", team="blue")}


def test_sdks_use_a_virtual_key(env: Env, teams: dict[str, Any]) -> None:
    key = teams["red_member"]["key"]
    env.upstream.queue(Text("hi from anthropic"), Text("hi from openai"))
    message = anthropic.Anthropic(base_url=env.server.base_url, api_key=key, max_retries=0).messages.create(
        model="claude-sonnet-4-5", max_tokens=20, messages=USER,  # type: ignore[arg-type]
        metadata={"user_id": "mallory"}, extra_headers={"x-clasp-user": "mallory"})
    assert message.content[0].text == "hi from anthropic"  # type: ignore[union-attr]
    chat = openai.OpenAI(base_url=env.server.base_url + "/v1", api_key=key, max_retries=0).chat.completions.create(
        model="gpt-4o", messages=USER)  # type: ignore[arg-type]
    assert chat.choices[0].message.content == "hi from openai"
    assert key not in str(env.upstream.last.headers)  # the upstream gets the provider key, never the client's
    deadline = time.monotonic() + 10  # the request event may be recorded just after the answer
    while len(USERS.seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert USERS.seen[-2:] == ["ana", "ana"]  # the key's owner, whatever the client says
    calls = len(env.upstream.requests)
    with pytest.raises(anthropic.PermissionDeniedError):  # the team allows claude-* and gpt-4o only
        anthropic.Anthropic(base_url=env.server.base_url, api_key=key, max_retries=0).messages.create(
            model="mistral-large", max_tokens=20, messages=USER)  # type: ignore[arg-type]
    assert len(env.upstream.requests) == calls  # refused before any upstream call
    me = env.call("GET", "/admin/me", key).json()
    assert me["kind"] == "virtual" and me["team"] == "red" and me["role"] == "member"
    assert me["effective_policy"]["rpm"] == 100 and me["effective_policy"]["models"] == ["claude-*", "gpt-4o"]
    assert me["key"]["display_prefix"] == key[:13] + "…" and me["key"]["user_id"] == "ana"


def test_a_revoked_key_is_refused_at_once(env: Env, teams: dict[str, Any]) -> None:
    made = env.new_key(name="short-lived", team="blue")
    assert env.call("GET", "/v1/models", made["key"]).status_code == 200
    assert env.call("POST", f"/admin/keys/{made['id']}/revoke").json()["status"] == "revoked"
    refused = env.call("GET", "/v1/models", made["key"])
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    unknown = env.call("GET", "/v1/models", made["key"][:-4] + "AAAA")
    assert unknown.status_code == 401 and "revoked" not in unknown.text


def test_a_team_change_reaches_its_keys(env: Env, teams: dict[str, Any]) -> None:
    made = env.new_key(name="team follower", team="blue")
    env.upstream.queue(Text("ok"))
    ask = {"model": "gpt-4o", "messages": USER}
    assert env.call("POST", "/v1/chat/completions", made["key"], json=ask).status_code == 200
    changed = env.call("PATCH", "/admin/teams/blue", json={"models": ["claude-*"]})
    assert changed.status_code == 200 and changed.json()["policy"]["models"] == ["claude-*"]
    assert env.call("POST", "/v1/chat/completions", made["key"], json=ask).status_code == 403
    assert env.call("PATCH", "/admin/teams/blue", json={"models": None}).json()["policy"]["models"] == []


def test_keys_are_listed_paged_and_filtered_without_secrets(env: Env, teams: dict[str, Any]) -> None:
    page = env.call("GET", "/admin/keys", params={"limit": 2}).json()
    assert len(page["data"]) == 2 and page["total"] >= 3 and page["limit"] == 2
    red = env.call("GET", "/admin/keys", params={"team": "red", "status": "active"}).json()
    assert {k["name"] for k in red["data"]} == {"red boss", "red dev"}
    one = env.call("GET", f"/admin/keys/{teams['red_member']['id']}").json()
    assert "key" not in one and "key_hash" not in one and one["status"] == "active"
    updated = env.call("PATCH", f"/admin/keys/{teams['red_member']['id']}", json={"tpm": 9000,
                                                                                  "metadata": {"seat": 4}})
    assert updated.status_code == 200 and updated.json()["policy"]["tpm"] == 9000


@pytest.mark.parametrize("body, message", [
    ({"name": "x", "rpm": -1}, "rpm: expected an integer between 1 and 1000000000, got -1"),
    ({"name": "x", "rpn": 5}, "rpn: unknown key; did you mean 'rpm'?"),
    ({"rpm": 5}, "name: required"),
    ({"name": "x", "role": "root"}, "role: expected one of member, team_admin, admin"),
    ({"name": "x", "models": ["a"] * 65}, "models: at most 64 models"),
    ({"name": "x", "expires_at": "next tuesday"}, "expires_at: expected unix seconds"),
    ({"name": "x", "expires_at": "2001-01-01"}, "expires_at: must be in the future, got 2001-01-01T00:00:00Z"),
    ({"name": "x", "metadata": {"blob": "x" * 5000}}, "metadata: at most 4096 bytes"),
    ({"name": "x", "team": "no-such-team"}, "no team named 'no-such-team'"),
    (["not", "an", "object"], "body: expected a JSON object"),
])
def test_bad_input_is_a_shaped_400_naming_the_field(env: Env, body: Any, message: str) -> None:
    answer = env.call("POST", "/admin/keys", json=body)
    assert answer.status_code in (400, 404), answer.text
    error = answer.json()
    assert error["type"] == "error" and message in error["error"]["message"], error


def test_sizes_and_pages_are_bounded(env: Env) -> None:
    assert env.call("POST", "/admin/keys", content=b"{" + b" " * 70000 + b"}").status_code == 413
    assert env.call("POST", "/admin/keys", content=b"{not json").status_code == 400
    for params in ({"limit": 501}, {"limit": 0}, {"offset": -1}, {"limit": "ten"}, {"status": "gone"}):
        answer = env.call("GET", "/admin/keys", params=params)
        assert answer.status_code == 400 and answer.json()["type"] == "error", (params, answer.text)


def test_without_a_key_or_with_a_member_key_nothing_but_me(env: Env, teams: dict[str, Any]) -> None:
    member = teams["red_member"]["key"]
    routes = [("POST", "/admin/keys"), ("GET", "/admin/keys"), ("GET", f"/admin/keys/{teams['blue_member']['id']}"),
              ("PATCH", f"/admin/keys/{teams['blue_member']['id']}"),
              ("POST", f"/admin/keys/{teams['blue_member']['id']}/revoke"), ("POST", "/admin/teams"),
              ("GET", "/admin/teams"), ("GET", "/admin/teams/red"), ("PATCH", "/admin/teams/red"),
              ("DELETE", "/admin/teams/red"), ("GET", "/admin/audit"), ("GET", "/admin/openapi.json")]
    for method, path in routes:
        assert env.call(method, path, None, json={}).status_code == 401, (method, path)
        assert env.call(method, path, "wrong-key-123456789012", json={}).status_code == 401, (method, path)
        answer = env.call(method, path, member, json={"name": "sneaky", "role": "admin"})
        assert answer.status_code == 403 and answer.json()["error"]["type"] == "permission_error", (method, path)
    assert env.call("GET", "/admin/me", None).status_code == 401
    assert env.call("GET", "/admin/me", DEV_KEY).json()["kind"] == "static"
    assert env.call("GET", f"/admin/keys/{teams['blue_member']['id']}").json()["status"] == "active"


def test_a_team_admin_manages_its_own_team_only(env: Env, teams: dict[str, Any]) -> None:
    boss = teams["red_admin"]["key"]
    mine = env.new_key(boss, name="made by boss")
    assert mine["team"] == "red" and mine["role"] == "member" and mine["created_by"] == "red boss"
    deputy = env.new_key(boss, name="deputy", role="team_admin")
    assert deputy["team"] == "red"
    refused = [
        env.call("POST", "/admin/keys", boss, json={"name": "elevated", "role": "admin"}),
        env.call("POST", "/admin/keys", boss, json={"name": "elsewhere", "team": "blue"}),
        env.call("GET", "/admin/keys", boss, params={"team": "blue"}),
        env.call("GET", "/admin/teams/blue", boss),
        env.call("POST", "/admin/teams", boss, json={"name": "green"}),
        env.call("PATCH", "/admin/teams/red", boss, json={"rpm": 100000}),
        env.call("DELETE", "/admin/teams/blue", boss),
        env.call("GET", "/admin/audit", boss),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused), [r.text for r in refused]
    blue = teams["blue_member"]["id"]
    for method, path in (("GET", f"/admin/keys/{blue}"), ("PATCH", f"/admin/keys/{blue}"),
                         ("POST", f"/admin/keys/{blue}/revoke")):
        assert env.call(method, path, boss, json={"rpm": 1}).status_code == 404  # as if it did not exist
    assert env.call("GET", f"/admin/keys/{blue}").json()["status"] == "active"
    listed = env.call("GET", "/admin/keys", boss).json()
    assert listed["data"] and {k["team"] for k in listed["data"]} == {"red"}
    assert [t["name"] for t in env.call("GET", "/admin/teams", boss).json()["data"]] == ["red"]
    assert env.call("POST", f"/admin/keys/{mine['id']}/revoke", boss).status_code == 200
    # The key's limits never exceed the team's, whatever a team_admin writes.
    loose = env.new_key(boss, name="loose", rpm=1_000_000, models=["*"])
    me = env.call("GET", "/admin/me", loose["key"]).json()["effective_policy"]
    assert me["rpm"] == 100 and me["models"] == ["claude-*", "gpt-4o"]


def test_teams_are_deleted_only_when_empty(env: Env) -> None:
    assert env.call("POST", "/admin/teams", json={"name": "temp"}).status_code == 201
    assert env.call("POST", "/admin/teams", json={"name": "temp"}).status_code == 409
    made = env.new_key(name="temp key", team="temp")
    answer = env.call("DELETE", "/admin/teams/temp")
    assert answer.status_code == 409 and "1 active key" in answer.json()["error"]["message"]
    env.call("POST", f"/admin/keys/{made['id']}/revoke")
    assert env.call("DELETE", "/admin/teams/temp").status_code == 200
    assert env.call("GET", "/admin/teams/temp").status_code == 404
    assert env.call("GET", "/admin/teams/Bad Name!").status_code == 400


def test_every_change_is_audited_without_secrets(env: Env, teams: dict[str, Any]) -> None:
    audit = env.call("GET", "/admin/audit", params={"limit": 500}).json()
    actions = {row["action"] for row in audit["data"]}
    assert {"team.create", "key.create", "key.update", "key.revoke", "team.update", "team.delete"} <= actions
    creations = env.call("GET", "/admin/audit", params={"action": "key.create", "actor": "red boss"}).json()
    assert creations["data"] and {r["actor"]["name"] for r in creations["data"]} == {"red boss"}
    assert all(r["details"]["team"] == "red" for r in creations["data"])
    assert env.call("GET", "/admin/audit", params={"since": "2999-01-01"}).json()["total"] == 0


def test_the_openapi_document_is_valid(env: Env) -> None:
    document = env.call("GET", "/admin/openapi.json").json()
    ours = ("/admin/keys", "/admin/keys/{key_id}", "/admin/keys/{key_id}/revoke", "/admin/teams",
            "/admin/teams/{name}", "/admin/audit", "/admin/me", "/admin/openapi.json")
    for path in ours:
        assert path in document["paths"], path
    validate(document)  # the whole document: every installed plugin's admin routes too
    assert set(document["paths"]["/admin/keys"]) == {"get", "post"}


def test_no_key_in_any_answer_log_line_or_row(env: Env, teams: dict[str, Any]) -> None:
    """Last in the module: everything the module did, seen whole."""
    assert len(env.keys) >= 8
    answers = "\n".join(env.answers)
    lines = "\n".join(env.seen.lines)
    rows = asyncio.run(everything_stored(env.url))
    for key in env.keys:
        created_once = sum(answer.count(key) for answer in env.answers)
        assert created_once == 1, "a key appears in an answer other than its creation"
        assert key not in lines and key[9:30] not in lines
        assert key not in rows and key[9:30] not in rows
    assert ADMIN_KEY not in answers and ADMIN_KEY not in lines


def test_a_key_changes_team_and_role_in_place(env: Env, teams: dict[str, Any]) -> None:
    made = env.new_key(name="mover", team="blue", rpm=50)
    key, path = made["key"], f"/admin/keys/{made['id']}"
    assert env.call("GET", "/admin/me", key).json()["effective_policy"]["tpm"] == 5000  # blue's
    changed = env.call("PATCH", path, json={"team": "red", "role": "team_admin", "models": ["gpt-4o"],
                                            "max_budget_usd": 5, "budget_period": "daily", "expires_at": "30d",
                                            "metadata": {"ticket": "OPS-1"}})
    assert changed.status_code == 200, changed.text
    record = changed.json()
    assert record["team"] == "red" and record["role"] == "team_admin" and record["id"] == made["id"]
    assert record["policy"]["models"] == ["gpt-4o"] and record["policy"]["rpm"] == 50
    assert record["policy"]["max_budget_usd"] == 5 and record["metadata"] == {"ticket": "OPS-1"}
    me = env.call("GET", "/admin/me", key).json()  # the same key, at once: the lookup cache dropped it
    assert me["team"] == "red" and me["role"] == "team_admin"
    assert me["effective_policy"]["tpm"] is None and me["effective_policy"]["rpm"] == 50  # red's, and its own
    assert env.call("GET", "/admin/keys", key).json()["data"]  # a team_admin of red now
    audit = env.call("GET", "/admin/audit", params={"action": "key.update", "target": made["id"]}).json()["data"]
    assert audit[0]["details"]["before"] == {"team": "blue", "role": "member"}
    assert audit[0]["details"]["team"] == "red" and audit[0]["details"]["role"] == "team_admin"
    assert key not in str(audit)
    # No team at all, then mistakes: each a 4xx naming what is wrong, nothing changed.
    assert env.call("PATCH", path, json={"team": None}).json()["team"] is None
    missing = env.call("PATCH", path, json={"team": "nowhere"})
    assert missing.status_code == 404 and "nowhere" in missing.json()["error"]["message"]
    for body, words in (({"role": "root"}, "role"), ({"team": "Bad Name!"}, "team"), ({"rpm": 0}, "rpm"),
                        ({"expires_at": "2001-01-01"}, "expires_at"), ({"colour": "red"}, "colour")):
        wrong = env.call("PATCH", path, json=body)
        assert wrong.status_code == 400 and words in wrong.json()["error"]["message"], (body, wrong.text)
    assert env.call("GET", path).json()["team"] is None


def test_a_team_admin_changes_roles_within_its_team_only(env: Env, teams: dict[str, Any]) -> None:
    boss = teams["red_admin"]["key"]
    member = env.new_key(name="promoted", team="red")
    path = f"/admin/keys/{member['id']}"
    promoted = env.call("PATCH", path, boss, json={"role": "team_admin"})
    assert promoted.status_code == 200 and promoted.json()["role"] == "team_admin"
    for body in ({"role": "admin"}, {"team": "blue"}, {"team": None}):
        assert env.call("PATCH", path, boss, json=body).status_code == 403, body
    assert env.call("PATCH", path, boss, json={"team": "red", "role": "member"}).status_code == 200
    assert env.call("GET", path).json()["team"] == "red"
    revoked = env.new_key(name="gone", team="red")
    env.call("POST", f"/admin/keys/{revoked['id']}/revoke")
    refused = env.call("PATCH", f"/admin/keys/{revoked['id']}", json={"team": "blue"})
    assert refused.status_code == 400 and "revoked" in refused.json()["error"]["message"]


def test_the_openapi_document_describes_the_key_update(env: Env) -> None:
    patch = env.call("GET", "/admin/openapi.json").json()["paths"]["/admin/keys/{key_id}"]["patch"]
    fields = patch["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"team", "role", "models", "rpm", "max_budget_usd", "expires_at", "metadata"} <= set(fields)

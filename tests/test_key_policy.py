"""Static keys' policy, as an attacker would probe it: the schema of ``keys:`` (every
mistake named), the Principal the default authenticator builds, the core refusing a
model outside ``models:`` (403, shaped by route, before any plugin and any upstream
call) and an expired key (401), ``/v1/models`` and ``count_tokens`` honouring the list,
and ``ctx.user``/``ctx.tags`` set before ``before_call``, with bounded headers."""

from __future__ import annotations

import datetime
from typing import Any

import httpx
import pytest

from clasp_gateway import ConfigError, KeyPolicy, RequestContext, hookimpl
from clasp_gateway.config import parse_config
from clasp_gateway.testing import FakeClock, FakeUpstream, GatewayServer, Text, config_from, openai_models

LIMITED = "limited-key-0123456789abcdef"
OPEN = "open-key-0123456789abcdefgh"
EXPIRING = "expiring-key-0123456789abcd"
EXPIRES = datetime.datetime(2031, 1, 31, 18, 0, tzinfo=datetime.UTC)
MODELS = {"gpt-4o-mini": "gpt-4o-mini", "claude-*sonnet*": "gpt-4o", "claude-*haiku*": "gpt-4o-mini",
          "claude-*": "gpt-4o"}
HAIKU = "claude-haiku-4-5"
SONNET = "claude-sonnet-4-5"


class Spy:
    """Records what plugins see, and would answer every request from a 'cache'."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, dict[str, str]]] = []
        self.routed: list[str] = []

    @hookimpl
    def resolve_route(self, ctx: RequestContext, request: Any, candidates: list[Any]) -> None:
        self.routed.append(ctx.public_model)

    @hookimpl
    def before_call(self, ctx: RequestContext, request: Any) -> None:
        self.seen.append((ctx.public_model, ctx.user, dict(ctx.tags)))


@pytest.fixture(scope="module")
def upstream() -> Any:
    with FakeUpstream("openai") as up:
        yield up


@pytest.fixture(scope="module")
def spy() -> Spy:
    return Spy()


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream, spy: Spy) -> Any:
    # The deployments run in "eu": the limited key's regions (the core enforces residency).
    config = config_from({"models": openai_models(upstream.base_url, MODELS, region="eu"), "keys": [
        {"key": LIMITED, "name": "ci", "team": "qa", "project": "billing", "models": ["claude-*haiku*", "gpt-4o-mini"],
         "tags": {"env": "ci", "project": "billing"}, "rpm": 60, "tpd": 100000, "max_concurrency": 2,
         "max_budget_usd": 25, "budget_period": "monthly", "regions": ["eu"]},
        {"key": OPEN, "name": "dev"},
        {"key": EXPIRING, "name": "temp", "expires": EXPIRES.isoformat()},
    ]})
    with GatewayServer(config, plugins=[spy]) as server:
        yield server


def call(gateway: Any, key: str, api: str, model: str, **extra: Any) -> httpx.Response:
    headers = {"x-api-key": key, **extra.pop("headers", {})}
    if api == "anthropic":
        body = {"model": model, "max_tokens": 600, "messages": [{"role": "user", "content": "hi"}], **extra}
        return httpx.post(gateway.base_url + "/v1/messages", headers=headers, json=body)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(gateway.base_url + "/v1/chat/completions", headers=headers, json=body)


# --- the schema ---------------------------------------------------------------------------------


def test_a_key_with_every_field_builds_its_principal(gateway: Any) -> None:
    import asyncio

    principal = asyncio.run(gateway.gateway._identify({"x-api-key": LIMITED}))
    assert (principal.name, principal.team, principal.role, principal.project) == ("ci", "qa", "member", "billing")
    assert principal.tags == {"env": "ci", "project": "billing"}
    assert principal.policy == KeyPolicy(models=("claude-*haiku*", "gpt-4o-mini"), rpm=60, tpd=100000,
                                         max_concurrency=2, max_budget_usd=25.0, budget_period="monthly",
                                         regions=("eu",))
    temp = asyncio.run(gateway.gateway._identify({"x-api-key": EXPIRING}))
    assert temp.policy.expires_at == EXPIRES.timestamp() and temp.role == "member"


@pytest.mark.parametrize("field, value, problem", [
    ("role", "root", "keys.0.role: expected one of admin, team_admin, member, got 'root'"),
    ("models", ["claude-[haiku"], "keys.0.models.0: expected a model name or glob such as claude-*haiku*"),
    ("models", [], "keys.0.models: expected a non-empty list of model name or glob"),
    ("rpm", 0, "keys.0.rpm: expected an integer >= 1 (e.g. 60), got 0"),
    ("tpm", "10k", "keys.0.tpm: expected an integer >= 1"),
    ("max_concurrency", 1.5, "keys.0.max_concurrency: expected an integer >= 1"),
    ("max_budget_usd", 0, "keys.0.max_budget_usd: expected a number > 0, got 0"),
    ("budget_period", "yearly", "keys.0.budget_period: expected one of daily, weekly, monthly, total"),
    ("expires", "next tuesday", "keys.0.expires: expected an ISO date or date-time such as 2027-01-31"),
    ("tags", {"bad key": "x"}, "keys.0.tags: expected at most 16 tags written name=value"),
    ("tags", {"k": "has space"}, "keys.0.tags: expected at most 16 tags"),
    ("regions", "", "keys.0.regions.0: expected a non-empty string"),
    ("expire", "2030-01-01", "keys.0.expire: unknown key; did you mean 'expires'?"),
])
def test_mistakes_in_a_key_are_named(field: str, value: Any, problem: str) -> None:
    entry = {"key": LIMITED, "name": "ci", field: value}
    with pytest.raises(ConfigError) as caught:
        parse_config({"keys": [entry]})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_budget_rules() -> None:
    with pytest.raises(ConfigError, match=r"keys\.0\.budget_period: needs max_budget_usd"):
        parse_config({"keys": [{"key": LIMITED, "budget_period": "daily"}]})
    config = parse_config({"keys": [{"key": LIMITED, "max_budget_usd": 10}]})
    assert config.keys[0].policy.budget_period == "total"  # a budget without a period never resets


def test_expires_takes_dates_and_times_and_warns_when_past() -> None:
    dated = parse_config({"keys": [{"key": LIMITED, "expires": datetime.date(2031, 2, 1)}]}).keys[0]
    assert dated.policy.expires_at == datetime.datetime(2031, 2, 1, tzinfo=datetime.UTC).timestamp()
    zoned = parse_config({"keys": [{"key": LIMITED, "expires": "2031-02-01T12:00:00+02:00"}]}).keys[0]
    assert zoned.policy.expires_at == datetime.datetime(2031, 2, 1, 10, tzinfo=datetime.UTC).timestamp()
    past = parse_config({"keys": [{"key": LIMITED, "name": "old", "expires": "2020-01-01"}]})
    assert any("keys.0 (old) expired on 2020-01-01" in w for w in past.warnings)


# --- models: the core refuses before any plugin and any upstream call ----------------------------


@pytest.mark.parametrize("api, shape", [("anthropic", "error"), ("openai", None)])
def test_a_model_outside_the_list_is_a_shaped_403(gateway: Any, upstream: FakeUpstream, spy: Spy, api: str,
                                                  shape: str | None) -> None:
    before, routed = len(upstream.requests), len(spy.routed)
    # claude-sonnet-haiku matches the allowed claude-*haiku*, but the claude-*sonnet* route serves it.
    for model in (SONNET, "gpt-4o", "claude-*", "claude-sonnet-haiku", "claude-opus-4-1"):
        answer = call(gateway, LIMITED, api, model)
        assert answer.status_code == 403, (model, answer.text)
        body = answer.json()
        if shape == "error":
            assert body["type"] == "error" and body["error"]["type"] == "permission_error"
        else:
            assert "type" not in body and body["error"]["type"] == "permission_error"
        assert "may not use the model" in body["error"]["message"]
    assert len(upstream.requests) == before and len(spy.routed) == routed  # nobody saw them
    assert call(gateway, LIMITED, api, HAIKU).status_code == 200
    assert call(gateway, OPEN, api, SONNET).status_code == 200


def test_models_lists_only_what_the_key_may_use(gateway: Any) -> None:
    limited = httpx.get(gateway.base_url + "/v1/models", headers={"x-api-key": LIMITED}).json()["data"]
    everything = httpx.get(gateway.base_url + "/v1/models", headers={"x-api-key": OPEN}).json()["data"]
    assert {m["id"] for m in limited} < {m["id"] for m in everything}
    assert all("haiku" in m["id"] or m["id"] == "gpt-4o-mini" for m in limited) and limited
    anthropic = httpx.get(gateway.base_url + "/v1/models",
                          headers={"x-api-key": LIMITED, "anthropic-version": "2023-06-01"}).json()["data"]
    assert {m["id"] for m in anthropic} == {m["id"] for m in limited}
    for headers in ({}, {"anthropic-version": "2023-06-01"}):
        one = httpx.get(gateway.base_url + f"/v1/models/{SONNET}", headers={"x-api-key": LIMITED, **headers})
        assert one.status_code == 404
        assert httpx.get(gateway.base_url + f"/v1/models/{HAIKU}",
                         headers={"x-api-key": LIMITED, **headers}).status_code == 200


def test_count_tokens_honours_the_list(gateway: Any) -> None:
    body = {"messages": [{"role": "user", "content": "hello there"}]}
    refused = httpx.post(gateway.base_url + "/v1/messages/count_tokens", headers={"x-api-key": LIMITED},
                         json={"model": SONNET, **body})
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
    allowed = httpx.post(gateway.base_url + "/v1/messages/count_tokens", headers={"x-api-key": LIMITED},
                         json={"model": HAIKU, **body})
    assert allowed.status_code == 200 and allowed.json()["input_tokens"] > 0


# --- expiry -----------------------------------------------------------------------------------


def test_an_expired_key_is_a_401(gateway: Any) -> None:
    clock = FakeClock(EXPIRES.timestamp() - 60)
    gateway.gateway.clock = clock
    try:
        assert call(gateway, EXPIRING, "openai", "gpt-4o-mini").status_code == 200
        clock.advance(60)
        for api in ("openai", "anthropic"):
            answer = call(gateway, EXPIRING, api, "gpt-4o-mini")
            assert answer.status_code == 401
            assert answer.json()["error"]["type"] == "authentication_error"
            assert "expired at 2031-01-31T18:00:00Z" in answer.json()["error"]["message"]
        models = httpx.get(gateway.base_url + "/v1/models", headers={"x-api-key": EXPIRING})
        assert models.status_code == 401
        assert call(gateway, OPEN, "openai", "gpt-4o-mini").status_code == 200
    finally:
        import time

        gateway.gateway.clock = time.time


# --- who the request is for ---------------------------------------------------------------------


def test_user_and_tags_reach_before_call(gateway: Any, spy: Spy) -> None:
    spy.seen.clear()
    call(gateway, OPEN, "anthropic", HAIKU, metadata={"user_id": "alice@example.com"})
    call(gateway, OPEN, "anthropic", HAIKU, metadata={"user_id": "alice@example.com"},
         headers={"x-clasp-user": "bob", "x-clasp-tags": "project=api, feature=review"})
    call(gateway, OPEN, "openai", "gpt-4o-mini", user="carol")
    call(gateway, OPEN, "openai", "gpt-4o-mini")
    assert spy.seen == [
        (HAIKU, "alice@example.com", {}),
        (HAIKU, "bob", {"project": "api", "feature": "review"}),
        ("gpt-4o-mini", "carol", {}),
        ("gpt-4o-mini", None, {}),
    ]


def test_the_keys_tags_win_over_the_clients(gateway: Any, spy: Spy) -> None:
    spy.seen.clear()
    answer = call(gateway, LIMITED, "openai", "gpt-4o-mini",
                  headers={"x-clasp-tags": "project=other,env=prod,feature=x", "x-clasp-role": "admin"})
    assert answer.status_code == 200
    assert spy.seen == [("gpt-4o-mini", None, {"project": "billing", "env": "ci", "feature": "x"})]


@pytest.mark.parametrize("header, value, message", [
    ("x-clasp-tags", "project", "x-clasp-tags: expected at most 16 tags written name=value"),
    ("x-clasp-tags", "project=a b", "x-clasp-tags: expected at most 16 tags"),
    ("x-clasp-tags", "1x=a", "x-clasp-tags: expected at most 16 tags"),
    ("x-clasp-tags", "a=1,a=2", "x-clasp-tags: the tag 'a' is given twice"),
    ("x-clasp-tags", ",".join(f"t{i}=v" for i in range(17)), "x-clasp-tags: more than 16 tags"),
    ("x-clasp-tags", "a=" + "v" * 129, "x-clasp-tags: expected at most 16 tags"),
    ("x-clasp-tags", "a=b," * 600, "x-clasp-tags: longer than 2048 characters"),
    ("x-clasp-user", "x" * 257, "x-clasp-user: expected 1 to 256 letters"),
    ("x-clasp-user", "bob\tsmith", "x-clasp-user: expected 1 to 256 letters"),
    ("x-clasp-user", "", "x-clasp-user: expected 1 to 256 letters"),
])
@pytest.mark.parametrize("api", ["anthropic", "openai"])
def test_a_bad_header_is_a_400_naming_it(gateway: Any, upstream: FakeUpstream, api: str, header: str, value: str,
                                         message: str) -> None:
    before = len(upstream.requests)
    answer = call(gateway, OPEN, api, "gpt-4o-mini", headers={header: value})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert answer.json()["error"]["message"].startswith(message)
    assert len(upstream.requests) == before


def test_a_clients_user_id_is_bounded(gateway: Any, spy: Spy) -> None:
    spy.seen.clear()
    call(gateway, OPEN, "openai", "gpt-4o-mini", user="u" * 5000)
    call(gateway, OPEN, "openai", "gpt-4o-mini", user="line\nbreak")
    assert [s[1] for s in spy.seen] == ["u" * 256, None]


def test_no_keys_configured_is_a_member_without_limits(upstream: FakeUpstream) -> None:
    upstream.queue(Text("ok"))
    config = config_from({"models": openai_models(upstream.base_url, MODELS)}, keys=False)
    with GatewayServer(config) as server:
        answer = httpx.post(server.base_url + "/v1/chat/completions",
                            json={"model": SONNET, "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200
        assert httpx.get(server.base_url + "/admin/openapi.json").status_code == 403


def test_an_allowed_glob_admits_the_names_of_its_own_routes() -> None:
    from clasp_gateway import Principal, may_use_model

    haiku = Principal("k", policy=KeyPolicy(models=("claude-*haiku*",)))
    routes = ("claude-*sonnet*", "claude-*haiku*", "claude-*")
    assert may_use_model(haiku, "claude-haiku-4-5", route="claude-*haiku*", routes=routes)
    assert not may_use_model(haiku, "claude-sonnet-haiku", route="claude-*sonnet*", routes=routes)
    assert may_use_model(haiku, "claude-sonnet-haiku")  # the name alone (count_tokens: no call is made)
    loose = Principal("k", policy=KeyPolicy(models=("*haiku*",)))
    assert may_use_model(loose, "claude-haiku-4-5", route="claude-*", routes=("claude-*",))  # one route: names rule
    exact = Principal("k", policy=KeyPolicy(models=("claude-haiku-4-5",)))
    assert may_use_model(exact, "claude-haiku-4-5", route="claude-*", routes=routes)
    assert not may_use_model(exact, "claude-haiku-4-6", route="claude-*haiku*", routes=routes)

"""Virtual keys below the HTTP layer: key values, policies, the lookup cache, the store
and the authenticate runtime, on real SQLite and PostgreSQL (``database_url``)."""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import AsyncIterator
from typing import Any

import clasp_budgets.keys.plugin as keys_plugin
import httpx
import pytest
import sqlalchemy as sa
from clasp_budgets.keys.auth import KeyAuthenticator, StoreUnavailable
from clasp_budgets.keys.cache import Entry, LookupCache
from clasp_budgets.keys.inputs import key_create, parse_body
from clasp_budgets.keys.policy import NO_MODEL, combine, glob_within, intersect_globs
from clasp_budgets.keys.store import Actor, KeyStore
from clasp_budgets.keys.tables import AUDIT, KEYS
from clasp_budgets.keys.tokens import PREFIX, display_prefix, is_virtual_key, key_hash, new_key

from clasp_gateway import (
    AuthenticationError,
    ConfigError,
    Database,
    InvalidRequestError,
    KeyPolicy,
    NotFoundError,
    StateSettings,
    create_state,
    database_for,
)
from clasp_gateway.testing import FakeClock, GatewayServer, config_from

ADMIN = Actor("key_admin", "ops", None)


# --- key values -----------------------------------------------------------------------------------


def test_keys_are_random_and_shaped() -> None:
    keys = {new_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert key.startswith(PREFIX) and len(key) == len(PREFIX) + 43 and is_virtual_key(key)
        assert len(key_hash(key)) == 64 and key not in key_hash(key)
        assert display_prefix(key) == key[:13] + "…"
    for bad in (None, "", PREFIX, PREFIX + "x" * 42, PREFIX + "x" * 44, PREFIX + "!" * 43, "sk-ant-" + "x" * 45):
        assert not is_virtual_key(bad)


# --- policies -----------------------------------------------------------------------------------


def test_the_stricter_limit_wins_field_by_field() -> None:
    key = KeyPolicy(rpm=100, tpm=None, max_concurrency=5, max_budget_usd=50.0, budget_period="monthly",
                    expires_at=2000.0)
    team = KeyPolicy(rpm=60, tpm=10_000, max_concurrency=10, max_budget_usd=20.0, budget_period="weekly",
                     expires_at=1000.0)
    both = combine(key, team)
    assert (both.rpm, both.tpm, both.max_concurrency) == (60, 10_000, 5)
    assert (both.max_budget_usd, both.budget_period, both.expires_at) == (20.0, "weekly", 1000.0)
    assert combine(key, None) is key
    assert combine(KeyPolicy(), team).rpm == 60


@pytest.mark.parametrize("key, team, expected", [
    ((), ("claude-*",), ("claude-*",)),
    (("claude-*",), (), ("claude-*",)),
    (("claude-*",), ("claude-*haiku*",), ("claude-*haiku*",)),
    (("claude-*",), ("*",), ("claude-*",)),
    (("gpt-4o", "claude-sonnet-4-5"), ("claude-*",), ("claude-sonnet-4-5",)),
    (("claude-*",), ("gpt-*",), (NO_MODEL,)),
    (("claude-*",), ("*haiku*",), (NO_MODEL,)),  # neither contains the other: nothing (stricter)
])
def test_models_are_intersected_conservatively(key: tuple[str, ...], team: tuple[str, ...],
                                               expected: tuple[str, ...]) -> None:
    assert intersect_globs(key, team) == expected


def test_no_model_matches_nothing() -> None:
    for name in ("", "claude-sonnet-4-5", "[!", "\x00", "*", NO_MODEL):
        assert not fnmatch.fnmatchcase(name, NO_MODEL)
    assert glob_within("claude-3*", "claude-*") and not glob_within("claude-*", "claude-3*")
    assert not glob_within("a*", "a?")


# --- the lookup cache ---------------------------------------------------------------------------


def entry(key_id: str, team: str | None = None) -> Entry:
    return Entry(key_id=key_id, team=team, status="active", principal=None, expires_at=None, stored=0)


def test_cache_bounds_ttls_and_invalidation() -> None:
    clock = FakeClock(0)
    cache = LookupCache(max_entries=3, ttl=10, negative_ttl=5, stale_if_error=100, clock=clock)
    for i in range(4):
        cache.put(f"h{i}", entry(f"key_{i}", "red" if i % 2 else "blue"))
    assert cache.get("h0") is None and cache.get("h3") is not None  # LRU bound
    for i in range(1000):  # a flood of made-up keys does not evict the real ones
        cache.put_unknown(f"bad{i}")
    assert cache.get("h1") is not None and cache.is_unknown("bad999") and not cache.is_unknown("bad0")
    clock.advance(6)
    assert not cache.is_unknown("bad999")  # negative entries are short-lived
    clock.advance(5)
    assert cache.get("h1") is None and cache.stale("h1") is not None  # stale, for outages only
    clock.advance(100)
    assert cache.stale("h1") is None
    cache.put("h1", entry("key_1", "red"))
    cache.put("h2", entry("key_2", "blue"))
    cache.put("h3", entry("key_3", "red"))
    assert cache.invalidate(team="red") == 2 and cache.get("h2") is not None
    assert cache.invalidate(key_id="key_2") == 1 and cache.get("h2") is None
    cache.put_unknown("x")
    cache.invalidate()
    assert len(cache) == 0


# --- the store, on both databases -----------------------------------------------------------------


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = database_for(config_from({"storage": {"url": database_url}}))
    await database.open()
    async with database.begin() as conn:  # each test starts empty
        for table in ("audit_log", "virtual_keys", "teams"):
            await conn.execute(sa.text(f"DELETE FROM {table}"))
    try:
        yield database
    finally:
        await database.dispose()


def values(**body: Any) -> dict[str, Any]:
    return parse_body(key_create(time.time()), {"name": "k", **body}, partial=False)


async def test_store_round_trip_and_audit(db: Database) -> None:
    store = KeyStore(db)
    with pytest.raises(NotFoundError, match="no team named 'red'"):
        await store.create_key(values(team="red"), ADMIN)
    await store.create_team({"name": "red", "rpm": 10, "models": ["claude-*"]}, ADMIN)
    with pytest.raises(InvalidRequestError, match="exists already"):
        await store.create_team({"name": "red"}, ADMIN)
    key, row = await store.create_key(values(team="red", rpm=100, models=["claude-*haiku*"], tags={"env": "ci"},
                                             user_id="ana"), ADMIN)
    found = await store.lookup(key_hash(key))
    assert found is not None and found.key["id"] == row["id"] and found.team is not None
    assert found.team["rpm"] == 10 and found.key["rpm"] == 100 and found.key["tags"] == {"env": "ci"}
    assert await store.lookup(key_hash(new_key())) is None
    others = [(await store.create_key(values(name=f"n{i}", project="p" if i % 2 else None), ADMIN))[1]
              for i in range(5)]
    rows, total = await store.list_keys(limit=2, offset=1)
    assert total == 6 and len(rows) == 2
    rows, total = await store.list_keys(project="p")
    assert total == 2 and {r["id"] for r in rows} == {others[1]["id"], others[3]["id"]}
    rows, total = await store.list_keys(team="red")
    assert [r["id"] for r in rows] == [row["id"]]
    updated = await store.update_key(row["id"], {"rpm": None, "name": "renamed"}, ADMIN)
    assert updated["rpm"] is None and updated["name"] == "renamed"
    with pytest.raises(InvalidRequestError, match="still has 1 active key"):
        await store.delete_team("red", ADMIN)
    await store.revoke_key(row["id"], ADMIN)
    first = (await store.get_key(row["id"]))["revoked_at"]
    await store.revoke_key(row["id"], ADMIN)  # idempotent
    assert (await store.get_key(row["id"]))["revoked_at"] == first
    assert (await store.list_keys(status="revoked"))[1] == 1
    await store.delete_team("red", ADMIN)
    audit, count = await store.list_audit()
    assert [a["action"] for a in reversed(audit)][:3] == ["team.create", "key.create", "key.create"]
    assert {"key.update", "key.revoke", "team.delete"} <= {a["action"] for a in audit}
    assert count == len(audit) == 1 + 6 + 1 + 1 + 1
    async with db.connect() as conn:  # nothing anywhere holds the key itself
        dump = str((await conn.execute(sa.select(AUDIT))).all()) + str((await conn.execute(sa.select(KEYS))).all())
    assert key not in dump and key[len(PREFIX) + 4:] not in dump


async def test_last_used_is_written_in_one_batch(db: Database) -> None:
    store = KeyStore(db)
    made = [(await store.create_key(values(name=f"k{i}"), ADMIN))[1]["id"] for i in range(3)]
    await store.touch({made[0]: 1000.0, made[2]: 2000.0})
    assert [(await store.get_key(k))["last_used_at"] for k in made] == [1000.0, None, 2000.0]


# --- the authenticate runtime ---------------------------------------------------------------------


class CountingStore(KeyStore):
    """The real store, counting lookups and able to fail like a database that is down."""

    def __init__(self, db: Database, clock: Any) -> None:
        super().__init__(db, clock)
        self.lookups = 0
        self.down = False

    async def lookup(self, digest: str) -> Any:
        self.lookups += 1
        if self.down:
            raise ConnectionRefusedError("connection refused")
        return await super().lookup(digest)

    async def has_live_keys(self) -> bool:
        if self.down:
            raise ConnectionRefusedError("connection refused")
        return await super().has_live_keys()


def runtime(store: KeyStore, clock: FakeClock, *, static_keys: bool = True, state: Any = None) -> KeyAuthenticator:
    return KeyAuthenticator(store, state, static_keys=static_keys, clock=clock,
                            cache=LookupCache(ttl=10, negative_ttl=5, stale_if_error=60, clock=clock))


async def test_a_virtual_key_becomes_a_principal_with_its_teams_limits(db: Database) -> None:
    clock = FakeClock(time.time())
    store = CountingStore(db, clock)
    auth = runtime(store, clock)
    await store.create_team({"name": "red", "rpm": 10, "models": ["claude-*"], "max_budget_usd": 5.0,
                             "budget_period": "daily"}, ADMIN)
    key, row = await store.create_key(values(team="red", role="team_admin", rpm=100, tpm=5000, project="api",
                                             tags={"env": "ci"}, user_id="ana", metadata={"cost_center": "42"}),
                                      ADMIN)
    principal = await auth.authenticate(key, {}, None)  # type: ignore[arg-type]
    assert principal is not None and principal.key_id == row["id"] and principal.name == "k"
    assert (principal.team, principal.role, principal.project, principal.tags) == ("red", "team_admin", "api",
                                                                                     {"env": "ci"})
    assert principal.metadata == {"cost_center": "42", "user_id": "ana"}
    policy = principal.policy
    assert (policy.rpm, policy.tpm, policy.models, policy.max_budget_usd) == (10, 5000, ("claude-*",), 5.0)
    for _ in range(50):
        assert await auth.authenticate(key, {}, None) is principal  # type: ignore[arg-type]
    assert store.lookups == 1  # cached
    clock.advance(11)
    assert await auth.authenticate(key, {}, None) is not None  # type: ignore[arg-type]
    assert store.lookups == 2  # the TTL passed: looked up again
    # A static key is never looked up; an unknown virtual key once per negative TTL.
    assert await auth.authenticate("some-static-key-1234567890", {}, None) is None  # type: ignore[arg-type]
    stranger = new_key()
    for _ in range(20):
        assert await auth.authenticate(stranger, {}, None) is None  # type: ignore[arg-type]
    assert store.lookups == 3
    await auth.flush_last_used()
    assert (await store.get_key(row["id"]))["last_used_at"] == pytest.approx(clock.now)
    await auth.close()


async def test_concurrent_requests_with_a_new_key_share_one_query(db: Database) -> None:
    clock = FakeClock(time.time())
    store = CountingStore(db, clock)
    auth = runtime(store, clock)
    key, _ = await store.create_key(values(), ADMIN)
    stranger = new_key()
    found = await asyncio.gather(*(auth.authenticate(k, {}, None) for k in [key] * 50 + [stranger] * 50))  # type: ignore[arg-type]
    assert all(p is not None for p in found[:50]) and all(p is None for p in found[50:])
    assert store.lookups == 2
    await auth.close()


async def test_revoked_and_expired_keys_are_refused_clearly(db: Database) -> None:
    clock = FakeClock(time.time())
    store = CountingStore(db, clock)
    auth = runtime(store, clock)
    key, row = await store.create_key(values(expires_at="1h"), ADMIN)
    assert await auth.authenticate(key, {}, None) is not None  # type: ignore[arg-type]
    clock.advance(3601)
    with pytest.raises(AuthenticationError, match="this API key expired at 20"):
        await auth.authenticate(key, {}, None)  # type: ignore[arg-type]
    other, other_row = await store.create_key(values(name="o"), ADMIN)
    assert await auth.authenticate(other, {}, None) is not None  # type: ignore[arg-type]
    await store.revoke_key(other_row["id"], ADMIN)
    await auth.announce(key_id=other_row["id"])
    with pytest.raises(AuthenticationError, match="revoked"):
        await auth.authenticate(other, {}, None)  # type: ignore[arg-type]
    await auth.close()


async def test_without_static_keys_a_gateway_with_virtual_keys_is_never_open(db: Database) -> None:
    clock = FakeClock(time.time())
    store = CountingStore(db, clock)
    auth = runtime(store, clock, static_keys=False)
    assert await auth.authenticate(None, {}, None) is None  # type: ignore[arg-type]  # no keys at all: the core's
    await auth.close()
    key, _ = await store.create_key(values(), ADMIN)
    auth = runtime(store, clock, static_keys=False)
    with pytest.raises(AuthenticationError, match="missing API key"):
        await auth.authenticate(None, {}, None)  # type: ignore[arg-type]
    for wrong in ("anything", new_key()):
        with pytest.raises(AuthenticationError, match="^invalid API key for this gateway$"):
            await auth.authenticate(wrong, {}, None)  # type: ignore[arg-type]
    assert await auth.authenticate(key, {}, None) is not None  # type: ignore[arg-type]
    await auth.close()


async def test_database_down_cached_keys_work_new_ones_get_503(db: Database,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(time.time())
    store = CountingStore(db, clock)
    auth = runtime(store, clock)
    known, _ = await store.create_key(values(name="known"), ADMIN)
    fresh, _ = await store.create_key(values(name="fresh"), ADMIN)
    assert await auth.authenticate(known, {}, None) is not None  # type: ignore[arg-type]
    store.down = True
    clock.advance(30)  # past the TTL: the cached entry is stale, and the database is down
    for _ in range(5):
        assert await auth.authenticate(known, {}, None) is not None  # type: ignore[arg-type]
        with pytest.raises(StoreUnavailable) as refused:
            await auth.authenticate(fresh, {}, None)  # type: ignore[arg-type]
    assert refused.value.status == 503 and refused.value.headers["retry-after"] == "2"
    outages = [r for r in caplog.records if "key store is unavailable" in r.getMessage()]
    assert len(outages) == 1  # logged once
    store.down = False
    assert await auth.authenticate(fresh, {}, None) is not None  # type: ignore[arg-type]
    assert any("answers again" in r.getMessage() for r in caplog.records)
    assert known not in caplog.text and fresh not in caplog.text
    await auth.close()


async def test_changes_reach_every_subscriber_through_the_state(db: Database) -> None:
    clock = FakeClock(time.time())
    state = create_state(StateSettings(backend="memory"))
    await state.open()
    store = CountingStore(db, clock)
    here, there = runtime(store, clock, state=state), runtime(store, clock, state=state)
    key, row = await store.create_key(values(), ADMIN)
    assert await there.authenticate(key, {}, None) is not None  # type: ignore[arg-type]
    await store.revoke_key(row["id"], ADMIN)
    await here.announce(key_id=row["id"])
    for _ in range(100):
        if not there.cache.get(key_hash(key)):
            break
        await asyncio.sleep(0.01)
    with pytest.raises(AuthenticationError, match="revoked"):
        await there.authenticate(key, {}, None)  # type: ignore[arg-type]
    await here.close()
    await there.close()
    await state.close()


def test_the_section_is_checked_like_the_rest_of_the_file(start_gateway: Any) -> None:
    with pytest.raises(ConfigError) as refused:
        start_gateway({"models": {}, "virtual_keys": {"cache": {"tll": "5s", "ttl": "forever"}, "max_lookups": 0}},
                      plugins=[keys_plugin])
    message = str(refused.value)
    assert "virtual_keys.cache.tll: unknown key; did you mean 'ttl'?" in message
    assert "virtual_keys.cache.ttl: expected a duration" in message
    assert "virtual_keys.max_lookups: expected an integer between 1 and 1000" in message


async def test_a_gateway_with_virtual_keys_and_no_static_ones_is_not_open(db: Database, database_url: str) -> None:
    config = config_from({"models": {}, "storage": {"url": database_url}}, keys=False)

    def models(key: str | None) -> int:
        with GatewayServer(config, plugins=[keys_plugin]) as gateway:
            headers = {"x-api-key": key} if key else {}
            return httpx.get(gateway.base_url + "/v1/models", headers=headers, timeout=30).status_code

    assert await asyncio.to_thread(models, None) == 200  # no key of any kind: open, as configured (and warned)
    key, _ = await KeyStore(db).create_key(values(), ADMIN)
    assert await asyncio.to_thread(models, None) == 401
    assert await asyncio.to_thread(models, "made-up-key-0123456789") == 401
    assert await asyncio.to_thread(models, key) == 200

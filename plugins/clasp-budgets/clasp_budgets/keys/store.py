"""Every query on keys, teams and the audit log (SQLAlchemy Core on an AsyncEngine).

The admin API, the CLI and the lookup path all go through :class:`KeyStore`, so a change
and its audit row are always written in one transaction, and the key's hash is the only
form of a key that ever reaches the database. Nothing here caches: :mod:`.auth` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from clasp_gateway import InvalidRequestError, NotFoundError, PermissionDeniedError, Principal, register_secret

from .inputs import iso
from .policy import policy_dict, policy_from_row
from .tables import AUDIT, KEYS, POLICY_FIELDS, TEAMS
from .tokens import display_prefix, key_hash, new_id, new_key

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change, as the audit log names them (never their key)."""

    id: str | None
    name: str
    team: str | None = None
    role: str = "admin"

    @classmethod
    def of(cls, principal: Principal) -> Actor:
        return cls(principal.key_id, principal.name, principal.team, principal.role)


@dataclass(frozen=True, slots=True)
class Found:
    """A key row and its team's row (None: no team, or the team was deleted)."""

    key: Mapping[str, Any]
    team: Mapping[str, Any] | None


def key_status(row: Mapping[Any, Any], now: float) -> str:
    if row.get("revoked_at") is not None:
        return "revoked"
    if row.get("expires_at") is not None and row["expires_at"] <= now:
        return "expired"
    return "active"


def describe_key(row: Mapping[Any, Any], now: float) -> dict[str, Any]:
    """A key as answers show it: everything but its hash."""
    policy = policy_dict(policy_from_row(row))
    policy["expires_at"] = iso(policy["expires_at"])
    return {
        "id": row["id"], "name": row["name"], "display_prefix": row["display_prefix"], "team": row["team"],
        "user_id": row["user_id"], "role": row["role"], "project": row["project"], "tags": dict(row["tags"] or {}),
        "policy": policy, "metadata": dict(row["metadata"] or {}), "status": key_status(row, now),
        "created_at": iso(row["created_at"]), "created_by": row["created_by"], "revoked_at": iso(row["revoked_at"]),
        "last_used_at": iso(row["last_used_at"]),
    }


def describe_team(row: Mapping[Any, Any], keys: int | None = None) -> dict[str, Any]:
    policy = policy_dict(policy_from_row(row))
    policy["expires_at"] = iso(policy["expires_at"])
    out = {"name": row["name"], "policy": policy, "metadata": dict(row["metadata"] or {}),
           "created_at": iso(row["created_at"])}
    if keys is not None:
        out["active_keys"] = keys
    return out


def _policy_values(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: values[k] for k in POLICY_FIELDS if k in values}


class Database(Protocol):
    """What the store needs of :class:`clasp_gateway.Database`: a transaction (on SQLite
    it takes the write lock at once) and a plain connection."""

    def begin(self) -> AbstractAsyncContextManager[AsyncConnection]: ...

    def connect(self) -> AbstractAsyncContextManager[AsyncConnection]: ...


class KeyStore:
    """Queries on one database. ``clock``: unix seconds (tests pass a FakeClock)."""

    def __init__(self, db: Database, clock: Clock = time.time) -> None:
        self.db = db
        self.clock = clock

    # --- lookups (the authenticate path) ---------------------------------------------

    async def lookup(self, digest: str) -> Found | None:
        """The key with this hash and its team, in one query."""
        team_cols = [c.label(f"team__{c.name}") for c in TEAMS.c]
        query = (select(KEYS, *team_cols).select_from(KEYS.outerjoin(TEAMS, KEYS.c.team == TEAMS.c.name))
                 .where(KEYS.c.key_hash == digest))
        async with self.db.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        key = {c.name: row[c.name] for c in KEYS.c}
        team = {c.name: row[f"team__{c.name}"] for c in TEAMS.c} if row["team__name"] is not None else None
        return Found(key, team)

    async def has_live_keys(self) -> bool:
        async with self.db.connect() as conn:
            row = (await conn.execute(select(KEYS.c.id).where(KEYS.c.revoked_at.is_(None)).limit(1))).first()
        return row is not None

    async def touch(self, used: Mapping[str, float]) -> None:
        """Record when keys were last used: one statement for the whole batch."""
        if not used:
            return
        from sqlalchemy import bindparam

        statement = (update(KEYS).where(KEYS.c.id == bindparam("key_id"))
                     .values(last_used_at=bindparam("used_at")))
        async with self.db.begin() as conn:
            await conn.execute(statement, [{"key_id": k, "used_at": t} for k, t in used.items()])

    # --- keys ---------------------------------------------------------------------------

    async def create_key(self, values: Mapping[str, Any], actor: Actor) -> tuple[str, RowMapping]:
        """Insert a key; returns the key (the only time it exists in clear) and its row."""
        now = self.clock()
        key = new_key()
        register_secret(key)  # this process's logs can never show it, whatever goes wrong next
        row = {
            "id": new_id("key"), "key_hash": key_hash(key), "display_prefix": display_prefix(key),
            "name": values["name"], "team": values.get("team"), "user_id": values.get("user_id"),
            "role": values.get("role") or "member", "project": values.get("project"),
            "tags": dict(values.get("tags") or {}), "metadata": dict(values.get("metadata") or {}),
            "created_at": now, "created_by": actor.name, "revoked_at": None, "last_used_at": None,
            **{k: None for k in POLICY_FIELDS}, **_policy_values(values),
        }
        async with self.db.begin() as conn:
            if row["team"] is not None:
                await self._team_row(conn, row["team"])
            await conn.execute(insert(KEYS).values(**row))
            await self.audit(conn, actor, "key.create", row["id"], {
                "name": row["name"], "team": row["team"], "role": row["role"], "display_prefix": row["display_prefix"],
                **{k: v for k, v in values.items() if k not in ("name", "team", "role")}})
            created = (await conn.execute(select(KEYS).where(KEYS.c.id == row["id"]))).mappings().one()
        return key, created

    async def get_key(self, key_id: str) -> RowMapping:
        async with self.db.connect() as conn:
            row = (await conn.execute(select(KEYS).where(KEYS.c.id == key_id))).mappings().first()
        if row is None:
            raise NotFoundError(f"no key with id {key_id!r}")
        return row

    async def list_keys(self, *, team: str | None = None, name: str | None = None, user_id: str | None = None,
                        project: str | None = None, role: str | None = None, status: str | None = None,
                        limit: int = 50, offset: int = 0) -> tuple[list[RowMapping], int]:
        """Keys matching every filter given, newest first, and how many match in all."""
        now = self.clock()
        where = []
        for column, value in ((KEYS.c.team, team), (KEYS.c.name, name), (KEYS.c.user_id, user_id),
                              (KEYS.c.project, project), (KEYS.c.role, role)):
            if value is not None:
                where.append(column == value)
        if status == "revoked":
            where.append(KEYS.c.revoked_at.is_not(None))
        elif status == "expired":
            where += [KEYS.c.revoked_at.is_(None), KEYS.c.expires_at.is_not(None), KEYS.c.expires_at <= now]
        elif status == "active":
            where += [KEYS.c.revoked_at.is_(None), (KEYS.c.expires_at.is_(None)) | (KEYS.c.expires_at > now)]
        condition = and_(True, *where)
        async with self.db.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(KEYS).where(condition))).scalar_one()
            rows = (await conn.execute(select(KEYS).where(condition)
                                       .order_by(KEYS.c.created_at.desc(), KEYS.c.id).limit(limit).offset(offset))
                    ).mappings().all()
        return list(rows), int(total)

    async def update_key(self, key_id: str, values: Mapping[str, Any], actor: Actor) -> RowMapping:
        """Change any of a key's fields (its team and role too: the team must exist),
        audited as ``key.update`` with the changes, and the team and role it had before
        when they change (``before``)."""
        async with self.db.begin() as conn:
            row = (await conn.execute(select(KEYS).where(KEYS.c.id == key_id))).mappings().first()
            if row is None:
                raise NotFoundError(f"no key with id {key_id!r}")
            if row["revoked_at"] is not None:
                raise InvalidRequestError(f"key {key_id!r} is revoked; revoked keys cannot be changed")
            changes = dict(values)
            if changes.get("team") is not None and changes["team"] != row["team"]:
                await self._team_row(conn, changes["team"])
            if changes:
                await conn.execute(update(KEYS).where(KEYS.c.id == key_id).values(**changes))
            details: dict[str, Any] = {"name": row["name"], "team": row["team"], **changes}
            before = {k: row[k] for k in ("team", "role") if k in changes and changes[k] != row[k]}
            if before:
                details["before"] = before
            await self.audit(conn, actor, "key.update", key_id, details)
            return (await conn.execute(select(KEYS).where(KEYS.c.id == key_id))).mappings().one()

    async def assign_key(self, key_id: str, changes: Mapping[str, Any], actor: Actor) -> RowMapping:
        """Move a key to another team and/or give it another role (``changes``: ``team``,
        ``role``), audited as ``key.assign`` with the values before and after."""
        async with self.db.begin() as conn:
            row = (await conn.execute(select(KEYS).where(KEYS.c.id == key_id))).mappings().first()
            if row is None:
                raise NotFoundError(f"no key with id {key_id!r}")
            if row["revoked_at"] is not None:
                raise InvalidRequestError(f"key {key_id!r} is revoked; revoked keys cannot be changed")
            if changes.get("team") is not None:
                await self._team_row(conn, changes["team"])
            await conn.execute(update(KEYS).where(KEYS.c.id == key_id).values(**changes))
            await self.audit(conn, actor, "key.assign", key_id, {
                "name": row["name"], "before": {k: row[k] for k in changes}, "after": dict(changes)})
            return (await conn.execute(select(KEYS).where(KEYS.c.id == key_id))).mappings().one()

    async def revoke_key(self, key_id: str, actor: Actor) -> RowMapping:
        """Revoke (idempotent: a second revocation keeps the first time)."""
        async with self.db.begin() as conn:
            row = (await conn.execute(select(KEYS).where(KEYS.c.id == key_id))).mappings().first()
            if row is None:
                raise NotFoundError(f"no key with id {key_id!r}")
            if row["revoked_at"] is None:
                await conn.execute(update(KEYS).where(KEYS.c.id == key_id).values(revoked_at=self.clock()))
                await self.audit(conn, actor, "key.revoke", key_id, {"name": row["name"], "team": row["team"]})
            return (await conn.execute(select(KEYS).where(KEYS.c.id == key_id))).mappings().one()

    # --- teams --------------------------------------------------------------------------

    async def _team_row(self, conn: AsyncConnection, name: str) -> RowMapping:
        row = (await conn.execute(select(TEAMS).where(TEAMS.c.name == name))).mappings().first()
        if row is None:
            raise NotFoundError(f"no team named {name!r} (create it first: POST /admin/teams or `clasp teams create`)")
        return row

    async def create_team(self, values: Mapping[str, Any], actor: Actor) -> RowMapping:
        row = {"name": values["name"], "metadata": dict(values.get("metadata") or {}), "created_at": self.clock(),
               **{k: None for k in POLICY_FIELDS}, **_policy_values(values)}
        try:
            async with self.db.begin() as conn:
                await conn.execute(insert(TEAMS).values(**row))
                await self.audit(conn, actor, "team.create", row["name"], {k: v for k, v in values.items()})
                return (await conn.execute(select(TEAMS).where(TEAMS.c.name == row["name"]))).mappings().one()
        except IntegrityError:
            raise InvalidRequestError(f"name: a team named {row['name']!r} exists already", status=409) from None

    async def get_team(self, name: str) -> tuple[RowMapping, int]:
        async with self.db.connect() as conn:
            row = await self._team_row(conn, name)
            count = await self._live_keys(conn, name)
        return row, count

    async def _live_keys(self, conn: AsyncConnection, team: str) -> int:
        query = select(func.count()).select_from(KEYS).where(KEYS.c.team == team, KEYS.c.revoked_at.is_(None))
        return int((await conn.execute(query)).scalar_one())

    async def list_teams(self, *, limit: int = 50, offset: int = 0,
                         names: Sequence[str] | None = None) -> tuple[list[tuple[RowMapping, int]], int]:
        live = (select(KEYS.c.team, func.count().label("n")).where(KEYS.c.revoked_at.is_(None))
                .group_by(KEYS.c.team).subquery())
        condition = TEAMS.c.name.in_(list(names)) if names is not None else and_(True)
        query = (select(TEAMS, func.coalesce(live.c.n, 0).label("active_keys"))
                 .select_from(TEAMS.outerjoin(live, live.c.team == TEAMS.c.name))
                 .where(condition).order_by(TEAMS.c.name).limit(limit).offset(offset))
        async with self.db.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(TEAMS).where(condition))).scalar_one()
            rows = (await conn.execute(query)).mappings().all()
        return [(row, int(row["active_keys"])) for row in rows], int(total)

    async def update_team(self, name: str, values: Mapping[str, Any], actor: Actor) -> RowMapping:
        async with self.db.begin() as conn:
            await self._team_row(conn, name)
            if values:
                await conn.execute(update(TEAMS).where(TEAMS.c.name == name).values(**dict(values)))
            await self.audit(conn, actor, "team.update", name, dict(values))
            return await self._team_row(conn, name)

    async def delete_team(self, name: str, actor: Actor) -> None:
        """Delete a team that has no live key (revoke or move them first)."""
        async with self.db.begin() as conn:
            await self._team_row(conn, name)
            live = await self._live_keys(conn, name)
            if live:
                raise InvalidRequestError(f"team {name!r} still has {live} active key(s); revoke them first",
                                          status=409)
            await conn.execute(delete(TEAMS).where(TEAMS.c.name == name))
            await self.audit(conn, actor, "team.delete", name, {})

    # --- audit --------------------------------------------------------------------------

    async def audit(self, conn: AsyncConnection, actor: Actor, action: str, target: str | None,
                    details: Mapping[str, Any]) -> None:
        """One audit row, in the caller's transaction (the change and its record commit together)."""
        await conn.execute(insert(AUDIT).values(
            ts=self.clock(), actor_id=actor.id, actor_name=actor.name[:160], actor_team=actor.team,
            action=action, target=target, details=dict(details)))

    async def list_audit(self, *, action: str | None = None, actor: str | None = None, target: str | None = None,
                         since: float | None = None, until: float | None = None, limit: int = 50,
                         offset: int = 0) -> tuple[list[RowMapping], int]:
        where = []
        if action is not None:
            where.append(AUDIT.c.action == action)
        if actor is not None:
            where.append((AUDIT.c.actor_id == actor) | (AUDIT.c.actor_name == actor))
        if target is not None:
            where.append(AUDIT.c.target == target)
        if since is not None:
            where.append(AUDIT.c.ts >= since)
        if until is not None:
            where.append(AUDIT.c.ts < until)
        condition = and_(True, *where)
        async with self.db.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(AUDIT).where(condition))).scalar_one()
            rows = (await conn.execute(select(AUDIT).where(condition).order_by(AUDIT.c.ts.desc(), AUDIT.c.id.desc())
                                       .limit(limit).offset(offset))).mappings().all()
        return list(rows), int(total)


def describe_audit(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {"id": row["id"], "ts": iso(row["ts"]), "actor": {"id": row["actor_id"], "name": row["actor_name"],
            "team": row["actor_team"]}, "action": row["action"], "target": row["target"],
            "details": dict(row["details"] or {})}


__all__ = ["Actor", "Found", "KeyStore", "PermissionDeniedError", "describe_audit", "describe_key", "describe_team",
           "key_status"]

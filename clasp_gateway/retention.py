"""Retention and deletion of what the gateway keeps about requests.

Plugins keep records (clasp-budgets: ledger rows; clasp-analytics: quality rows and
feedback; clasp-cache: cached answers). Each registers a *data store*
(``register_data_stores``) with a ``purge(gateway, selection)`` that deletes, in
batches, what a :class:`DataSelection` names (older than a time, of a key, of a
team). The core then offers, for every store at once:

- **retention by age** (``retention:`` in clasp.yaml)::

      retention:
        interval: 1h             # how often the job runs (default 1 hour)
        batch: 1000              # rows deleted per statement
        max_age: {ledger: 400d, analytics: 90d, cache: 7d}

  A background task, off the request path, deletes older records every
  ``interval``. With several replicas one runs each round: a claim in the shared
  state (``state:``, a key with a TTL) and, on PostgreSQL, an advisory lock held
  while it deletes.
- **deletion on demand** by key or team, optionally only before a date:
  ``clasp data delete --key ID | --team NAME [--before 2026-01-01]`` and
  ``POST /admin/data/delete`` (role ``admin``). Every such deletion is audited: a
  ``clasp.audit`` log line naming who asked, what and how many records went (and
  stores may keep their own audit row: ``selection.actor`` is set).

``POST /admin/data/retention`` runs a round now.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .hookspecs import hookimpl
from .validation import Duration, Field, Integer, MapOf, Section

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from .config import Config
    from .pipeline import Gateway
    from .plugins import PluginManager
    from .registrations import RegisterRoute

__all__ = ["RETENTION", "DataSelection", "DataStoreRegistration", "RegisterDataStore", "Retention", "data_stores",
           "delete_data", "parse_date"]

log = logging.getLogger("clasp.retention")
audit = logging.getLogger("clasp.audit")

SHUTDOWN_WAIT = 10.0
"""Seconds shutdown waits for a retention round in progress before it cancels it."""

RETENTION = Section({
    "interval": Field(Duration(minimum=60), 3600.0),
    "batch": Field(Integer(1, 100_000), 1000),
    "max_age": Field(MapOf(Duration(minimum=3600), expected="a mapping of data store name to an age such as 90d"), {}),
})
"""``retention:``."""

LOCK_KEY = 0x636C_6173_7265_746E
"""The PostgreSQL advisory lock of the retention job ("clasretn" in ASCII)."""
CLAIM_KEY = "retention:claim:"
"""State key (plus the store name) a replica sets, with a TTL, to run a round."""


@dataclass(slots=True, frozen=True)
class DataSelection:
    """What to delete: records created before ``before`` (unix seconds) and, when set,
    only those of the key ``key_id`` or the team ``team`` (every given field must
    match). ``batch``: rows per delete statement. ``actor``: who asked (on demand;
    ``None`` for the retention job)."""

    before: float | None = None
    key_id: str | None = None
    team: str | None = None
    batch: int = 1000
    actor: str | None = None

    def describe(self) -> dict[str, Any]:
        """For audit lines and answers (``before`` as an ISO date)."""
        return {"key_id": self.key_id, "team": self.team, "batch": self.batch, "actor": self.actor,
                "before": (datetime.datetime.fromtimestamp(self.before, datetime.UTC).isoformat()
                           if self.before is not None else None)}


Purge = Callable[["Gateway", DataSelection], Awaitable[int]]


@dataclass(slots=True, frozen=True)
class DataStoreRegistration:
    """A plugin's records (``register_data_stores``): ``purge(gateway, selection)``
    deletes what ``selection`` names, in batches, and returns how many records went."""

    name: str
    purge: Purge
    description: str
    plugin: str


class RegisterDataStore(Protocol):
    """``register`` of ``register_data_stores``."""

    def __call__(self, name: str, purge: Purge, description: str = "") -> DataStoreRegistration: ...


def _register(plugin: str, out: list[DataStoreRegistration]) -> RegisterDataStore:
    from .registrations import _callable, _name

    def register(name: str, purge: Purge, description: str = "") -> DataStoreRegistration:
        """Add the data store ``name`` whose records ``purge(gateway, selection)`` deletes."""
        _name(name, "data store name", re.compile(r"^[a-z][a-z0-9_]{0,31}$"), "must be a lower-case word such as 'ledger'")
        _callable(purge, f"the purge of data store {name!r}")
        record = DataStoreRegistration(name, purge, description, plugin)
        out.append(record)
        return record

    return register


def data_stores(pm: PluginManager) -> dict[str, DataStoreRegistration]:
    """Every registered data store, by name (a name two plugins register is an error)."""
    from .registrations import _collect

    return {r.name: r for r in _collect(pm, "register_data_stores", _register, lambda r: [r.name])}


def parse_date(value: str) -> float:
    """``2026-01-01`` or an ISO 8601 time (UTC unless it says otherwise) as unix seconds;
    ``ValueError`` with a message for a person otherwise."""
    try:
        parsed = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"expected a date such as 2026-01-01 or 2026-01-01T12:00:00Z, got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


async def delete_data(gateway: Gateway, selection: DataSelection, stores: Mapping[str, DataStoreRegistration] | None
                      = None) -> dict[str, int]:
    """Delete what ``selection`` names from every data store (on demand: a key or team
    is required); audited. Returns how many records each store deleted. A store that
    fails is reported (``-1``) and does not stop the others."""
    if selection.key_id is None and selection.team is None:
        raise ValueError("name a key or a team (deleting every record of everyone is not an on-demand deletion)")
    stores = stores if stores is not None else data_stores(gateway.pm)
    counts: dict[str, int] = {}
    for name, store in stores.items():
        try:
            counts[name] = int(await store.purge(gateway, selection))
        except Exception as exc:
            log.error("data deletion: the store %r failed: %s: %s", name, type(exc).__name__, exc)
            counts[name] = -1
    audit.warning("data deleted on demand by %s: %s -> %s", selection.actor or "?", selection.describe(), counts,
                  extra={"clasp_access": {"audit": "data.delete", "selection": selection.describe(), "deleted": counts}})
    return counts


class Retention:
    """The core's retention job and its admin route (registered by the app for every
    configuration: the route works without ``retention:``)."""

    def __init__(self, raw: Any, clock: Callable[[], float] = time.time) -> None:
        self.settings: dict[str, Any] = RETENTION.parse(raw, "retention", [])
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.rounds = 0
        """Rounds this process ran (for tests and status)."""

    @hookimpl
    def validate_config(self, config: Config, gateway: Gateway) -> list[str]:
        problems: list[str] = []
        settings = RETENTION.parse(config.raw.get("retention"), "retention", problems)
        if problems or not settings["max_age"]:
            return problems
        known = data_stores(gateway.pm)
        for name in settings["max_age"]:
            if name not in known:
                names = ", ".join(sorted(known)) or "none: load clasp-budgets, clasp-analytics or clasp-cache"
                problems.append(f"retention.max_age.{name}: no data store {name!r} (known: {names})")
        return problems

    @hookimpl
    def startup(self, app: Any) -> None:
        if self.settings["max_age"]:
            gateway = app.state.gateway
            self._stop = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(gateway), name="clasp-retention")

    @hookimpl
    async def shutdown(self) -> None:
        """Let a round in progress end (bounded), then stop: a delete cancelled half-way
        would leave its SQLite connection holding the write lock that the ledger's last
        flush needs."""
        if self._task is not None:
            self._stop.set()
            done, _ = await asyncio.wait({self._task}, timeout=SHUTDOWN_WAIT)
            if not done:
                self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    async def _loop(self, gateway: Gateway) -> None:
        while not self._stop.is_set():
            try:
                await self.run_once(gateway)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next round tries again
                log.error("retention: the round failed: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings["interval"]):
                    await self._stop.wait()

    async def run_once(self, gateway: Gateway, *, force: bool = False) -> dict[str, int]:
        """One round: for each store with a ``max_age``, delete what is older, unless
        another replica claimed this round (``force``: skip the claim). Returns the
        counts deleted by this process."""
        stores = data_stores(gateway.pm)
        counts: dict[str, int] = {}
        async with _leader(gateway) as leading:
            if not leading:
                return counts
            for name, age in self.settings["max_age"].items():
                store = stores.get(name)
                if store is None:
                    continue
                if not force and not await _claim(gateway, name, self.settings["interval"]):
                    continue
                selection = DataSelection(before=self.clock() - age, batch=self.settings["batch"])
                try:
                    counts[name] = int(await store.purge(gateway, selection))
                except Exception as exc:
                    log.error("retention: the store %r failed: %s: %s", name, type(exc).__name__, exc)
                    continue
                if counts[name]:
                    log.info("retention: %d %s record(s) older than %s deleted", counts[name], name,
                             selection.describe()["before"])
        self.rounds += 1
        return counts

    @hookimpl
    def register_routes(self, register: RegisterRoute) -> None:
        register("/admin/data/delete", delete_endpoint, methods=("POST",), name="admin_data_delete")
        register("/admin/data/retention", retention_endpoint, methods=("POST",), name="admin_data_retention")


async def _claim(gateway: Gateway, name: str, interval: float) -> bool:
    """Whether this replica runs ``name``'s round: the first to set the claim key in the
    shared state (a TTL a little under the interval). Without shared state, or during
    its outage, every replica runs it (deletes are idempotent)."""
    try:
        return bool(await gateway.state.set(CLAIM_KEY + name, b"1", ttl=interval * 0.9, if_absent=True))
    except Exception:
        return True


class _leader:
    """On PostgreSQL: hold a session advisory lock while deleting (``True`` when this
    replica got it; another replica already at work: ``False``). Elsewhere: ``True``."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._connection: Any = None
        self._context: Any = None

    async def __aenter__(self) -> bool:
        if not getattr(self.gateway, "has_database", False) or self.gateway.database.dialect != "postgresql":
            return True
        from sqlalchemy import text  # (only with a database: the core imports no SQLAlchemy without one)

        self._context = self.gateway.database.connect()
        self._connection = await self._context.__aenter__()
        got = (await self._connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LOCK_KEY})).scalar()
        return bool(got)

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is None:
            return
        from sqlalchemy import text

        try:
            await self._connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
        finally:
            await self._context.__aexit__(None, None, None)


async def delete_endpoint(request: Request) -> Response:
    """Delete every record of a key or a team (ledger, analytics, cached answers...).
    ---
    summary: Delete a key's or a team's records
    requestBody:
      content:
        application/json:
          schema:
            type: object
            properties:
              key: {type: string, description: "key id"}
              team: {type: string}
              before: {type: string, description: "only records before this date (ISO 8601)"}
    responses:
      "200": {description: "records deleted per data store"}
      "400": {description: "neither key nor team, or a bad date"}
    """
    from .errors import GatewayError, InvalidRequestError
    from .shell.admin import require_role
    from .shell.http import error_response, json_response, read_json

    try:
        principal = await require_role(request, "admin")
        body = await read_json(request, 64 * 1024)
        if not isinstance(body, dict):
            raise InvalidRequestError("expected a JSON object: {\"key\": ...} or {\"team\": ...}")
        unknown = sorted(set(body) - {"key", "team", "before"})
        if unknown:
            raise InvalidRequestError(f"unknown field(s): {', '.join(unknown)} (expected key, team, before)")
        key, team, before = body.get("key"), body.get("team"), body.get("before")
        for name, value in (("key", key), ("team", team), ("before", before)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InvalidRequestError(f"{name}: expected a non-empty string")
        if key is None and team is None:
            raise InvalidRequestError("name a key (\"key\") or a team (\"team\") whose records to delete")
        try:
            cut = parse_date(before) if before is not None else None
        except ValueError as exc:
            raise InvalidRequestError(f"before: {exc}") from None
        gateway: Gateway = request.app.state.gateway
        selection = DataSelection(before=cut, key_id=key, team=team,
                                  actor=f"admin:{principal.name or principal.key_id}")
        counts = await delete_data(gateway, selection)
    except GatewayError as exc:
        return error_response(exc, "anthropic", request.scope.get("state", {}).get("request_id"))
    return json_response({"deleted": counts, "selection": selection.describe()})


async def retention_endpoint(request: Request) -> Response:
    """Run a retention round now (every store with a ``retention.max_age``), without
    waiting for the interval; on PostgreSQL, still one replica at a time.
    ---
    summary: Run the retention job now
    responses:
      "200": {description: "records deleted per data store (empty: another replica is running it)"}
    """
    from .errors import GatewayError
    from .shell.admin import require_role
    from .shell.http import error_response, json_response

    try:
        principal = await require_role(request, "admin")
    except GatewayError as exc:
        return error_response(exc, "anthropic", request.scope.get("state", {}).get("request_id"))
    job: Retention = request.app.state.pm.get_plugin("clasp_gateway.retention")
    try:
        counts = await job.run_once(request.app.state.gateway, force=True)
    except Exception as exc:  # the database unreachable: say so, shaped
        log.error("retention: the round failed: %s: %s", type(exc).__name__, exc)
        error = GatewayError(f"the retention round failed ({type(exc).__name__}); see the gateway log", status=503,
                             error_type="api_error")
        return error_response(error, "anthropic", request.scope.get("state", {}).get("request_id"))
    audit.info("retention round run by admin:%s -> %s", principal.name or principal.key_id, counts)
    return json_response({"deleted": counts})


def register(pm: PluginManager, raw: Any) -> Retention:
    """Register the core's retention hooks on ``pm`` (once) and return them."""
    found = pm.get_plugin("clasp_gateway.retention")
    if found is None:
        found = Retention(raw)
        pm.register(found, name="clasp_gateway.retention")
    return found  # type: ignore[no-any-return]


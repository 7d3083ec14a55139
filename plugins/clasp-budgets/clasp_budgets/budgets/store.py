"""Budgets stored in the database (created through the admin API), and how every
process keeps an up-to-date copy in memory.

A request never reads the database: the runtime reads :attr:`DatabaseBudgets.specs`,
a tuple replaced whenever the table changes. A change made through one replica is
published (``budgets:specs``) so every replica reloads at once; a reload every
``RELOAD_EVERY`` seconds covers a missed message. Also here: rebuilding a period's
spend from the ledger at start-up (for state that did not survive the restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)

from clasp_gateway import StateBackend, StateUnavailable

from .periods import current_period
from .settings import BudgetSpec, spec_from

log = logging.getLogger("clasp.budgets")

METADATA = MetaData()
BUDGETS = Table(
    "budgets", METADATA,
    Column("name", Text, primary_key=True),
    Column("scope", Text, nullable=False),
    Column("match", Text),
    Column("usd", Float, nullable=False),
    Column("period", Text, nullable=False),
    Column("mode", Text, nullable=False),
    Column("lower_max_tokens", Boolean, nullable=False),
    Column("min_tokens", Integer, nullable=False),
    Column("on_outage", Text, nullable=False),
    Column("local_cap_usd", Float, nullable=False),
    Column("thresholds", JSON, nullable=False),
    Column("max_wait", Float),
    Column("created_by", Text),
    Column("updated_at", Float, nullable=False),
)
CHANNEL = "budgets:specs"
RELOAD_EVERY = 30.0
FIELDS = ("name", "scope", "match", "usd", "period", "mode", "lower_max_tokens", "min_tokens", "on_outage",
          "local_cap_usd", "thresholds", "max_wait")


def row_of(spec: BudgetSpec, who: str) -> dict[str, Any]:
    values = {f: getattr(spec, f) for f in FIELDS}
    values["thresholds"] = list(spec.thresholds)
    return {**values, "created_by": who, "updated_at": time.time()}


class DatabaseBudgets:
    """The stored budgets of one gateway, mirrored in memory."""

    def __init__(self, database: Any, state: StateBackend) -> None:
        self.database = database
        self.state = state
        self.specs: tuple[BudgetSpec, ...] = ()
        self.loaded = False
        self._task: asyncio.Task[None] | None = None
        self._subscription: Any = None

    async def load(self) -> None:
        async with self.database.connect() as conn:
            rows = (await conn.execute(select(BUDGETS).order_by(BUDGETS.c.name))).mappings().all()
        self.specs = tuple(spec_from({k: row[k] for k in FIELDS}, source="database") for row in rows)
        self.loaded = True

    async def start(self, after: Callable[[], Any]) -> None:
        """Load (once the gateway migrated its database), then keep reloading."""
        with contextlib.suppress(StateUnavailable):
            self._subscription = await self.state.subscribe(CHANNEL, lambda _: self._reload_soon())
        self._task = asyncio.get_running_loop().create_task(self._run(after), name="clasp-budgets-specs")

    async def _run(self, after: Callable[[], Any]) -> None:
        await after()
        while True:
            try:
                await self.load()
            except Exception as exc:  # the database may be down: keep the last copy
                log.warning("budgets: could not read stored budgets (%s: %s); keeping the last copy",
                            type(exc).__name__, exc)
            await asyncio.sleep(RELOAD_EVERY)

    def _reload_soon(self) -> None:
        asyncio.get_running_loop().create_task(self._quiet_load())

    async def _quiet_load(self) -> None:
        with contextlib.suppress(Exception):
            await self.load()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._subscription is not None:
            with contextlib.suppress(StateUnavailable):
                await self._subscription.close()

    async def changed(self) -> None:
        """After a write: reload here, and tell the other replicas."""
        await self.load()
        with contextlib.suppress(StateUnavailable):
            await self.state.publish(CHANNEL, "changed")

    async def upsert(self, spec: BudgetSpec, who: str, *, create: bool) -> bool:
        """Store ``spec``; returns False when ``create`` and it exists, or not ``create`` and it does not."""
        row = row_of(spec, who)
        async with self.database.begin() as conn:
            exists = (await conn.execute(select(BUDGETS.c.name).where(BUDGETS.c.name == spec.name))).first()
            if create and exists:
                return False
            if not create and not exists:
                return False
            if create:
                await conn.execute(insert(BUDGETS).values(**row))
            else:
                await conn.execute(update(BUDGETS).where(BUDGETS.c.name == spec.name).values(**row))
        await self.changed()
        return True

    async def remove(self, name: str) -> bool:
        async with self.database.begin() as conn:
            gone = (await conn.execute(delete(BUDGETS).where(BUDGETS.c.name == name))).rowcount
        await self.changed()
        return bool(gone)


LEDGER_COLUMNS = {"key": "key_id", "team": "team", "project": "project", "user": "user_id"}


async def spend_from_ledger(database: Any, scope: str, period_kind: str, now: float) -> dict[str, float]:
    """This period's spend per subject of ``scope`` (``*`` for global), from the ledger."""
    from clasp_budgets.ledger import REQUESTS

    start = current_period(period_kind, now).start
    cost = func.coalesce(func.sum(REQUESTS.c.cost_usd), 0.0)
    if scope == "global":
        query = select(cost).where(REQUESTS.c.ts >= start)
        async with database.connect() as conn:
            total = (await conn.execute(query)).scalar()
        return {"*": float(total or 0.0)}
    column = REQUESTS.c[LEDGER_COLUMNS[scope]]
    query = select(column, cost).where(REQUESTS.c.ts >= start, column.is_not(None)).group_by(column)
    async with database.connect() as conn:
        rows = (await conn.execute(query)).all()
    return {str(subject): float(total or 0.0) for subject, total in rows}

"""The ledger as a data store (``register_data_stores``): its rows deleted by age
(``retention.max_age.ledger``), or a key's or team's on demand.

Deletes go in batches (``selection.batch`` requests per statement, each in its own
transaction) so a large purge never holds a long lock on ``ledger_requests`` while
requests are being recorded; a request's attempts (``ledger_attempts``) go with it.
Before a deletion on demand the writer's queue is flushed, so rows recorded a
moment ago are deleted too rather than written after. A deletion on demand also
writes an ``audit_log`` row (``data.delete``) when the keys' tables exist.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import delete, insert, inspect, select

from clasp_gateway import DataSelection, Gateway

from .runtime import RUNTIME_PLUGIN
from .tables import ATTEMPTS, REQUESTS

log = logging.getLogger("clasp.ledger")


def _where(selection: DataSelection) -> list[Any]:
    where: list[Any] = []
    if selection.before is not None:
        where.append(REQUESTS.c.ts < selection.before)
    if selection.key_id is not None:
        where.append(REQUESTS.c.key_id == selection.key_id)
    if selection.team is not None:
        where.append(REQUESTS.c.team == selection.team)
    return where


async def purge(gateway: Gateway, selection: DataSelection) -> int:
    """Delete the ledger rows ``selection`` names; return how many requests went."""
    if not gateway.has_database:
        return 0
    runtime = gateway.pm.get_plugin(RUNTIME_PLUGIN)
    if runtime is not None and selection.actor is not None:
        await runtime.writer.flush(once=True)
    where = _where(selection)
    total = 0
    while True:
        async with gateway.database.begin() as conn:
            ids = list((await conn.execute(select(REQUESTS.c.request_id).where(*where).limit(selection.batch))
                        ).scalars())
            if not ids:
                break
            await conn.execute(delete(ATTEMPTS).where(ATTEMPTS.c.request_id.in_(ids)))
            await conn.execute(delete(REQUESTS).where(REQUESTS.c.request_id.in_(ids)))
        total += len(ids)
        if len(ids) < selection.batch:
            break
    if selection.before is not None and selection.key_id is None and selection.team is None:
        # Attempts of requests never recorded (a row refused, a crash between the two).
        while True:
            async with gateway.database.begin() as conn:
                old = select(ATTEMPTS.c.request_id).where(ATTEMPTS.c.ts < selection.before).distinct()
                orphans = list((await conn.execute(old.limit(selection.batch))).scalars())
                if orphans:
                    await conn.execute(delete(ATTEMPTS).where(ATTEMPTS.c.request_id.in_(orphans),
                                                              ATTEMPTS.c.ts < selection.before))
            if len(orphans) < selection.batch:
                break
    if selection.actor is not None:
        await _audit(gateway, selection, total)
    return total


async def _audit(gateway: Gateway, selection: DataSelection, deleted: int) -> None:
    from ..keys.tables import AUDIT

    try:
        async with gateway.database.begin() as conn:
            exists = await conn.run_sync(lambda sync: inspect(sync).has_table(AUDIT.name))
            if not exists:
                return
            await conn.execute(insert(AUDIT).values(
                ts=time.time(), actor_id=None, actor_name=selection.actor, actor_team=None, action="data.delete",
                target=f"key:{selection.key_id}" if selection.key_id else f"team:{selection.team}",
                details={**selection.describe(), "ledger_requests": deleted},
            ))
    except Exception as exc:  # the core's clasp.audit line is written whatever happens here
        log.warning("ledger: could not write the audit row of a deletion: %s: %s", type(exc).__name__, exc)

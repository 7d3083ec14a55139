"""Analytics as a data store (``register_data_stores``): quality rows
(``analytics_quality``) and feedback (``analytics_feedback``), by age
(``retention.max_age.analytics``) or a key's or team's on demand.

Feedback carries a key but no team: a team's feedback is found through the quality
row of the request it is about (deleted after it). Deletes go in batches
(``selection.batch`` rows per statement, each in its own transaction); the queued
quality rows are written first on demand, so none reappears after the deletion.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select

from clasp_gateway import DataSelection, Gateway

from .tables import FEEDBACK, QUALITY


async def _batched(gateway: Gateway, table: Any, id_column: Any, where: list[Any], batch: int) -> int:
    total = 0
    while True:
        async with gateway.database.begin() as conn:
            ids = list((await conn.execute(select(id_column).where(*where).limit(batch))).scalars())
            if ids:
                await conn.execute(delete(table).where(id_column.in_(ids)))
        total += len(ids)
        if len(ids) < batch:
            return total


async def purge(gateway: Gateway, selection: DataSelection) -> int:
    """Delete the feedback and quality rows ``selection`` names; return how many."""
    if not gateway.has_database:
        return 0
    runtime = gateway.pm.get_plugin("analytics.runtime")
    writer = getattr(runtime, "quality_rows", None)
    if writer is not None and selection.actor is not None:
        await writer.flush()
    quality: list[Any] = []
    feedback: list[Any] = []
    if selection.before is not None:
        quality.append(QUALITY.c.ts < selection.before)
        feedback.append(FEEDBACK.c.ts < selection.before)
    if selection.key_id is not None:
        quality.append(QUALITY.c.key_id == selection.key_id)
        feedback.append(FEEDBACK.c.key_id == selection.key_id)
    if selection.team is not None:
        quality.append(QUALITY.c.team == selection.team)
        feedback.append(FEEDBACK.c.request_id.in_(select(QUALITY.c.request_id).where(QUALITY.c.team == selection.team)))
    total = await _batched(gateway, FEEDBACK, FEEDBACK.c.id, feedback, selection.batch)
    return total + await _batched(gateway, QUALITY, QUALITY.c.request_id, quality, selection.batch)

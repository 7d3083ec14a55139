"""The spend ledger: one row per request and per attempt, written off the hot path.

Public to other plugins: the tables (:data:`METADATA`, :data:`REQUESTS`,
:data:`ATTEMPTS`) to query, and the Alembic branch ``ledger`` that creates them
(:data:`MIGRATIONS`). The writer is the ``record`` hook in :mod:`.plugin` (entry point
``budgets_ledger``).
"""

from __future__ import annotations

from pathlib import Path

from .tables import ATTEMPT_COLUMNS, ATTEMPTS, METADATA, REQUEST_COLUMNS, REQUESTS

MIGRATIONS = Path(__file__).parent / "migrations"
"""The Alembic version directory of the branch ``ledger``."""

__all__ = ["ATTEMPTS", "ATTEMPT_COLUMNS", "METADATA", "MIGRATIONS", "REQUESTS", "REQUEST_COLUMNS"]

"""The ``budgets_ledger`` plugin: the spend ledger's migrations, writer and reports.

Registered under the entry point ``budgets_ledger``. It registers the Alembic branch
``ledger`` with the core's storage (``register_migrations``).
"""

from __future__ import annotations

from typing import Any

from clasp_gateway import hookimpl

from . import MIGRATIONS


@hookimpl(optionalhook=True)
def register_migrations(register: Any) -> None:
    """The branch ``ledger``: ``ledger_requests`` and ``ledger_attempts``."""
    from clasp_gateway import MigrationRegistration  # type: ignore[attr-defined]  # the core's storage

    register(MigrationRegistration(name="ledger", directory=MIGRATIONS))

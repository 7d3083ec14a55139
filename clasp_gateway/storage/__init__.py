"""Records plugins keep (spend ledger, virtual keys, analytics): one database per
gateway, SQLite on one machine, PostgreSQL for a team.

Not shared state (``clasp_gateway.state``: breakers, limits, caches, all with TTLs):
these are records, queried, kept, migrated. The pieces:

- :mod:`.settings`: the ``storage:`` section (URL, pool, timeouts, ``auto_migrate``);
- :mod:`.database`: :class:`Database`, SQLAlchemy 2 async Core with bounded pools,
  SQLite in WAL mode, passwords kept out of logs and errors;
- :mod:`.migrations`: each plugin's Alembic branch (``register_migrations``), upgraded
  to its head at start-up and by ``clasp db upgrade``, safe with replicas starting
  together;
- :mod:`.cli`: ``clasp db upgrade`` and ``clasp db current``.

The gateway builds its :class:`Database` only when a plugin registered migrations or
asked for one (``gateway.database``), opens it in ``Gateway.start`` and disposes of it
in ``Gateway.close``; SQLAlchemy is not imported otherwise.
"""

from __future__ import annotations

from .database import Database, DatabaseError
from .migrations import VERSION_TABLE, MigrationError
from .settings import StorageSettings, data_dir, parse_storage_settings, storage_problems

__all__ = [
    "VERSION_TABLE", "Database", "DatabaseError", "MigrationError", "StorageSettings", "data_dir",
    "parse_storage_settings", "storage_problems",
]

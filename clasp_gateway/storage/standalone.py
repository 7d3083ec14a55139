"""The gateway's database outside a running gateway, for plugins' commands.

``clasp keys create`` (and any plugin command that works on the gateway's records) must
use the database ``clasp serve`` would use, migrated the same way: the ``storage:``
section of the same clasp.yaml, and every loaded plugin's migrations (a branch missing
from the list would make Alembic refuse the others' revisions in the version table).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .database import Database
from .settings import parse_storage_settings

if TYPE_CHECKING:
    from ..config import Config


def database_for(config: Config) -> Database:
    """The :class:`Database` ``clasp serve`` would open for ``config``: its ``storage:``
    section and the migrations of every plugin it would load (installed plugins,
    ``plugins.paths``, ``CLASP_LOAD_PLUGINS``). Not opened: ``await db.open()``
    (checks and, with ``auto_migrate``, upgrades), ``await db.dispose()`` after."""
    from .. import registrations
    from ..plugins import PluginManager

    pm = PluginManager()
    pm.load(config.plugin_paths)
    return Database(parse_storage_settings(config), registrations.migrations(pm))

"""Plugins' migrations: one Alembic branch per plugin, run by the core without an
``alembic.ini`` or ``env.py`` for anyone to write.

A plugin registers its migrations directory (``register_migrations``,
:class:`~clasp_gateway.registrations.MigrationRegistration`): each is an Alembic
branch labelled with the registration's name, whose first revision has
``down_revision = None`` and ``branch_labels = ("<name>",)``. The core builds one
Alembic ``ScriptDirectory`` per registered directory and drives Alembic's
``EnvironmentContext`` itself (what an ``env.py`` would do), so ``alembic.op`` works
in migration files as usual. Every branch goes to its head at once (``heads``), in
one transaction. Each branch records its revision in a table of its own,
``clasp_alembic_version_<name>`` (the prefix keeps clear of a team's own
``alembic_version`` in the same database): a branch whose plugin is not loaded (turned
off with ``CLASP_LOAD_PLUGINS``, or uninstalled) is then simply left alone, where one
shared table would make Alembic refuse every upgrade over a revision it cannot find.

Several replicas start together: on PostgreSQL the upgrade runs behind a
transaction-level advisory lock (:data:`LOCK_KEY`), so the first upgrades and the
others wait, then find nothing left to do; DDL is transactional there, so a failed
migration leaves nothing half-done. On SQLite the transaction begins ``IMMEDIATE``:
the write lock serialises processes the same way.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

    from ..registrations import MigrationRegistration
    from .database import Database

log = logging.getLogger("clasp.storage")
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # one line per plugin of Alembic's own

VERSION_TABLE = "clasp_alembic_version"
"""The prefix of each branch's version table (:func:`version_table`)."""

LOCK_KEY = 0x636C_6173_7000
"""The PostgreSQL advisory lock key the upgrade holds ("clasp" in ASCII, shifted)."""

_REVISION = re.compile(r"^revision\s*(?::\s*str\s*)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)


class MigrationError(RuntimeError):
    """Registered migrations cannot be run (a missing directory, a branch without its
    label, a revision id two files share, a failed migration). Names the plugin."""


def check_registrations(registrations: Sequence[MigrationRegistration]) -> None:
    """What can be checked without a database: every directory exists and holds
    revisions, and no revision id appears twice (Alembic would keep one silently)."""
    seen: dict[str, tuple[str, Path]] = {}
    for reg in registrations:
        directory = Path(reg.directory)
        if not directory.is_dir():
            raise MigrationError(f"plugin {reg.plugin!r}: register_migrations: {reg.name!r}: "
                                 f"the directory {directory} does not exist")
        files = sorted(p for p in directory.glob("*.py") if p.name != "__init__.py")
        if not files:
            raise MigrationError(f"plugin {reg.plugin!r}: register_migrations: {reg.name!r}: "
                                 f"no revision files (*.py) in {directory}")
        for path in files:
            match = _REVISION.search(path.read_text(encoding="utf-8"))
            if match is None:
                continue
            first = seen.get(match.group(1))
            if first is not None:
                raise MigrationError(f"register_migrations: revision id {match.group(1)!r} is used by "
                                     f"{first[1]} ({first[0]!r}) and {path} ({reg.plugin!r}); "
                                     "revision ids must be unique across plugins")
            seen[match.group(1)] = (reg.plugin, path)


def script_directory(registrations: Sequence[MigrationRegistration]) -> ScriptDirectory:
    """One Alembic ``ScriptDirectory`` over every registered branch, checked: each
    branch's base revision carries its registration's name as its branch label."""
    from alembic.script import ScriptDirectory

    check_registrations(registrations)
    script = ScriptDirectory(
        str(Path(__file__).parent),
        version_locations=[str(Path(r.directory).absolute()) for r in registrations],
    )
    try:
        revisions = list(script.walk_revisions())
    except Exception as exc:
        raise MigrationError(f"register_migrations: the revisions of "
                             f"{', '.join(repr(r.name) for r in registrations)} do not form valid Alembic "
                             f"branches: {exc}") from None
    for reg in registrations:
        directory = Path(reg.directory).absolute()
        bases = [r for r in revisions if r.down_revision is None and _directory_of(r) == directory]
        if not bases:
            raise MigrationError(f"plugin {reg.plugin!r}: register_migrations: {reg.name!r}: no revision in "
                                 f"{directory} has down_revision = None (the branch's first revision)")
        for base in bases:
            if reg.name not in (base._orig_branch_labels or ()):
                raise MigrationError(f"plugin {reg.plugin!r}: register_migrations: {reg.name!r}: the first "
                                     f"revision {base.revision} ({Path(base.path).name}) needs "
                                     f"branch_labels = ({reg.name!r},)")
    return script


def version_table(name: str) -> str:
    """The table where the branch ``name`` records its revision."""
    return f"{VERSION_TABLE}_{re.sub(r'[^a-z0-9_]', '_', name.lower())}"[:63]


def _directory_of(revision: Any) -> Path:
    return Path(revision.path).absolute().parent


def _branch_of(script: ScriptDirectory, revision: str, registrations: Sequence[MigrationRegistration]) -> str:
    path = _directory_of(script.get_revision(revision))
    for reg in registrations:
        if Path(reg.directory).absolute() == path:
            return reg.name
    return "?"


def _run_upgrade(connection: Any, branches: list[tuple[ScriptDirectory, str]]) -> None:
    """What an ``env.py`` does for ``alembic upgrade heads``, branch by branch, on
    ``connection`` (sync, inside the caller's transaction: Alembic then adds none of its
    own)."""
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext

    for script, table in branches:
        def steps(rev: Any, _context: Any, script: ScriptDirectory = script) -> Any:
            return script._upgrade_revs("heads", rev)

        with EnvironmentContext(Config(), script, fn=steps, destination_rev="heads") as env:
            env.configure(connection=connection, version_table=table, transactional_ddl=True)
            with env.begin_transaction():
                env.run_migrations()


def _current_heads(connection: Any, tables: list[str]) -> list[tuple[str, ...]]:
    from alembic.runtime.migration import MigrationContext

    return [tuple(MigrationContext.configure(connection, opts={"version_table": table}).get_current_heads())
            for table in tables]


async def upgrade(db: Database) -> dict[str, str | None]:
    """Upgrade every registered branch of ``db`` to its head (see the module's
    docstring for why it is safe from several processes at once)."""
    from sqlalchemy import text

    from .database import describe_error

    if not db.migrations:
        return {}
    script_directory(db.migrations)  # checks the whole set (ids unique across plugins)
    branches = [(script_directory([reg]), version_table(reg.name)) for reg in db.migrations]
    try:
        async with db.begin() as conn:
            if db.dialect == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            await conn.run_sync(_run_upgrade, branches)
    except MigrationError:
        raise
    except Exception as exc:
        raise MigrationError(f"migrating the database at {db.url} failed (nothing was changed on PostgreSQL): "
                             f"{describe_error(exc)}") from exc
    found = await current(db)
    log.info("database %s: %s", db.url, ", ".join(f"{name} at {rev}" for name, rev in found.items()))
    return found


async def current(db: Database) -> dict[str, str | None]:
    """Each registered branch's revision in ``db`` (``None``: never migrated).
    Branches of plugins not loaded now are not looked at (their tables stay as they are)."""
    if not db.migrations:
        return {}
    names = [reg.name for reg in db.migrations]
    async with db.connect() as conn:
        found = await conn.run_sync(_current_heads, [version_table(name) for name in names])
    return {name: (heads[0] if heads else None) for name, heads in zip(names, found, strict=True)}


def heads(registrations: Sequence[MigrationRegistration]) -> dict[str, str | None]:
    """Each registered branch's head revision in its files (what ``upgrade`` reaches)."""
    if not registrations:
        return {}
    script = script_directory(registrations)
    found: dict[str, str | None] = {reg.name: None for reg in registrations}
    for head in script.get_heads():
        found[_branch_of(script, head, registrations)] = head
    return found

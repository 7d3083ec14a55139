"""``clasp db upgrade`` and ``clasp db current``: the plugins' migrations by hand.

The gateway upgrades at start-up (``storage.auto_migrate``, default true); a team
that migrates as a deploy step sets ``auto_migrate: false`` and runs ``clasp db
upgrade`` once, with the same clasp.yaml and plugins as the gateway. Both commands
name the database by its URL without the password.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from .migrations import heads

if TYPE_CHECKING:
    from .database import Database


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """``clasp db {upgrade,current}``."""
    db = sub.add_parser("db", help="the database of plugins' records: upgrade, current", parents=[common])
    actions = db.add_subparsers(dest="db_command", required=True)
    actions.add_parser("upgrade", help="upgrade every plugin's tables to its latest revision", parents=[common])
    actions.add_parser("current", help="each plugin's revision in the database, and its latest", parents=[common])
    db.set_defaults(func=cmd_db)


def cmd_db(args: argparse.Namespace) -> int:
    """Run ``clasp db <action>`` on the configured database; exit 1 when it fails."""
    from ..cli import _load, _validated_app, setup_logging

    config = _load(args.config)
    setup_logging(config.server.log_level, config.server.log_format)
    gateway = _validated_app(config).starlette_app.state.gateway
    database: Database = gateway.database
    if not database.migrations:
        print(f"database {database.url}: no loaded plugin registers migrations; nothing to do")
        return 0
    try:
        if args.db_command == "upgrade":
            found = asyncio.run(_run(database, upgrade=True))
            print(f"database {database.url}: upgraded")
        else:
            found = asyncio.run(_run(database, upgrade=False))
            print(f"database {database.url}:")
    except RuntimeError as exc:  # DatabaseError, MigrationError: written for a person
        print(f"clasp: {exc}", file=sys.stderr)
        return 1
    latest = heads(database.migrations)
    for name, revision in found.items():
        head = latest.get(name)
        state = ("up to date" if revision == head else
                 f"behind: latest is {head}" if revision else f"not created: latest is {head}")
        print(f"  {name}: {revision or '-'} ({state})")
    return 0


async def _run(database: Database, *, upgrade: bool) -> dict[str, str | None]:
    from .database import DatabaseError, describe_error

    try:
        await database.check()
        if upgrade:
            return await database.upgrade()
        return await database.current()
    except RuntimeError:
        raise
    except Exception as exc:
        raise DatabaseError(f"the database at {database.url} cannot be used: {describe_error(exc)}") from None
    finally:
        await database.dispose()

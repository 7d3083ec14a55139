"""``clasp data delete --key ID | --team NAME [--before DATE]``: delete a key's or a
team's records from every data store (:mod:`clasp_gateway.retention`).

The command starts the gateway's plugins as ``clasp serve`` would (database, shared
state, cache backends: the same clasp.yaml) without serving, deletes, prints how
many records each store deleted, and stops them. The deletion is audited (actor
``cli:<user>@<host>``).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import socket
import sys
from typing import Any


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """``clasp data delete``."""
    data = sub.add_parser("data", help="records kept about requests: delete a key's or a team's", parents=[common])
    actions = data.add_subparsers(dest="data_command", required=True)
    delete = actions.add_parser("delete", help="delete every record of a key or a team (ledger, analytics, cache)",
                                parents=[common])
    who = delete.add_mutually_exclusive_group(required=True)
    who.add_argument("--key", help="the key id whose records to delete")
    who.add_argument("--team", help="the team whose records to delete")
    delete.add_argument("--before", help="only records created before this date (2026-01-01 or ISO 8601; UTC)")
    data.set_defaults(func=cmd_data)


def _actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "?"
    return f"cli:{user}@{socket.gethostname()}"


async def _delete(app: Any, selection: Any) -> dict[str, int]:
    from .retention import delete_data

    starlette = app.starlette_app
    async with starlette.router.lifespan_context(starlette):  # the plugins' start-up and shutdown
        return await delete_data(starlette.state.gateway, selection)


def cmd_data(args: argparse.Namespace) -> int:
    """Run ``clasp data delete``; exit 2 for a bad argument, 1 when a store failed."""
    from .cli import _load, _validated_app, setup_logging
    from .retention import DataSelection, parse_date

    try:
        before = parse_date(args.before) if args.before else None
    except ValueError as exc:
        print(f"clasp: --before: {exc}", file=sys.stderr)
        return 2
    config = _load(args.config)
    setup_logging("warning", config.server.log_format)
    app = _validated_app(config)
    selection = DataSelection(before=before, key_id=args.key, team=args.team, actor=_actor())
    counts = asyncio.run(_delete(app, selection))
    who = f"key {args.key}" if args.key else f"team {args.team}"
    print(f"deleted the records of {who}" + (f" before {args.before}" if args.before else "") + ":")
    for name, count in counts.items():
        print(f"  {name}: {'FAILED (see the log)' if count < 0 else count}")
    if not counts:
        print("  (no loaded plugin keeps records)")
    return 1 if any(c < 0 for c in counts.values()) else 0

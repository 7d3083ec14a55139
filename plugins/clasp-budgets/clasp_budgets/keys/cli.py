"""``clasp keys`` and ``clasp teams``: keys and teams from a shell, on the gateway's database.

They open the database ``clasp serve`` would (``clasp_gateway.database_for``: the same
clasp.yaml, every plugin's migrations applied first), go through the same checks as the
admin API (:mod:`.inputs`) and write the same audit rows (actor ``cli:<user>@<host>``).
A new key is printed once, alone on stdout (so ``KEY=$(clasp keys create ...)`` works);
everything else goes to stderr. With ``state: {backend: redis}`` a change is announced to
running gateways at once; otherwise they see it within their cache TTL (10 s by default).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from clasp_gateway import (
    Config,
    ConfigError,
    GatewayError,
    create_state,
    database_for,
    load_config,
    parse_state_settings,
)

from . import inputs
from .auth import CHANNEL
from .store import Actor, KeyStore, describe_key, describe_team

POLICY_OPTIONS = ("models", "rpm", "tpm", "rpd", "tpd", "max_concurrency", "max_budget_usd", "budget_period",
                  "expires", "regions")


def _policy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", metavar="GLOB", help="model names or globs allowed ('claude-*')")
    for name in ("rpm", "tpm", "rpd", "tpd", "max-concurrency"):
        parser.add_argument(f"--{name}", type=str, metavar="N")
    parser.add_argument("--max-budget-usd", type=str, metavar="USD")
    parser.add_argument("--budget-period", choices=inputs.PERIODS)
    parser.add_argument("--expires", metavar="WHEN", help="30d, 12h, an ISO date or time, or unix seconds")
    parser.add_argument("--regions", nargs="+", metavar="REGION")
    parser.add_argument("--metadata", metavar="JSON", help="a JSON object")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="clasp.yaml (default: $CLASP_CONFIG or ./clasp.yaml)")


def _policy_values(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name in ("models", "rpm", "tpm", "rpd", "tpd", "max_concurrency", "max_budget_usd", "budget_period",
                 "regions"):
        value = getattr(args, name, None)
        if value is not None:
            body[name] = value
    if getattr(args, "expires", None) is not None:
        body["expires_at"] = args.expires
    if getattr(args, "metadata", None) is not None:
        try:
            body["metadata"] = orjson.loads(args.metadata)
        except orjson.JSONDecodeError:
            raise GatewayError("--metadata: expected a JSON object", status=400) from None
    return body


def _actor() -> Actor:
    try:
        who = getpass.getuser()
    except Exception:
        who = "unknown"
    return Actor(None, f"cli:{who}@{socket.gethostname()}"[:160])


def _run(config_path: str | None, work: Callable[[KeyStore], Awaitable[tuple[int, dict[str, Any] | None]]]) -> int:
    """Load the config, open (and migrate) the database, run ``work``, announce its
    change; every failure a one-line message and exit code 1 (2 for a bad file)."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"clasp: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        db = database_for(config)
        try:
            await db.open()
            code, change = await work(KeyStore(db))
        finally:
            await db.dispose()
        if change is not None:
            await _announce(config, change)
        return code

    try:
        return asyncio.run(main())
    except GatewayError as exc:
        print(f"clasp: {exc.message}", file=sys.stderr)
    except RuntimeError as exc:  # DatabaseError, MigrationError: written for a person
        print(f"clasp: {exc}", file=sys.stderr)
    return 1


async def _announce(config: Config, change: dict[str, Any]) -> None:
    """Tell running gateways through shared state (Redis); nothing to tell otherwise."""
    settings = parse_state_settings(config)
    if settings.backend != "redis":
        return
    state = create_state(settings)
    try:
        await state.open()
        await state.publish(CHANNEL, orjson.dumps(change))
    except Exception as exc:
        print(f"clasp: warning: running gateways were not told ({type(exc).__name__}); "
              "they see the change within their cache TTL", file=sys.stderr)
    finally:
        await state.close()


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


# --- clasp keys ----------------------------------------------------------------------------------


def _tags(items: list[str]) -> dict[str, str] | None:
    """``--tag NAME=VALUE`` options as a mapping (None after a one-line message when one is malformed)."""
    tags: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"clasp: --tag {item!r}: expected NAME=VALUE", file=sys.stderr)
            return None
        tags[name] = value
    return tags


async def _key_id(store: KeyStore, target: str, team: str | None) -> str | None:
    """A key's id from its id or its name (an active key's, unique; ``team`` narrows the
    search); None after a one-line message when it is not found or not unique."""
    if target.startswith("key_"):
        return target
    rows, _ = await store.list_keys(name=target, team=team, status="active", limit=10)
    if not rows:
        print(f"clasp: no active key named {target!r}", file=sys.stderr)
        return None
    if len(rows) > 1:
        print(f"clasp: {len(rows)} active keys are named {target!r} ({', '.join(r['id'] for r in rows)}); "
              "give its id", file=sys.stderr)
        return None
    return str(rows[0]["id"])


KEY_CLEARABLE = (*POLICY_OPTIONS[:-2], "expires_at", "regions", "user_id", "project", "team")
"""What ``clasp keys update --clear`` may remove (a limit, the expiry, the owner, the team)."""


def keys_command(argv: list[str], config_path: str | None = None) -> int:
    """``clasp keys create|list|update|revoke``."""
    parser = argparse.ArgumentParser(prog="clasp keys", description="virtual keys on the gateway's database")
    _common(parser)
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create a key and print it (once)")
    _common(create)
    create.add_argument("--name", required=True)
    create.add_argument("--team")
    create.add_argument("--role", choices=inputs.ROLES, default="member")
    create.add_argument("--user", dest="user_id", metavar="USER_ID", help="the person the key is for")
    create.add_argument("--project")
    create.add_argument("--tag", action="append", default=[], metavar="NAME=VALUE")
    _policy_args(create)
    listing = sub.add_parser("list", help="list keys (never the keys themselves)")
    _common(listing)
    listing.add_argument("--team")
    listing.add_argument("--status", choices=("active", "revoked", "expired", "all"), default="active")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="JSON lines")
    update = sub.add_parser("update", help="change a key in place: team, role, limits, expiry, metadata... "
                                           "(--clear FIELD removes one)")
    _common(update)
    update.add_argument("key", metavar="ID|NAME")
    update.add_argument("--name", help="a new name")
    update.add_argument("--team", help="move the key to this (existing) team")
    update.add_argument("--role", choices=inputs.ROLES)
    update.add_argument("--user", dest="user_id", metavar="USER_ID")
    update.add_argument("--project")
    update.add_argument("--tag", action="append", default=[], metavar="NAME=VALUE",
                        help="the key's tags (all of them: they replace the current ones)")
    _policy_args(update)
    update.add_argument("--clear", nargs="+", default=[], choices=KEY_CLEARABLE, metavar="FIELD")
    revoke = sub.add_parser("revoke", help="revoke a key by id or by name")
    _common(revoke)
    revoke.add_argument("key", metavar="ID|NAME")
    revoke.add_argument("--team", help="when the name is used in several teams")
    args = parser.parse_args(argv)
    path = args.config or config_path

    if args.action == "create":
        tags = _tags(args.tag)
        if tags is None:
            return 2
        body: dict[str, Any] = {"name": args.name, "role": args.role, **_policy_values(args)}
        for field in ("team", "user_id", "project"):
            if getattr(args, field) is not None:
                body[field] = getattr(args, field)
        if tags:
            body["tags"] = tags

        async def create_key(store: KeyStore) -> tuple[int, dict[str, Any] | None]:
            values = inputs.parse_body(inputs.key_create(store.clock()), body, partial=False)
            key, row = await store.create_key(values, _actor())
            print(key)
            print(f"created {row['id']} ({row['name']}, team {row['team'] or '-'}, role {row['role']}): "
                  "the key above is shown this once; store it now", file=sys.stderr)
            return 0, {"key_id": row["id"]}

        return _run(path, create_key)

    if args.action == "list":
        async def list_keys(store: KeyStore) -> tuple[int, dict[str, Any] | None]:
            status = None if args.status == "all" else args.status
            rows, total = await store.list_keys(team=args.team, status=status,
                                                limit=max(1, min(args.limit, inputs.PAGE_MAX)))
            now = store.clock()
            if args.json:
                for row in rows:
                    print(orjson.dumps(describe_key(row, now)).decode())
            else:
                print(_table([(r["id"], r["name"], r["display_prefix"], r["team"], r["role"],
                               describe_key(r, now)["status"], inputs.iso(r["expires_at"]),
                               inputs.iso(r["last_used_at"])) for r in rows],
                             ("ID", "NAME", "PREFIX", "TEAM", "ROLE", "STATUS", "EXPIRES", "LAST USED")))
                if total > len(rows):
                    print(f"({len(rows)} of {total}; --limit for more)", file=sys.stderr)
            return 0, None

        return _run(path, list_keys)

    if args.action == "update":
        tags = _tags(args.tag)
        if tags is None:
            return 2
        changes: dict[str, Any] = _policy_values(args)
        for field in ("name", "team", "role", "user_id", "project"):
            if getattr(args, field) is not None:
                changes[field] = getattr(args, field)
        if args.tag:
            changes["tags"] = tags
        changes.update({"expires_at" if field == "expires" else field: None for field in args.clear})
        if not changes:
            print("clasp: nothing to change (give --team, --role, a limit, --clear FIELD...)", file=sys.stderr)
            return 2

        async def update_key(store: KeyStore) -> tuple[int, dict[str, Any] | None]:
            values = inputs.parse_body(inputs.key_update(store.clock()), changes, partial=True)
            key_id = await _key_id(store, args.key, None)
            if key_id is None:
                return 1, None
            row = await store.update_key(key_id, values, _actor())
            print(f"updated {row['id']} ({row['name']}, team {row['team'] or '-'}, role {row['role']})",
                  file=sys.stderr)
            return 0, {"key_id": row["id"]}

        return _run(path, update_key)

    async def revoke_key(store: KeyStore) -> tuple[int, dict[str, Any] | None]:
        target = await _key_id(store, args.key, args.team)
        if target is None:
            return 1, None
        row = await store.revoke_key(target, _actor())
        print(f"revoked {row['id']} ({row['name']})", file=sys.stderr)
        return 0, {"key_id": row["id"]}

    return _run(path, revoke_key)


# --- clasp teams ---------------------------------------------------------------------------------


def teams_command(argv: list[str], config_path: str | None = None) -> int:
    """``clasp teams create|list|update|delete``."""
    parser = argparse.ArgumentParser(prog="clasp teams", description="teams on the gateway's database")
    _common(parser)
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create a team (its limits cap each of its keys)")
    _common(create)
    create.add_argument("name")
    _policy_args(create)
    listing = sub.add_parser("list", help="list teams")
    _common(listing)
    listing.add_argument("--json", action="store_true", help="JSON lines")
    update = sub.add_parser("update", help="change a team's limits (--clear FIELD removes one)")
    _common(update)
    update.add_argument("name")
    _policy_args(update)
    update.add_argument("--clear", nargs="+", default=[], choices=[*POLICY_OPTIONS[:-2], "expires_at", "regions"],
                        metavar="FIELD")
    delete = sub.add_parser("delete", help="delete a team without active keys")
    _common(delete)
    delete.add_argument("name")
    args = parser.parse_args(argv)
    path = args.config or config_path

    async def work(store: KeyStore) -> tuple[int, dict[str, Any] | None]:
        actor = _actor()
        if args.action == "create":
            values = inputs.parse_body(inputs.team_create(store.clock()), {"name": args.name, **_policy_values(args)},
                                       partial=False)
            row = await store.create_team(values, actor)
            print(f"created team {row['name']}", file=sys.stderr)
            return 0, None
        if args.action == "list":
            rows, _ = await store.list_teams(limit=inputs.PAGE_MAX)
            if args.json:
                for row, count in rows:
                    print(orjson.dumps(describe_team(row, count)).decode())
            else:
                print(_table([(r["name"], n, ",".join(r["models"] or []) or "*", r["rpm"], r["max_budget_usd"],
                               r["budget_period"]) for r, n in rows],
                             ("TEAM", "ACTIVE KEYS", "MODELS", "RPM", "BUDGET USD", "PERIOD")))
            return 0, None
        name = inputs.check_team_name(args.name)
        if args.action == "update":
            body = _policy_values(args)
            body.update({field: None for field in args.clear})
            values = inputs.parse_body(inputs.team_update(store.clock()), body, partial=True)
            await store.update_team(name, values, actor)
            print(f"updated team {name}", file=sys.stderr)
            return 0, {"team": name}
        await store.delete_team(name, actor)
        print(f"deleted team {name}", file=sys.stderr)
        return 0, {"team": name}

    return _run(path, work)

"""``clasp export``: the ledger's request rows, or a cohort view, to a file or stdout.

    clasp export --format parquet --since 2026-11-01 --team platform -o november.parquet
    clasp export --cohort first_seen_week --format csv

The same filters as the admin API (``--since``, ``--until``, ``--provider``, ``--model``,
``--deployment``, ``--key``, ``--team``, ``--project``, ``--class``, ``--tag k=v``,
``--status ok|error``) and the same streamed writers: rows go out a batch at a time. It
reads the database of ``storage:`` in clasp.yaml directly (no gateway needs to run).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, BinaryIO

from clasp_gateway import ConfigError, Database, GatewayError, load_config, parse_storage_settings

from . import export
from .cohorts import ENTITIES, VIEWS, cohorts
from .filters import DIMENSIONS, parse_filters
from .settings import parse_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clasp export", description="export the spend ledger or a cohort view")
    parser.add_argument("--config", "-c", help="path to clasp.yaml (default: $CLASP_CONFIG or ./clasp.yaml)")
    parser.add_argument("--format", "-f", default="csv", choices=list(export.FORMATS))
    parser.add_argument("--output", "-o", default="-", help="file to write (default: stdout)")
    parser.add_argument("--cohort", choices=list(VIEWS), help="a cohort view instead of the request rows")
    parser.add_argument("--entity", default="key", choices=list(ENTITIES), help="who --cohort first_seen_week groups")
    parser.add_argument("--since", help="unix seconds or ISO 8601 (default: 7 days before --until)")
    parser.add_argument("--until", help="unix seconds or ISO 8601 (default: now)")
    for name in DIMENSIONS:
        parser.add_argument(f"--{name}", dest=f"dim_{name}")
    parser.add_argument("--tag", action="append", default=[], help="name=value (repeatable)")
    parser.add_argument("--status", choices=["ok", "error"])
    return parser


def export_command(argv: list[str], config_path: str) -> int:
    """Run ``clasp export``; exit 0, 1 (the database failed) or 2 (bad arguments or file)."""
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config or config_path)
        settings = parse_settings(config)
        database = Database(parse_storage_settings(config))
    except ConfigError as exc:
        print(f"clasp export: {exc}", file=sys.stderr)
        return 2
    params: dict[str, Any] = {"since": args.since, "until": args.until, "tag": args.tag, "status": args.status}
    params.update({name: getattr(args, f"dim_{name}") for name in DIMENSIONS})
    try:
        filters = parse_filters(params, max_range_days=settings.dashboard.max_range_days)
        export.check_format(args.format)
    except GatewayError as exc:
        print(f"clasp export: {exc.message}", file=sys.stderr)
        return 2
    out: BinaryIO = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
    try:
        return asyncio.run(_run(database, filters, args, settings, out))
    finally:
        if out is not sys.stdout.buffer:
            out.close()


async def _run(database: Database, filters: Any, args: argparse.Namespace, settings: Any, out: BinaryIO) -> int:
    try:
        if args.cohort:
            view = await cohorts(database, filters, args.cohort, args.entity)
            columns = tuple(view["rows"][0]) if view["rows"] else ("value",)
            chunks = export.encode_rows(args.format, columns, view["rows"])
        else:
            batches = export.rows(database, filters, batch=settings.export.batch_rows, limit=settings.export.max_rows)
            chunks = export.encode(args.format, batches)
        async for chunk in chunks:
            out.write(chunk)
        out.flush()
        return 0
    except GatewayError as exc:
        print(f"clasp export: {exc.message}", file=sys.stderr)
        return 2
    except Exception as exc:  # the database: named by its safe URL, never its password
        print(f"clasp export: the database at {database.url} failed: {type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        await database.dispose()

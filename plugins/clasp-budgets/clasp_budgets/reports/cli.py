"""``clasp report``: spend, projections and savings from the ledger, on the command line.

```
clasp report                                   # spend by provider and model
clasp report spend --by team,project --bucket day --since 2026-12-01
clasp report spend --filter team=core --filter tag:feature=review --csv
clasp report projection --by key               # to the end of the day, week, month
clasp report savings --since 2026-11-01 --json
```

It reads the database clasp.yaml's ``storage:`` names (``--config``, else
``$CLASP_CONFIG``, else ./clasp.yaml), with the operator's rights: everything.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson

from clasp_gateway import ConfigError, Database, load_config, parse_storage_settings, redact

from .filters import BUCKETS, ReportError, Scope
from .projection import PERIODS, projection
from .render import table, to_csv
from .routes import static_budgets
from .savings import savings
from .spend import METRICS, spend


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clasp report", description="spend reports from the ledger")
    parser.add_argument("report", nargs="?", choices=("spend", "projection", "savings"), default="spend")
    parser.add_argument("--config", "-c", help="path to clasp.yaml")
    parser.add_argument("--by", help="comma list of dimensions (provider, model, deployment, public_model, key, "
                                     "team, project, user, request_class, region, tag:NAME)")
    parser.add_argument("--bucket", choices=BUCKETS)
    parser.add_argument("--since", help="unix seconds or an ISO date (UTC)")
    parser.add_argument("--until")
    parser.add_argument("--filter", action="append", default=[], metavar="DIMENSION=VALUE")
    parser.add_argument("--period", choices=PERIODS, help="projection: one period (default: all)")
    parser.add_argument("--min-requests", type=int, default=20, help="savings: requests a rate needs (default 20)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true")
    output.add_argument("--csv", action="store_true")
    return parser


def _scope(args: argparse.Namespace) -> Scope:
    params: dict[str, str] = {}
    for item in args.filter:
        name, sep, value = item.partition("=")
        if not sep:
            raise ReportError(f"--filter: expected DIMENSION=VALUE, got {item!r}")
        params[name.strip()] = value
    if args.report == "spend":
        params["by"] = args.by if args.by is not None else "provider,model"
    elif args.by:
        params["by"] = args.by
    for name in ("bucket", "since", "until"):
        if getattr(args, name):
            params[name] = getattr(args, name)
    return Scope.parse(params)


async def _run(database: Database, args: argparse.Namespace, scope: Scope, budgets: dict[Any, float]) -> Any:
    try:
        async with database.connect() as conn:
            if args.report == "spend":
                return await spend(conn, scope)
            if args.report == "projection":
                return await projection(conn, scope, time.time(), (args.period,) if args.period else PERIODS, budgets)
            return await savings(conn, scope, min_requests=args.min_requests)
    finally:
        await database.dispose()


def _print(args: argparse.Namespace, scope: Scope, result: dict[str, Any]) -> None:
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return
    emit = to_csv if args.csv else table
    if args.report == "spend":
        dims = (["bucket"] if scope.bucket else []) + [d for n in scope.by for d in ([n, "key_name"] if n == "key" else [n])]
        columns = [*dims, *METRICS]
        rows = result["groups"] or [result["total"]]
        print(emit(rows, columns if result["groups"] else list(METRICS)))
        if not args.csv and result["groups"]:
            print(f"\ntotal: {result['total']['requests']} request(s), ${result['total']['cost_usd']:.6f}")
    elif args.report == "projection":
        rows = []
        for period in result["periods"]:
            rows.append({"period": period["period"], "group": "(all)", "spent_usd": period["spent_usd"],
                         "projected_usd": period["projected_usd"], "elapsed": period["elapsed_fraction"]})
            for group in period["groups"]:
                label = ",".join(f"{n}={group.get(n)}" for n in scope.by)
                rows.append({"period": period["period"], "group": label, "spent_usd": group["spent_usd"],
                             "projected_usd": group["projected_usd"], "budget_usd": group.get("budget_usd"),
                             "over": group.get("projected_over_budget")})
        print(emit(rows, ["period", "group", "spent_usd", "projected_usd", "elapsed", "budget_usd", "over"]))
        if not args.csv:
            print(f"\nmethod: {result['method']}")
    else:
        rows = [{"kind": s["kind"], "saving_usd": s["saving_usd"], "suggestion": s["text"]}
                for s in result["cheaper_models"]]
        rows.append({"kind": "cache", "saving_usd": result["cache"]["saving_usd"], "suggestion": result["cache"]["text"]})
        print(emit(rows, ["kind", "saving_usd", "suggestion"]))


def main(argv: list[str], config_path: str) -> int:
    """``clasp report [spend|projection|savings] ...``; exit 1 on an error a person can fix."""
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config or config_path)
        scope = _scope(args)
        database = Database(parse_storage_settings(config))
        result = asyncio.run(_run(database, args, scope, static_budgets(config)))
    except (ReportError, ConfigError) as exc:
        print(f"clasp report: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the database: unreachable, no ledger yet...
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        print(redact(f"clasp report: cannot read the ledger: {type(exc).__name__}: {first}"), file=sys.stderr)
        return 1
    _print(args, scope, result)
    return 0

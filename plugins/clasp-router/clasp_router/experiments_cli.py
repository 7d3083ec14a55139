"""An experiment's report on the command line and over the admin API.

```
clasp report experiment NAME [--since DATE] [--min-requests N] [--json]
clasp experiment report NAME ...           (the same)
clasp experiment list
GET /admin/experiments                      (admin)
GET /admin/experiments/{name}?since=...     (admin)
```

The command reads the database clasp.yaml's ``storage:`` names, with the operator's
rights; the route needs an admin key.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from clasp_gateway import (
    ConfigError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    database_for,
    error_response,
    json_response,
    load_config,
    redact,
    require_role,
)

from .experiments import Experiment, parse_experiments
from .experiments_report import MIN_REQUESTS, ReportUnavailable, render, report


def parse_since(value: str | None) -> float:
    """Unix seconds or an ISO date/time (UTC); ``None``: everything."""
    if value is None or value == "":
        return 0.0
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"since: expected unix seconds or an ISO date, got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def main(argv: list[str], config_path: str) -> int:
    """``clasp experiment list | report NAME``: 0 ok, 1 unknown experiment or no ledger, 2 usage."""
    parser = argparse.ArgumentParser(prog="clasp experiment", description="compare an experiment's arms")
    parser.add_argument("action", choices=("report", "list"))
    parser.add_argument("name", nargs="?")
    parser.add_argument("--config", "-c", default=None)
    parser.add_argument("--since", help="unix seconds or an ISO date (UTC); default: everything")
    parser.add_argument("--min-requests", type=int, default=MIN_REQUESTS)
    parser.add_argument("--json", action="store_true")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        config = load_config(args.config or config_path)
        experiments = parse_experiments(config)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    if args.action == "list":
        for exp in experiments.values():
            print(f"{exp.name}: route {exp.route}, candidate {exp.candidate}, {exp.mode}"
                  + (f" {exp.weight:g}" if exp.mode == "split" else f" rate {exp.shadow_rate:g}"))
        return 0
    chosen = experiments.get(args.name or "")
    if chosen is None:
        print(f"clasp experiment: no experiment named {args.name!r} (experiments: "
              f"{', '.join(experiments) or 'none under experiments:'})", file=sys.stderr)
        return 1
    try:
        since = parse_since(args.since)
    except ValueError as exc:
        print(f"clasp experiment: {exc}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_run(config, chosen, since, args.min_requests))
    except ReportUnavailable as exc:
        print(f"clasp experiment: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 (a database that cannot be reached: say so, no traceback)
        print(f"clasp experiment: cannot read the database: {redact(str(exc))}", file=sys.stderr)
        return 1
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() if args.json else render(result))
    return 0


def report_main(argv: list[str], config_path: str) -> int:
    """``clasp report experiment NAME ...``: the same as ``clasp experiment report NAME ...``."""
    return main(["report", *argv], config_path)


async def _run(config: Any, exp: Experiment, since: float, min_requests: int) -> dict[str, Any]:
    db = database_for(config)
    try:
        async with db.connect() as conn:
            return await report(conn, exp, since=since, min_requests=min_requests)
    finally:
        await db.dispose()


async def list_endpoint(request: Request) -> Response:
    """The configured experiments (admin).
    ---
    summary: The experiments configured in clasp.yaml
    responses:
      200: {description: "each experiment: name, route, candidate, mode (split or shadow), weight, sticky, shadow_rate"}
      401: {description: "no key, or a wrong one"}
      403: {description: "a key that is not admin"}
    """
    try:
        await require_role(request, "admin")
        experiments = parse_experiments(request.app.state.gateway.config)
    except GatewayError as exc:
        return error_response(exc, "anthropic")
    return json_response({"experiments": [
        {"name": e.name, "route": e.route, "candidate": e.candidate, "mode": e.mode, "weight": e.weight,
         "sticky": e.sticky, "shadow_rate": e.shadow_rate} for e in experiments.values()]})


async def report_endpoint(request: Request) -> Response:
    """An experiment's comparison report (admin).
    ---
    summary: "An experiment's comparison report: success, feedback, latency and cost per arm, with a verdict"
    parameters:
      - {name: name, in: path, description: "the experiment's name in clasp.yaml"}
      - {name: since, in: query, description: "only requests after this time: unix seconds or an ISO date (UTC)"}
      - {name: min_requests, in: query, description: "requests per arm before a verdict (1 to 1000000)", schema: {type: integer}}
    responses:
      200: {description: "the report"}
      400: {description: "a malformed since or min_requests"}
      401: {description: "no key, or a wrong one"}
      403: {description: "a key that is not admin"}
      404: {description: "no experiment of that name"}
      503: {description: "the ledger cannot be read"}
    """
    try:
        await require_role(request, "admin")
        gateway = request.app.state.gateway
        name = request.path_params["name"]
        exp = parse_experiments(gateway.config).get(name)
        if exp is None:
            raise NotFoundError(f"no experiment named {name!r}")
        try:
            since = parse_since(request.query_params.get("since"))
            min_requests = int(request.query_params.get("min_requests", MIN_REQUESTS))
        except ValueError as exc:
            raise InvalidRequestError(f"{exc}") from None
        if not 1 <= min_requests <= 1_000_000:
            raise InvalidRequestError("min_requests: expected an integer between 1 and 1000000")
        try:
            async with gateway.database.connect() as conn:
                result = await report(conn, exp, since=since, min_requests=min_requests)
        except ReportUnavailable as exc:
            raise GatewayError(str(exc), status=503, error_type="api_error") from None
    except GatewayError as exc:
        return error_response(exc, "anthropic")
    return json_response(result)

"""The admin analytics API, what the dashboard reads: an admin sees everything, a
team_admin its own team only (:func:`.access.scoped` forces the ``team`` filter).

Every endpoint takes the filters of :mod:`.filters` as query parameters and answers
JSON, except the exports, which stream. Nothing here carries a key or a secret: keys
appear by name (and by ``key_id``, a digest prefix, in exports), never by value.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from clasp_gateway import GatewayError, InvalidRequestError, json_response

from . import cohorts as cohort_views
from . import export, reports
from .access import require_viewer, scoped
from .filters import DIMENSIONS, Filters, parse_filters
from .quality_report import quality
from .scrape import runtime_of

PREFIX = "/admin/analytics"


async def _prepare(request: Request) -> tuple[Any, Filters]:
    runtime = runtime_of(request)
    principal = await require_viewer(request)
    if runtime.database is None:
        raise GatewayError("analytics needs the gateway's database (storage:)", status=503, error_type="api_error")
    if not runtime.has_ledger:
        raise GatewayError("analytics reads the spend ledger: load clasp-budgets' ledger plugin (budgets_ledger)",
                           status=503, error_type="api_error")
    filters = parse_filters(request.query_params, max_range_days=runtime.settings.dashboard.max_range_days)
    return runtime, scoped(filters, principal)


async def summary_endpoint(request: Request) -> Response:
    """Totals over a range.
    ---
    summary: Volume, tokens, cost, errors, latency percentiles, cache hits and savings
    parameters: [{name: since, in: query}, {name: until, in: query}, {name: model, in: query},
                 {name: provider, in: query}, {name: team, in: query}, {name: key, in: query},
                 {name: project, in: query}, {name: class, in: query}, {name: tag, in: query}]
    responses: {200: {description: "{filters, totals}"}, 401: {description: no admin key}}
    """
    runtime, filters = await _prepare(request)
    return json_response(await reports.summary(runtime.database, filters))


async def timeseries_endpoint(request: Request) -> Response:
    """Totals per time bucket.
    ---
    summary: Volume, tokens, cost, errors, p50/p95 latency, cache hits per bucket
    parameters: [{name: bucket, in: query, description: "hour, day or week (default: about 200 points)"}]
    responses: {200: {description: "{filters, bucket_seconds, points}"}, 401: {description: no admin key}}
    """
    runtime, filters = await _prepare(request)
    bucket = request.query_params.get("bucket")
    if bucket not in (None, "", *reports.BUCKETS):
        raise InvalidRequestError(f"bucket: expected one of {', '.join(reports.BUCKETS)}")
    return json_response(await reports.timeseries(runtime.database, filters, bucket or None))


async def breakdown_endpoint(request: Request) -> Response:
    """Totals per value of one dimension.
    ---
    summary: Spend and volume by model, provider, deployment, key, team, project or class
    parameters: [{name: by, in: query, required: true}]
    responses: {200: {description: "{filters, by, rows}"}, 401: {description: no admin key}}
    """
    runtime, filters = await _prepare(request)
    by = request.query_params.get("by", "model")
    if by not in DIMENSIONS:
        raise InvalidRequestError(f"by: expected one of {', '.join(DIMENSIONS)}")
    return json_response(await reports.breakdown(runtime.database, filters, by))


async def dimensions_endpoint(request: Request) -> Response:
    """The values of each dimension in the range (the dashboard's filter menus).
    ---
    summary: Distinct providers, models, deployments, keys, teams, projects, classes and tags
    responses: {200: {description: "{dimension: [values]}"}, 401: {description: no admin key}}
    """
    runtime, filters = await _prepare(request)
    return json_response(await reports.dimension_values(runtime.database, filters))


async def quality_endpoint(request: Request) -> Response:
    """Quality per model, route and class, with feedback.
    ---
    summary: Success, truncation, invalid tool JSON, retried conversations and feedback per model
    responses: {200: {description: "{filters, rows}"}, 401: {description: no admin key}}
    """
    runtime, filters = await _prepare(request)
    return json_response(await quality(runtime.database, filters))


async def cohorts_endpoint(request: Request) -> Response:
    """Cohort views.
    ---
    summary: By key, team, project or user; or by first-seen week (retention and spend)
    parameters: [{name: by, in: query}, {name: entity, in: query}, {name: format, in: query,
                 description: "json (default), csv, jsonl or parquet"}]
    responses: {200: {description: the cohort rows}, 401: {description: no admin key}}
    """
    runtime, filters = await _prepare(request)
    by = request.query_params.get("by", "key")
    entity = request.query_params.get("entity", "key")
    fmt = request.query_params.get("format", "json")
    view = await cohort_views.cohorts(runtime.database, filters, by, entity)
    if fmt == "json":
        return json_response(view)
    export.check_format(fmt)
    columns = tuple(view["rows"][0]) if view["rows"] else ("value",)
    return _download(export.encode_rows(fmt, columns, view["rows"]), fmt, f"cohorts-{by}")


async def export_endpoint(request: Request) -> Response:
    """The ledger's request rows, streamed.
    ---
    summary: Export requests as CSV, JSON lines or Parquet (streamed)
    parameters: [{name: format, in: query, description: "csv (default), jsonl or parquet"}]
    responses: {200: {description: the rows}, 401: {description: no admin key}}
    """
    runtime, filters = await _prepare(request)
    fmt = export.check_format(request.query_params.get("format", "csv"))
    settings = runtime.settings.export
    batches = export.rows(runtime.database, filters, batch=settings.batch_rows, limit=settings.max_rows)
    return _download(export.encode(fmt, batches), fmt, "requests")


def _download(body: Any, fmt: str, name: str) -> StreamingResponse:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return StreamingResponse(body, media_type=export.FORMATS[fmt], headers={
        "content-disposition": f'attachment; filename="clasp-{name}-{stamp}.{export.EXTENSIONS[fmt]}"',
        "cache-control": "no-store", "x-content-type-options": "nosniff"})


def register(register_route: Callable[..., Any]) -> None:
    """Add the admin analytics routes."""
    for name, endpoint in (("summary", summary_endpoint), ("timeseries", timeseries_endpoint),
                           ("breakdown", breakdown_endpoint), ("dimensions", dimensions_endpoint),
                           ("quality", quality_endpoint), ("cohorts", cohorts_endpoint),
                           ("export", export_endpoint)):
        register_route(f"{PREFIX}/{name}", endpoint, methods=["GET"])

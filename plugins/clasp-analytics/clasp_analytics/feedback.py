"""``POST /v1/feedback``: what a user or a pipeline says about an answer.

```json
{"request_id": "req_3f…", "score": 1, "comment": "fixed it",
 "metrics": {"tests_passed": true, "pr_merged": false, "review_rounds": 2}}
```

Authenticated with the key that made the request (its ``key_id`` must match the
request's) or an admin key; the request must be known (the gateway served it, within
``analytics.feedback.max_age``). Several feedbacks per request are kept (a score now,
``pr_merged`` tomorrow). Stored in ``analytics_feedback`` and joined, in
``/admin/analytics/quality``, to the model and route that served the request.

Each stored feedback is also sent to the ``record`` hook as a ``kind: "feedback"``
event (``request_id``, ``score``, ``metrics``, ``public_model``, ``model``,
``deployment``, ``key_id``, ``by_admin``, ``time``; never the comment): how other
plugins learn from it without reading this plugin's tables (clasp-router's learned
routing turns a low score into a failure of the model that answered).
"""

from __future__ import annotations

import math
import re
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from clasp_gateway import (
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RequestContext,
    authenticate,
    json_response,
    read_json,
)

from .tables import FEEDBACK, QUALITY

if TYPE_CHECKING:
    from .runtime import AnalyticsRuntime

MAX_BODY = 64 * 1024
METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
MAX_SCORE = 1_000_000.0


def parse_feedback(body: Any, runtime: AnalyticsRuntime) -> tuple[str, float | None, str | None, dict[str, Any]]:
    """The checked fields, or a 400 naming the field."""
    settings = runtime.settings.feedback
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object")
    unknown = sorted(set(body) - {"request_id", "score", "comment", "metrics"})
    if unknown:
        raise InvalidRequestError(f"{unknown[0]}: unknown field (expected request_id, score, comment, metrics)")
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id or len(request_id) > 128:
        raise InvalidRequestError("request_id: required, the request-id header of the answer (at most 128 characters)")
    score = body.get("score")
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score) \
                or abs(score) > MAX_SCORE:
            raise InvalidRequestError(f"score: expected a number between -{MAX_SCORE:g} and {MAX_SCORE:g}")
        score = float(score)
    comment = body.get("comment")
    if comment is not None:
        if not isinstance(comment, str):
            raise InvalidRequestError("comment: expected a string")
        if len(comment) > settings.max_comment_chars:
            raise InvalidRequestError(f"comment: at most {settings.max_comment_chars} characters")
    metrics = body.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise InvalidRequestError("metrics: expected an object of name: number or boolean")
    if len(metrics) > settings.max_metrics:
        raise InvalidRequestError(f"metrics: at most {settings.max_metrics} metrics")
    for name, value in metrics.items():
        if not METRIC_NAME.match(name):
            raise InvalidRequestError(f"metrics.{name[:64]}: a metric name is a letter or _ then up to 63 of "
                                      "letters, digits, _ . -")
        if not isinstance(value, bool) and not (isinstance(value, int | float) and math.isfinite(value)
                                                and abs(value) <= MAX_SCORE):
            raise InvalidRequestError(f"metrics.{name}: expected a number or a boolean")
    if score is None and not comment and not metrics:
        raise InvalidRequestError("give at least one of score, comment, metrics")
    return request_id, score, comment, metrics


async def find_request(runtime: AnalyticsRuntime, request_id: str) -> dict[str, Any] | None:
    """The served request (its key and route): from this plugin's quality rows (after
    writing this process's queue: the answer may have just ended), else from the ledger."""
    database = runtime.database
    tables = [QUALITY]
    if runtime.has_ledger:
        from .reports import ledger

        tables.append(ledger())
    for table in tables:
        c = table.c
        query = select(c.request_id, c.ts, c.key_id, c.public_model, c.model, c.deployment).where(
            c.request_id == request_id)
        for attempt in range(2):
            async with database.connect() as conn:
                row = (await conn.execute(query)).mappings().first()
            if row is not None:
                return dict(row)
            if table is QUALITY and attempt == 0 and runtime.quality_rows is not None and runtime.quality_rows.pending:
                await runtime.quality_rows.flush()
            else:
                break
    return None


async def feedback_endpoint(request: Request) -> Response:
    """Store one feedback; answers the stored id and the model that served the request."""
    from .scrape import runtime_of

    runtime = runtime_of(request)
    principal = await authenticate(request)
    if not runtime.settings.feedback.enabled:
        raise NotFoundError("feedback is turned off (analytics.feedback.enabled: false)")
    if runtime.database is None:
        raise GatewayError("feedback needs the gateway's database (storage:)", status=503, error_type="api_error")
    request_id, score, comment, metrics = parse_feedback(await read_json(request, MAX_BODY), runtime)
    served = await find_request(runtime, request_id)
    admin = principal.role == "admin"
    # The same answer for "unknown" and "someone else's": ids are not for probing.
    if served is None or (not admin and served["key_id"] != principal.key_id):
        raise NotFoundError(f"no request {request_id} made with this key (feedback needs the key that made "
                            "the request, or an admin key)")
    now = time.time()
    if now - float(served["ts"]) > runtime.settings.feedback.max_age:
        raise PermissionDeniedError(f"request {request_id} is older than analytics.feedback.max_age")
    async with runtime.database.begin() as conn:
        result = await conn.execute(FEEDBACK.insert().values(
            request_id=request_id, ts=now, key_id=principal.key_id, by_admin=admin, score=score,
            comment=comment, metrics=metrics))
        feedback_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
    if runtime.metrics is not None:
        runtime.metrics.feedback.labels(runtime.metrics.guard("model", served["public_model"])).inc()
    ctx = RequestContext(request_id, "anthropic", served["public_model"] or "", False, principal=principal)
    await runtime.gateway.record(ctx, {  # never raises: each plugin's failure is counted and logged
        "kind": "feedback", "request_id": request_id, "score": score, "metrics": metrics,
        "public_model": served["public_model"], "model": served["model"], "deployment": served["deployment"],
        "key_id": served["key_id"], "by_admin": admin, "time": now})
    return json_response({"id": feedback_id, "request_id": request_id, "public_model": served["public_model"],
                          "model": served["model"], "deployment": served["deployment"]}, status=201)

"""One app's ledger: its writer and the per-request hooks that feed it.

Registered in the app's plugin manager at start-up (one runtime per app: tests run
several gateways in one process), unregistered at shutdown after the flush.
"""

from __future__ import annotations

from typing import Any

from clasp_gateway import CanonicalRequest, Database, RequestContext, hookimpl, request_fingerprint

from .rows import attempt_row, request_row
from .settings import LedgerSettings
from .writer import LedgerWriter

PROMPT_HASH = "clasp.ledger.prompt_hash"
"""``ctx.state`` key: the request's fingerprint (the core's ``request_fingerprint(...).prompt``,
shared with analytics' retry detection)."""
_ATTEMPTS = "clasp.ledger.attempts"
"""``ctx.state`` key: attempt rows queued for this request so far."""

RUNTIME_PLUGIN = "clasp_budgets.ledger.runtime"


class LedgerRuntime:
    """The ``before_call`` and ``record`` hooks of one app's ledger."""

    def __init__(self, writer: LedgerWriter, settings: LedgerSettings, database: Database) -> None:
        self.writer = writer
        self.settings = settings
        self.database = database

    @hookimpl(tryfirst=True)
    def before_call(self, ctx: RequestContext, request: CanonicalRequest) -> None:
        """Fingerprint the request before any plugin (a cache) answers it."""
        if self.settings.prompt_hash and PROMPT_HASH not in ctx.state:
            found = request_fingerprint(ctx, request)
            ctx.state[PROMPT_HASH] = found.prompt if found is not None else None

    @hookimpl
    def record(self, ctx: RequestContext, event: dict[str, Any]) -> None:
        """Queue the row of an ``attempt`` or ``request`` event (no I/O here)."""
        kind = event.get("kind")
        if kind == "attempt":
            number = ctx.state.get(_ATTEMPTS, 0) + 1
            ctx.state[_ATTEMPTS] = number
            self.writer.add("a", attempt_row(event, number))
        elif kind == "request":
            self.writer.add("r", request_row(event, ctx.state.get(PROMPT_HASH)))

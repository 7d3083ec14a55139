"""Spend reports from the ledger: spend by any dimension and time bucket
(:mod:`.spend`), projection to the end of each budget period (:mod:`.projection`),
savings suggestions (:mod:`.savings`); served as ``clasp report`` (:mod:`.cli`) and
the admin API (:mod:`.routes`: ``/admin/usage``, ``/admin/reports/...``)."""

from __future__ import annotations

from .filters import BUCKETS, DIMENSIONS, ReportError, Scope
from .projection import METHOD, PERIODS, period_bounds, projection
from .savings import cheaper_models, repeated_prompts, savings
from .spend import spend

__all__ = [
    "BUCKETS", "DIMENSIONS", "METHOD", "PERIODS", "ReportError", "Scope", "cheaper_models", "period_bounds",
    "projection", "repeated_prompts", "savings", "spend",
]

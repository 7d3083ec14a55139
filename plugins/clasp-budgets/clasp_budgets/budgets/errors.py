"""The answers a refused request gets, shaped like the providers' own.

An exhausted budget must not look retryable: Claude Code (and the SDKs) retry 429 and
5xx answers with backoff, which would hammer a budget that resets next month. So on
the Anthropic route it is ``402 billing_error`` (what Anthropic answers when credit
runs out), on the OpenAI route ``429 insufficient_quota`` (what OpenAI answers), both
with ``x-should-retry: false`` (which both SDKs obey) and a message naming the budget,
what was spent and when it resets. A budget that is only *busy* (every dollar left is
reserved by requests in flight, and ``max_wait`` passed) is a plain retryable 429; a
budget whose state is unreachable under ``fail_closed`` is a 503.
"""

from __future__ import annotations

from typing import Any

from clasp_gateway import GatewayError, RateLimitError

from .reservations import BudgetRefused


class BudgetExhaustedError(GatewayError):
    """A hard budget has no room for this request until it resets."""

    def __init__(self, message: str, *, api: str, headers: dict[str, str]) -> None:
        if api == "openai":
            super().__init__(message, status=429, error_type="insufficient_quota", headers=headers, retryable=False)
        else:
            super().__init__(message, status=402, error_type="billing_error", headers=headers, retryable=False)

    def openai_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": "insufficient_quota", "param": None,
                          "code": "insufficient_quota"}}


def describe(refused: BudgetRefused) -> str:
    slot = refused.slot
    if slot is None:
        return "a budget"
    spec = slot.spec
    who = "" if spec.scope == "global" else f" ({spec.scope} {slot.subject})" if spec.source != "key" else ""
    return f"budget {spec.name!r}{who}, {spec.period} ${spec.usd:,.2f}"


def refusal_error(refused: BudgetRefused, api: str, now: float) -> GatewayError:
    """The client's answer for a refusal (``now``: unix seconds, for retry-after)."""
    what = describe(refused)
    slot = refused.slot
    if refused.why == "exhausted" and slot is not None:
        resets = slot.period.resets_at()
        spent = refused.standing.spent if refused.standing is not None else slot.spec.usd
        when = f"it resets at {resets}" if resets else "it does not reset (a total budget; an admin can raise it)"
        headers = {"x-should-retry": "false", "x-clasp-budget": slot.spec.name}
        if resets and slot.period.end is not None:
            headers["x-clasp-budget-resets"] = resets
            headers["retry-after"] = str(max(1, int(slot.period.end - now)))
        else:
            headers["retry-after"] = str(86400 * 365)
        return BudgetExhaustedError(
            f"{what} is exhausted: ${spent:,.4f} spent, not enough left for this request; {when}",
            api=api, headers=headers)
    if refused.why == "busy":
        return RateLimitError(
            f"{what}: what is left is reserved by requests in flight; waited {refused.waited:.0f}s, try again shortly",
            headers={"retry-after": "5", "x-clasp-budget": slot.spec.name if slot else ""})
    return GatewayError(
        f"{what} cannot be checked right now (the shared state is unavailable and the budget fails closed)",
        status=503, error_type="api_error", headers={"retry-after": "2"})

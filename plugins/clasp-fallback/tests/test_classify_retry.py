"""Error classification, backoff timing and the retry budget."""

from __future__ import annotations

import pytest
from clasp_fallback.classify import classify
from clasp_fallback.retry import RetryBudget, backoff_delay, retry_after_delay

from clasp_gateway.errors import ConfigurationError, InvalidRequestError, UpstreamError


def upstream(status: int, message: str = "boom", kind: str = "http", retry_after: float | None = None) -> UpstreamError:
    return UpstreamError(f"d1: provider answered {status}: {message}", upstream_status=status, deployment="d1",
                         kind=kind, retry_after=retry_after)


@pytest.mark.parametrize(
    ("error", "kind", "key"),
    [
        (upstream(429, retry_after=2), "rate_limited", "429"),
        (upstream(500), "unavailable", "500"),
        (upstream(503), "unavailable", "503"),
        (upstream(529), "unavailable", "529"),
        (upstream(0, kind="connect"), "connect", "connect"),
        (upstream(0, kind="timeout"), "timeout", "timeout"),
        (upstream(502, kind="protocol"), "protocol", "protocol"),
        (upstream(400, "This model's maximum context length is 8192 tokens. However, your messages resulted in 9100 tokens."), "overflow", ""),
        (upstream(400, "prompt is too long: 210000 tokens > 200000 maximum"), "overflow", ""),
        (upstream(400, "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."), "overflow", ""),
        (upstream(400, "Rate limit reached for tokens per minute: 450000 > 400000 maximum"), "invalid", ""),
        (upstream(413, "Request Entity Too Large"), "overflow", ""),
        (upstream(400, "The response was filtered due to the prompt triggering Azure OpenAI's content management policy."), "refusal", ""),
        (upstream(400, "Your request was rejected as a result of our safety system."), "refusal", ""),
        (upstream(400, "Invalid value for 'temperature'"), "invalid", ""),
        (upstream(401, "Incorrect API key provided"), "misconfigured", ""),
        (upstream(404, "The model `gpt-9` does not exist"), "misconfigured", ""),
        (ConfigurationError("deployment d1 is not configured: set OPENAI_API_KEY"), "misconfigured", ""),
        (InvalidRequestError("messages: required"), "invalid", ""),
    ],
)
def test_classify(error: Exception, kind: str, key: str) -> None:
    failure = classify(error)
    assert failure is not None and (failure.kind, failure.key) == (kind, key)
    assert failure.counts_against_deployment == (kind not in ("overflow", "refusal", "invalid"))


def test_retry_on_matches_statuses_classes_and_kinds() -> None:
    on = frozenset({"429", "5xx", "connect"})
    assert classify(upstream(503)).matches(on)  # type: ignore[union-attr]
    assert classify(upstream(429)).matches(on)  # type: ignore[union-attr]
    assert classify(upstream(0, kind="connect")).matches(on)  # type: ignore[union-attr]
    assert not classify(upstream(0, kind="timeout")).matches(on)  # type: ignore[union-attr]
    assert not classify(upstream(401)).matches(on)  # type: ignore[union-attr]
    assert classify(upstream(429, retry_after=3)).retry_after == 3  # type: ignore[union-attr]


def test_backoff_is_full_jitter_within_a_doubling_capped_ceiling() -> None:
    assert backoff_delay(1, 0.5, 4.0, rng=lambda: 1.0) == 0.5
    assert backoff_delay(3, 0.5, 4.0, rng=lambda: 1.0) == 2.0
    assert backoff_delay(10, 0.5, 4.0, rng=lambda: 1.0) == 4.0
    assert backoff_delay(3, 0.5, 4.0, rng=lambda: 0.0) == 0.0
    delays = [backoff_delay(2, 0.5, 4.0) for _ in range(500)]
    assert 0 <= min(delays) < 0.1 and 0.9 < max(delays) <= 1.0  # spread over the whole interval
    assert 2.0 <= retry_after_delay(2.0, 0.25) <= 2.25


def test_retry_budget_caps_retries_to_a_share_of_requests() -> None:
    now = [0.0]
    budget = RetryBudget(ratio=0.2, window=10, min_retries=0, clock=lambda: now[0])
    for _ in range(50):
        budget.note_request("d1")
    spent = sum(budget.try_spend("d1") for _ in range(50))
    assert spent == 10  # 20% of 50 requests
    assert budget.try_spend("d2") is False  # another deployment has its own budget (no requests yet)
    now[0] = 10.5  # the window slid past every request: nothing left to retry on
    assert budget.try_spend("d1") is False
    budget.note_request("d1")
    assert budget.available("d1") == pytest.approx(0.2)


def test_retry_budget_minimum_lets_a_quiet_deployment_retry() -> None:
    now = [0.0]
    budget = RetryBudget(ratio=0.2, window=10, min_retries=3, clock=lambda: now[0])
    assert [budget.try_spend("d1") for _ in range(4)] == [True, True, True, False]
    now[0] = 25.0
    assert budget.try_spend("d1") is True  # a new window

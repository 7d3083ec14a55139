"""What a failed attempt means for the request and for the deployment.

One place decides, from an error, whether the same deployment may be retried, whether
another deployment may do better (a larger context window, a different content
policy, a healthy server), whether the client's request itself is at fault, and
whether the failure counts against the deployment's circuit breaker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from clasp_gateway import ConfigurationError, GatewayError, UpstreamError, is_context_overflow

FailureKind = Literal[
    "overflow",  # the request does not fit the model's context window
    "refusal",  # the provider's content policy refused it
    "invalid",  # the request is wrong for any provider: the client must fix it
    "misconfigured",  # this deployment cannot serve (bad key, unknown model, missing secret)
    "rate_limited",  # 429
    "unavailable",  # 5xx and friends
    "timeout",  # no answer (connect or first byte) in time
    "connect",  # refused, reset, DNS
    "protocol",  # an answer that is not what was asked: HTML, malformed JSON, empty or cut stream
    "cancelled",  # a hedge that lost the race (started late, cancelled): says nothing of its health
]

# Providers' words for a content-policy refusal (OpenAI, Azure content filter, Gemini safety).
_REFUSAL = re.compile(
    r"content[ _-]?(?:filter|policy|management)|responsibleaipolicyviolation|safety system"
    r"|flagged (?:as|by)|violat\w* (?:our |the )?(?:usage |content )?polic",
    re.IGNORECASE,
)

_CLIENT_KINDS = frozenset({"overflow", "refusal", "invalid"})
_AVAILABILITY_KINDS = frozenset({"rate_limited", "unavailable", "timeout", "connect", "protocol"})


@dataclass(slots=True, frozen=True)
class Failure:
    """A classified attempt failure."""

    kind: FailureKind
    key: str
    """What ``fallback.retry.on`` matches: the upstream status ("503") or the error
    class ("connect", "timeout", "protocol"); "" when retrying cannot help."""
    retry_after: float | None = None

    @property
    def counts_against_deployment(self) -> bool:
        """Whether this failure says the deployment is unhealthy (circuit breakers).

        A refused or oversized request proves the deployment is up and answering.
        """
        return self.kind not in _CLIENT_KINDS and self.kind != "cancelled"

    @property
    def is_availability(self) -> bool:
        """The deployment could not serve right now (an outage, not a request problem)."""
        return self.kind in _AVAILABILITY_KINDS

    @property
    def is_client_error(self) -> bool:
        """The request itself was refused; degrading would hide the client's problem."""
        return self.kind in _CLIENT_KINDS

    def matches(self, retry_on: frozenset[str]) -> bool:
        """Whether ``fallback.retry.on`` allows retrying the same deployment."""
        if not self.key:
            return False
        return self.key in retry_on or (self.key[0].isdigit() and f"{self.key[0]}xx" in retry_on)


def classify(error: BaseException | None) -> Failure | None:
    """Classify an attempt's error (``None`` for a success)."""
    if error is None:
        return None
    if isinstance(error, UpstreamError):
        return _classify_upstream(error)
    if isinstance(error, ConfigurationError):
        return Failure("misconfigured", "")
    if isinstance(error, GatewayError):
        if error.status == 429:
            return Failure("rate_limited", "429")
        if error.status >= 500:
            return Failure("unavailable", str(error.status))
        return Failure("invalid", "")
    return Failure("unavailable", "")


def _classify_upstream(error: UpstreamError) -> Failure:
    if error.kind in ("timeout", "slow"):  # slow: no first byte by its hedge delay, and a hedge answered
        return Failure("timeout", "timeout")
    if error.kind == "cancelled":
        return Failure("cancelled", "")
    if error.kind == "connect":
        return Failure("connect", "connect")
    if error.kind == "protocol":
        return Failure("protocol", "protocol")
    status = error.upstream_status
    message = error.message
    if status == 429:
        return Failure("rate_limited", "429", error.retry_after)
    if status == 413:
        return Failure("overflow", "")
    if status in (400, 403, 422) and _REFUSAL.search(message):
        return Failure("refusal", "")
    if is_context_overflow(error):  # the core's reading, shared with its context fitting
        return Failure("overflow", "")
    if status in (401, 403, 404):
        return Failure("misconfigured", "")
    if status == 408:
        return Failure("timeout", "408")
    if status >= 500 or status in (409, 425):
        return Failure("unavailable", str(status), error.retry_after)
    return Failure("invalid", "")

"""Errors that leave the gateway, and how they are shaped for each client API.

Every failure a client can see is a :class:`GatewayError` with an HTTP status, an
Anthropic error type and a message written for a person. Routes render it in the
shape of their API (Anthropic on ``/v1/messages``, OpenAI on ``/v1/chat/completions``).
"""

from __future__ import annotations

from typing import Any

import orjson

# Anthropic error type -> OpenAI error type (for OpenAI-shaped bodies).
_OPENAI_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "request_too_large": "invalid_request_error",
    "rate_limit_error": "rate_limit_error",
    "api_error": "api_error",
    "overloaded_error": "service_unavailable",
    "timeout_error": "timeout",
}


class GatewayError(Exception):
    """An error with a client-facing status, Anthropic error type and message."""

    status: int = 500
    error_type: str = "api_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if error_type is not None:
            self.error_type = error_type
        self.headers: dict[str, str] = dict(headers or {})
        self._retryable = retryable

    @property
    def retryable(self) -> bool:
        """Whether another attempt (same or next deployment) may succeed."""
        if self._retryable is not None:
            return self._retryable
        return self.status in (408, 409, 429) or self.status >= 500

    def anthropic_body(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": self.error_type, "message": self.message}}

    def openai_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": _OPENAI_TYPES.get(self.error_type, "api_error"),
                "param": None,
                "code": self.error_type,
            }
        }

    def anthropic_bytes(self) -> bytes:
        return orjson.dumps(self.anthropic_body())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.error_type!r}, {self.message!r})"


class InvalidRequestError(GatewayError):
    """The request is malformed or breaks a rule (400); the message names the field."""

    status = 400
    error_type = "invalid_request_error"


class AuthenticationError(GatewayError):
    """No key, or a key the gateway does not accept (401)."""

    status = 401
    error_type = "authentication_error"


class PermissionDeniedError(GatewayError):
    """The key is valid but not allowed this (403): a model, a team budget..."""

    status = 403
    error_type = "permission_error"


class NotFoundError(GatewayError):
    """An unknown model or route (404)."""

    status = 404
    error_type = "not_found_error"


class RequestTooLargeError(GatewayError):
    """The request body is over ``server.max_request_bytes`` (413)."""

    status = 413
    error_type = "request_too_large"


class RateLimitError(GatewayError):
    """Too many requests, from this key or address (429, with ``retry-after``)."""

    status = 429
    error_type = "rate_limit_error"


class ApiError(GatewayError):
    """The gateway failed (500): the client gets a shaped error naming the request id."""

    status = 500
    error_type = "api_error"


class TimeoutError_(GatewayError):
    """The upstream did not answer in time (504 to the client)."""

    status = 504
    error_type = "timeout_error"


class OverloadedError(GatewayError):
    """No deployment can take the request right now (529, Anthropic's ``overloaded_error``)."""

    status = 529
    error_type = "overloaded_error"


class ConfigurationError(GatewayError):
    """The gateway itself is misconfigured for this request (a missing secret...)."""

    status = 500
    error_type = "api_error"

    def __init__(self, message: str, **kw: Any) -> None:
        kw.setdefault("retryable", False)
        super().__init__(message, **kw)


class UpstreamError(GatewayError):
    """A provider answered with an error or broke the connection.

    ``status`` is what the client sees (the upstream status mapped to Anthropic's
    set); ``upstream_status`` is what the provider sent (0 for a connection failure).
    """

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int,
        deployment: str = "",
        headers: dict[str, str] | None = None,
        retry_after: float | None = None,
        kind: str = "http",
    ) -> None:
        status, error_type = map_upstream_status(upstream_status)
        out_headers = dict(headers or {})
        if retry_after is not None:
            out_headers["retry-after"] = str(max(0, int(retry_after + 0.999)))
        super().__init__(message, status=status, error_type=error_type, headers=out_headers)
        self.upstream_status = upstream_status
        self.deployment = deployment
        self.retry_after = retry_after
        # "http" (an error status), "connect", "timeout", "protocol" (bad or cut answer)
        self.kind = kind

    @property
    def retryable(self) -> bool:
        if self.kind != "http":
            return True
        s = self.upstream_status
        return s in (408, 409, 425, 429) or s >= 500


def map_upstream_status(status: int) -> tuple[int, str]:
    """Map a provider's HTTP status to the status and Anthropic type the client sees."""
    if status == 0:
        return 500, "api_error"
    if status == 400 or status == 422:
        return 400, "invalid_request_error"
    if status == 401:
        # The client's key is fine (it passed our auth); the provider rejected ours.
        return 500, "api_error"
    if status == 403:
        return 403, "permission_error"
    if status == 404:
        return 404, "not_found_error"
    if status == 408:
        return 504, "timeout_error"
    if status == 413:
        return 413, "request_too_large"
    if status == 429:
        return 429, "rate_limit_error"
    if status in (503, 529):
        return 529, "overloaded_error"
    if status == 504:
        return 504, "timeout_error"
    return 500, "api_error"

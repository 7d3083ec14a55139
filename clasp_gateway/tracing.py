"""Headers a plugin adds to the upstream calls of the request being served.

A tracing plugin (clasp-otel) passes the W3C ``traceparent`` of each attempt to the
provider, so the provider's own traces join the gateway's. It sets the headers for
the current task with :func:`set_upstream_headers` (in ``before_attempt``, which runs
in the request's task just before the call) and every upstream wire adds them to the
call it makes: the core's HTTP client (:class:`~clasp_gateway.Upstream`, for the
``direct`` and ``transform`` modes and provider plugins) to the HTTP request, and the
``litellm`` mode to ``litellm.acompletion``'s ``extra_headers``. A deployment's own
headers of the same name win on both.

Only plugins set these, never a client: nothing a client sends may change what is
sent upstream beyond its request. Without a plugin setting them, the cost is one
context-variable read per upstream call.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping

__all__ = ["set_upstream_headers", "upstream_headers"]

_headers: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("clasp_upstream_headers",
                                                                                     default=None)


def set_upstream_headers(headers: Mapping[str, str] | None) -> None:
    """Add ``headers`` to every upstream call made from now on in this task (and the
    tasks it starts); ``None`` stops. A deployment's own headers of the same name win."""
    _headers.set(dict(headers) if headers else None)


def upstream_headers() -> Mapping[str, str] | None:
    """The headers set for this task's upstream calls (``None``: none)."""
    return _headers.get()

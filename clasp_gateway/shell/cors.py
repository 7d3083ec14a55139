"""``server.cors``: cross-origin browser calls, off unless origins are listed.

Off by default: a browser page on another origin cannot read the gateway's answers
(and with keys in headers, not cookies, cannot borrow a user's access either). Listing
origins wraps the app in Starlette's ``CORSMiddleware`` with exactly those origins,
methods and headers; ``*`` is accepted only without credentials (checked when the file
is read, :func:`clasp_gateway.config.tls_cors_problems`).
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from ..config import ServerConfig


def cors_middleware(server: ServerConfig) -> list[Middleware]:
    """The CORS layer for ``server.cors`` (none when no origin is allowed)."""
    cors = server.cors
    if not cors.enabled:
        return []
    return [Middleware(
        CORSMiddleware, allow_origins=list(cors.allow_origins), allow_origin_regex=cors.allow_origin_regex,
        allow_methods=list(cors.allow_methods), allow_headers=list(cors.allow_headers),
        expose_headers=list(cors.expose_headers), allow_credentials=cors.allow_credentials and "*" not in cors.allow_origins,
        max_age=cors.max_age,
    )]


__all__ = ["cors_middleware"]

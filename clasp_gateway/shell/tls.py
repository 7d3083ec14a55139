"""``server.tls`` as uvicorn's options: https with the configured certificate, and
client certificates checked against ``ca_certs`` when ``client_cert`` asks for them
(``optional``: verified when a client sends one; ``required``: a client without a
certificate signed by those CAs cannot complete the handshake).

uvicorn loads the files when it starts (each worker does), so a wrong path or key is a
start-up error; ``clasp check`` finds unreadable files before that
(:func:`clasp_gateway.config.tls_cors_problems`). The key's password is a secret
reference, resolved here and never logged.
"""

from __future__ import annotations

import ssl
from typing import Any

from ..config import ServerConfig, resolve_secret

CLIENT_CERT = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def tls_options(server: ServerConfig) -> dict[str, Any]:
    """``uvicorn.run`` keyword arguments for ``server.tls`` (empty when TLS is off)."""
    tls = server.tls
    if not tls.enabled:
        return {}
    options: dict[str, Any] = {
        "ssl_certfile": tls.certfile, "ssl_keyfile": tls.keyfile, "ssl_cert_reqs": CLIENT_CERT[tls.client_cert],
    }
    if tls.ca_certs is not None:
        options["ssl_ca_certs"] = tls.ca_certs
    if tls.keyfile_password is not None:
        options["ssl_keyfile_password"] = resolve_secret(tls.keyfile_password).value
    return options


def scheme(server: ServerConfig) -> str:
    """``https`` when the gateway serves TLS itself, else ``http``."""
    return "https" if server.tls.enabled else "http"


__all__ = ["CLIENT_CERT", "scheme", "tls_options"]

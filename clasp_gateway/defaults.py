"""The gateway's default behaviour, itself a plugin registered ``trylast`` so any
installed plugin can override it."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from .errors import AuthenticationError
from .hookspecs import hookimpl
from .types import Principal

if TYPE_CHECKING:
    from .config import Config

_tables: dict[int, dict[bytes, Principal]] = {}


def _key_table(config: Config) -> dict[bytes, Principal]:
    # Keys are compared by SHA-256 digest so lookup time says nothing about the key.
    table = _tables.get(id(config))
    if table is None:
        table = {}
        for key in config.keys:
            assert key.secret.value
            digest = hashlib.sha256(key.secret.value.encode()).digest()
            table[digest] = Principal(
                key_id=digest.hex()[:12], name=key.name, team=key.team, metadata=dict(key.metadata),
                role=key.role, project=key.project, tags=dict(key.tags), policy=key.policy,
            )
        _tables.clear()
        _tables[id(config)] = table
    return table


@hookimpl(trylast=True)
def authenticate(api_key: str | None, headers: dict[str, str], config: Config) -> Principal:
    """Accept the keys listed under ``keys:``, each with its role, project, tags and
    :class:`~clasp_gateway.types.KeyPolicy` from clasp.yaml (the core then refuses an
    expired key and a model outside ``policy.models``); with none configured, accept
    anyone (as a ``member`` without limits)."""
    if not config.keys and not config.raw.get("keys"):
        return Principal(key_id="anonymous", name="anonymous")
    if not api_key:
        raise AuthenticationError(
            "missing API key: send it in the x-api-key header or as Authorization: Bearer <key>"
        )
    principal = _key_table(config).get(hashlib.sha256(api_key.encode()).digest())
    if principal is None:
        if not config.keys and config.key_problems:
            raise AuthenticationError(
                "this gateway has no usable key yet: " + " or ".join(config.key_problems)
                + " in the gateway's environment, restart it, and use that value as your API key"
            )
        raise AuthenticationError("invalid API key for this gateway")
    return principal

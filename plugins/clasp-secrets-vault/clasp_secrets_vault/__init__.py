"""clasp-secrets-vault: ``vault:`` secret references, read from HashiCorp Vault.

In clasp.yaml::

    secrets:
      vault:
        address: https://vault.internal:8200      # default: $VAULT_ADDR
        token: ${VAULT_TOKEN}                     # or AppRole: role_id + secret_id
    models:
      gpt-4o:
        - model: openai/gpt-4o
          api_key: vault:secret/llm/openai#api_key   # KV v2 mount "secret", field "api_key"

Registered through ``register_secret_backends``; the client is :mod:`.client`.
Uses only the public API.
"""

from __future__ import annotations

from clasp_gateway import RegisterSecretBackend, hookimpl

from .client import SETTINGS, VaultBackend

__all__ = ["SETTINGS", "VaultBackend"]


@hookimpl
def register_secret_backends(register: RegisterSecretBackend) -> None:
    register("vault", VaultBackend.from_options, settings=SETTINGS)

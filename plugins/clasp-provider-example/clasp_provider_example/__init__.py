"""clasp-provider-example: serve models of the Acme Generate API through clasp-gateway.

A provider LiteLLM does not know, added with one hook. In clasp.yaml::

    models:
      "claude-*":
        - model: acme/acme-coder-1          # provider "acme", model "acme-coder-1"
          api_base: https://acme.internal   # the adapter posts to {api_base}/v1/generate
          api_key: ${ACME_API_KEY}
          max_output_tokens: 8192           # LiteLLM's catalogue does not know this model

Everything else (Claude Code's Anthropic format, retries, fallback to another
deployment, budgets, server tools) is the gateway's: the adapter only speaks Acme.
"""

from __future__ import annotations

from collections.abc import Callable

from clasp_gateway import hookimpl

from .adapter import AcmeProvider

__version__ = "0.1.0"
__all__ = ["PROVIDER", "AcmeProvider"]

PROVIDER = "acme"
"""The ``provider`` part of ``model: acme/<model>`` in clasp.yaml."""


@hookimpl
def register_providers(register: Callable[..., None]) -> None:
    # One adapter (one HTTP session) per gateway app: the gateway starts and closes it.
    register(PROVIDER, AcmeProvider())

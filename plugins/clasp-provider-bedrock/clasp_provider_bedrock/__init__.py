"""clasp-provider-bedrock: serve models on AWS Bedrock (Converse API) through clasp-gateway.

In clasp.yaml::

    models:
      "claude-*":
        - model: bedrock/anthropic.claude-3-5-sonnet-20241022-v2:0
          region: us-east-1              # or aws_region_name; default: AWS_REGION
          aws_profile: prod              # optional; default: the standard AWS chain

Credentials come from botocore's standard chain (environment, shared files and
profiles, roles), session tokens included, renewed before they expire and never on
the event loop. Requests are signed with SigV4; answers stream as AWS event streams.
"""

from __future__ import annotations

from collections.abc import Callable

from clasp_gateway import hookimpl

from .adapter import BedrockProvider

__version__ = "0.1.0"
__all__ = ["PROVIDER", "BedrockProvider"]

PROVIDER = "bedrock"
"""The ``provider`` part of ``model: bedrock/<model id>`` in clasp.yaml."""


@hookimpl
def register_providers(register: Callable[..., None]) -> None:
    # One adapter (one HTTP session, credentials per deployment) per gateway app.
    register(PROVIDER, BedrockProvider())

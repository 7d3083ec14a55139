"""clasp-provider-vertex: serve Gemini and Claude on Google Vertex AI through clasp-gateway.

In clasp.yaml::

    models:
      "claude-*":
        - model: vertex/claude-sonnet-4-5@20250929      # Claude on Vertex (streamRawPredict)
          vertex_project: my-project
          vertex_location: us-east5
          vertex_credentials: file:/run/secrets/vertex-sa.json
        - model: vertex/gemini-2.5-pro                  # Gemini on Vertex (streamGenerateContent)
          vertex_location: us-central1
          vertex_credentials: file:/run/secrets/vertex-sa.json

Authentication is a service account's OAuth token (google-auth's JWT bearer grant),
renewed before it expires, one refresh at a time, off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable

from clasp_gateway import hookimpl

from .adapter import VertexProvider

__version__ = "0.1.0"
__all__ = ["PROVIDERS", "VertexProvider"]

PROVIDERS = ("vertex", "vertex_ai")
"""The ``provider`` part of ``model:`` in clasp.yaml. ``vertex_ai/<model>`` (LiteLLM's
name) also finds the model's limits and prices in LiteLLM's catalogue."""


@hookimpl
def register_providers(register: Callable[..., None]) -> None:
    # One adapter (token sources per deployment) per gateway app, under both names.
    adapter = VertexProvider()
    for name in PROVIDERS:
        register(name, adapter)

"""clasp-claude: the Anthropic Messages API on top of the gateway's canonical format.

Routes: ``POST /v1/messages`` (streaming and not), ``POST /v1/messages/count_tokens``
and Anthropic-shaped ``GET /v1/models[/{id}]``. Translation lives in :mod:`.request`
(Anthropic → OpenAI), :mod:`.stream` (OpenAI chunks → Anthropic events) and
:mod:`.message` (events → a whole message), so streaming and non-streaming answers
go through exactly the same code. Deployments of Anthropic itself get the client's
request untouched (:mod:`.passthrough`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clasp_gateway import hookimpl

from .passthrough import AnthropicPassthrough
from .routes import count_tokens_endpoint, list_models_endpoint, messages_endpoint, model_endpoint

__version__ = "0.1.0"


@hookimpl
def register_routes(register: Callable[..., None]) -> None:
    """Serve the Anthropic Messages API."""
    register("/v1/messages", messages_endpoint, methods=["POST"])
    register("/v1/messages/count_tokens", count_tokens_endpoint, methods=["POST"])
    register("/v1/models", list_models_endpoint, methods=["GET"])
    register("/v1/models/{model_id:path}", model_endpoint, methods=["GET"])


@hookimpl
def register_providers(register: Callable[..., None]) -> None:
    """Serve ``provider: anthropic`` deployments by pass-through for Anthropic clients."""
    register("anthropic", AnthropicPassthrough())


__all__: list[Any] = ["register_providers", "register_routes"]

"""LiteLLM's logging object, reduced to what provider transforms touch."""

from __future__ import annotations

from typing import Any


class LoggingStub:
    """The few members of ``litellm.Logging`` that provider transforms read.

    ``transform_response`` calls ``post_call``; the Gemini stream parser reads
    ``optional_params`` and ``litellm_params``. The gateway records calls itself
    (``record`` hook), so every logging call is a no-op.
    """

    __slots__ = ("optional_params", "litellm_params", "model_call_details")

    def __init__(self, optional_params: dict[str, Any], litellm_params: dict[str, Any]) -> None:
        self.optional_params = optional_params
        self.litellm_params = litellm_params
        self.model_call_details: dict[str, Any] = {}

    def pre_call(self, *args: Any, **kwargs: Any) -> None:
        """No-op: the gateway logs requests itself."""

    def post_call(self, *args: Any, **kwargs: Any) -> None:
        """No-op: the gateway logs answers itself."""

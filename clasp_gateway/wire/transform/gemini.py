"""Google AI Studio (Gemini): its stream, read fast where it can be, and its recipe.

LiteLLM builds Gemini requests outside its config class, so Gemini has its own
:class:`GeminiRecipe`; :data:`GEMINI` says how its stream ends and which events
skip LiteLLM's parser."""

from __future__ import annotations

from typing import Any

import orjson

from ...errors import ConfigurationError
from ...types import CanonicalRequest, Chunk, Deployment
from .recipe import Prepared, Recipe, split_body
from .spec import StreamSpec, text_chunk
from .stub import LoggingStub


def _gemini_final(event: dict[str, Any]) -> bool:
    return any(isinstance(c, dict) and c.get("finishReason") for c in event.get("candidates") or ())


def _gemini_event(event: dict[str, Any]) -> dict[str, Any]:
    """Usage only on the last event. Gemini repeats a running ``usageMetadata`` on
    every chunk and LiteLLM computes a usage object from each (a third of its
    per-chunk cost); the gateway reads only the final count."""
    if "usageMetadata" in event and not _gemini_final(event):
        return {k: v for k, v in event.items() if k != "usageMetadata"}
    return event


def _gemini_fast(event: dict[str, Any], parser: Any) -> Chunk | None:
    """A plain text (or thought) chunk, read without LiteLLM: the common case of a
    stream, and the costliest for LiteLLM's parser (pydantic objects per chunk).
    Anything else (calls, finish, usage, safety, grounding) goes to LiteLLM.
    ``tests/test_litellm_contract.py`` checks both readings agree."""
    candidates = event.get("candidates")
    if not candidates or len(candidates) != 1 or "promptFeedback" in event:
        return None  # (a running usageMetadata is ignored: only the final one counts)
    cand = candidates[0]
    if not isinstance(cand, dict) or len(cand) > 2 or set(cand) - {"content", "index"}:
        return None
    parts = (cand.get("content") or {}).get("parts")
    if not parts or len(parts) != 1:
        return None
    part = parts[0]
    text = part.get("text") if isinstance(part, dict) else None
    if not isinstance(text, str) or not text or set(part) - {"text", "thought"}:
        return None
    return text_chunk(text, "reasoning_content" if part.get("thought") is True else "content")


GEMINI = StreamSpec(is_final=_gemini_final, adapt=_gemini_event, fast=_gemini_fast)
"""Gemini's stream: the finish reason only on the event that has one, usage only on the last."""


class GeminiRecipe(Recipe):
    """Google AI Studio (``generateContent`` / ``streamGenerateContent?alt=sse``).

    LiteLLM builds Gemini bodies outside the config class
    (``transform_request_body``) and the URL and ``x-goog-api-key`` header in
    ``VertexLLM._get_token_and_url``; both are called directly.
    """

    def __init__(self, litellm: Any, provider: str, spec: StreamSpec | None = None) -> None:
        super().__init__(litellm, provider, spec)
        from litellm.llms.vertex_ai.gemini.transformation import transform_request_body
        from litellm.llms.vertex_ai.gemini.vertex_and_google_ai_studio_gemini import (
            ModelResponseIterator,
            VertexLLM,
        )

        self._transform_body = transform_request_body
        self._iterator = ModelResponseIterator
        self._vertex = VertexLLM()

    def prepare(self, deployment: Deployment, body: CanonicalRequest, stream: bool, key: str | None) -> Prepared:
        model = deployment.model
        messages, params, extras = split_body(body, deployment)
        cfg = self.config(model)
        op = self.optional_params(model, params, extras, stream)
        op.pop("stream", None)
        lp: dict[str, Any] = {}
        if not key:
            raise ConfigurationError(f"deployment {deployment.label} has no API key (set GEMINI_API_KEY)")
        auth, url = self._vertex._get_token_and_url(
            model=model, auth_header=None, gemini_api_key=key, vertex_project=None, vertex_location=None,
            vertex_credentials=None, stream=stream, custom_llm_provider="gemini",
            api_base=deployment.api_base or None,
        )
        data = self._transform_body(
            messages=messages, model=model, optional_params=dict(op), custom_llm_provider="gemini",
            litellm_params=lp, cached_content=None,
        )
        headers = {"content-type": "application/json", **(auth if isinstance(auth, dict) else {}), **deployment.headers}
        return Prepared(
            url=url, headers=headers, body=orjson.dumps(data), stream=stream, model=model, messages=messages,
            optional_params=op, litellm_params=lp, request_data=dict(data), api_key=key, config=cfg, recipe=self,
            spec=self.spec,
        )

    def stream_parser(self, prepared: Prepared) -> Any:
        logging_obj: Any = LoggingStub(prepared.optional_params, prepared.litellm_params)
        return self._iterator(streaming_response=None, sync_stream=False, logging_obj=logging_obj)

"""A recipe: one provider's request built, and its answer parsed, with LiteLLM's
provider config (``validate_environment`` -> ``get_complete_url`` ->
``transform_request`` -> ``sign_request``; ``transform_response`` /
``get_model_response_iterator``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ...errors import ConfigurationError
from ...types import CanonicalRequest, Deployment
from ..catalog import provider_profile
from ..params import EXTRA_PARAMS, OPENAI_PARAMS
from .convert import response_object_to_completion
from .spec import StreamSpec
from .stub import LoggingStub


def litellm_provider(provider: str) -> str:
    """LiteLLM's name for a provider (``cohere`` is ``cohere_chat`` for the chat API)."""
    return provider_profile(provider).litellm_provider or provider


@dataclass(slots=True)
class Prepared:
    """One provider request, ready to send, and what parsing its answer needs."""

    url: str
    headers: dict[str, str]
    body: bytes
    stream: bool
    model: str
    messages: list[Any]
    optional_params: dict[str, Any]
    litellm_params: dict[str, Any]
    request_data: dict[str, Any]
    api_key: str | None
    config: Any
    recipe: Recipe
    spec: StreamSpec = field(default_factory=StreamSpec)


WARM_UP: CanonicalRequest = {
    "model": "warm-up",
    "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "noop", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": "ok"}],
    "tools": [{"type": "function", "function": {"name": "noop", "parameters": {
        "type": "object", "properties": {"x": {"type": "string"}}}}}],
    "max_tokens": 16,
}
"""A tiny request built (never sent) at start-up to warm LiteLLM's lazy set-up."""

_MEMO_SIZE = 256
"""Distinct (model, settings, tool set) combinations remembered per provider."""


def split_body(body: CanonicalRequest, deployment: Deployment) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """(a private copy of the messages, OpenAI params, provider-specific extras).

    Extras are the canonical ones (``top_k``) and the deployment's ``extra_body``:
    every other key is dropped (they become keyword arguments of LiteLLM's
    ``get_optional_params``, which must never see a client's ``api_base`` or
    ``extra_headers``; see :mod:`clasp_gateway.wire.params`)."""
    # LiteLLM transforms edit messages in place; the canonical request may be reused
    # for a fallback attempt, so they get their own copy.
    messages = orjson.loads(orjson.dumps(body.get("messages") or []))
    params = {k: body[k] for k in OPENAI_PARAMS if body.get(k) is not None}
    extras = {k: body[k] for k in EXTRA_PARAMS if body.get(k) is not None}
    for key, value in deployment.extra_body.items():
        if value is not None:
            extras[key] = value
    return messages, params, extras


def _ensure_route(base: str, route: str | None) -> str:
    """``base`` ending in ``/route`` (``https://api.cohere.com`` -> ``.../v2/chat``)."""
    base = base.rstrip("/")
    if not route or base.endswith("/" + route):
        return base
    return f"{base}/{route}"


class Recipe:
    """Builds and parses one provider's requests through a LiteLLM ``BaseConfig``."""

    def __init__(self, litellm: Any, provider: str, spec: StreamSpec | None = None) -> None:
        self.litellm = litellm
        self.provider = provider
        self.spec = spec or StreamSpec()
        self._providers_enum = litellm.LlmProviders(provider)
        self._memo: dict[bytes, bytes] = {}

    def config(self, model: str) -> Any:
        """LiteLLM's config object for ``model`` (fresh: some keep per-request state)."""
        cfg = self.litellm.ProviderConfigManager.get_provider_chat_config(model=model, provider=self._providers_enum)
        if cfg is None:
            raise ConfigurationError(f"LiteLLM has no request builder for provider {self.provider!r}; use mode: litellm")
        return cfg

    def optional_params(self, model: str, params: dict[str, Any], extras: dict[str, Any], stream: bool) -> dict[str, Any]:
        """``litellm.get_optional_params`` for this request, memoised: it rewrites
        every tool schema (Gemini: ~0.6 ms per tool), and a client sends the same
        tools and settings turn after turn. Each caller gets its own copy."""
        try:
            key = orjson.dumps((model, stream, params, extras))
        except TypeError:
            key = None
        if key is not None:
            hit = self._memo.get(key)
            if hit is not None:
                cached: dict[str, Any] = orjson.loads(hit)
                return cached
        op: dict[str, Any] = self.litellm.get_optional_params(
            model=model, custom_llm_provider=self.provider, stream=stream, drop_params=True, **params, **extras
        )
        if key is not None:
            try:
                value = orjson.dumps(op)
            except TypeError:
                return op
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.pop(next(iter(self._memo)))  # oldest first
            self._memo[key] = value
        return op

    def prepare(self, deployment: Deployment, body: CanonicalRequest, stream: bool, key: str | None) -> Prepared:
        model = deployment.model
        messages, params, extras = split_body(body, deployment)
        cfg = self.config(model)
        op = self.optional_params(model, params, extras, stream)
        lp: dict[str, Any] = {}
        profile = provider_profile(deployment.provider)
        base = deployment.api_base or profile.default_api_base
        api_base = _ensure_route(base, profile.api_route) if base else None
        headers = cfg.validate_environment(
            headers=dict(deployment.headers), model=model, messages=messages, optional_params=op,
            litellm_params=lp, api_key=key, api_base=api_base,
        )
        url = cfg.get_complete_url(
            api_base=api_base, api_key=key, model=model, optional_params=op, litellm_params=lp, stream=stream
        )
        data = cfg.transform_request(
            model=model, messages=messages, optional_params=dict(op), litellm_params=lp, headers=headers
        )
        if stream and cfg.supports_stream_param_in_request_body:
            data["stream"] = True
        headers, signed = cfg.sign_request(
            headers=headers, optional_params=op, request_data=data, api_base=url, api_key=key,
            stream=stream, fake_stream=False, model=model,
        )
        headers.update(deployment.headers)
        return Prepared(
            url=url, headers={str(k): str(v) for k, v in headers.items()},
            body=signed if signed is not None else orjson.dumps(data), stream=stream, model=model,
            messages=messages, optional_params=op, litellm_params=lp, request_data=data, api_key=key,
            config=cfg, recipe=self, spec=self.spec,
        )

    def stream_parser(self, prepared: Prepared) -> Any:
        """A fresh LiteLLM stream parser (has ``chunk_parser(dict)``)."""
        it = prepared.config.get_model_response_iterator(streaming_response=iter(()), sync_stream=False, json_mode=False)
        if it is None and self.provider == "anthropic":
            # AnthropicConfig streams through its handler's iterator.
            from litellm.llms.anthropic.chat.handler import ModelResponseIterator

            it = ModelResponseIterator(streaming_response=None, sync_stream=False, json_mode=False)
        if it is None:
            raise ConfigurationError(f"LiteLLM has no stream parser for provider {self.provider!r}; use mode: litellm")
        return it

    def parse_response(self, prepared: Prepared, status: int, headers: Any, raw: bytes) -> dict[str, Any]:
        """A ``chat.completion`` dict from a whole (non-streamed) answer."""
        import httpx  # LiteLLM's transforms read an httpx.Response; httpx is LiteLLM's dependency

        response = httpx.Response(
            status, content=raw, headers=dict(headers), request=httpx.Request("POST", prepared.url)
        )
        result = prepared.config.transform_response(
            model=prepared.model, raw_response=response, model_response=self.litellm.ModelResponse(),
            logging_obj=LoggingStub(prepared.optional_params, prepared.litellm_params),
            request_data=prepared.request_data, messages=prepared.messages,
            optional_params=prepared.optional_params, litellm_params=prepared.litellm_params,
            encoding=None, api_key=prepared.api_key, json_mode=False,
        )
        completion = response_object_to_completion(result)
        if self.spec.whole is not None:
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                data = None
            if isinstance(data, dict):
                self.spec.whole(data, completion)
        return completion

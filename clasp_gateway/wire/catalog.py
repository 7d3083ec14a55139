"""Provider knowledge: how to reach each provider, and what each model can do.

Model facts (context window, output limit, capabilities, prices) come from LiteLLM's
bundled catalogue, read as a JSON file once, so the gateway knows what LiteLLM knows
without paying ``import litellm`` (5 s of CPU here) on the start-up path.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from ..storage.settings import data_dir
from ..types import CallMode, ModelInfo

log = logging.getLogger("clasp.catalog")


@dataclass(slots=True, frozen=True)
class ProviderProfile:
    """How a provider is called. OpenAI-compatible ones go ``direct`` (the hot path)."""

    name: str
    mode: CallMode = "direct"
    default_api_base: str | None = None
    default_base_env: str | None = None
    default_key_env: str | None = None
    default_api_version: str | None = None
    needs_api_base: bool = False
    auth: str = "bearer"
    """"bearer" (Authorization), "api-key" (Azure), "x-api-key" (Anthropic) or "none"."""
    path_style: str = "openai"
    """"openai" (``{base}/chat/completions``) or "azure" (``/openai/deployments/{model}/...``)."""
    schema_dialect: str = "openai"
    supports_stream_usage: bool = True
    """Accepts ``stream_options: {include_usage: true}``."""
    accepts_top_k: bool = False
    reasoning_param: str | None = None
    """How reasoning intent is sent: "reasoning_effort" or None (dropped)."""
    litellm_provider: str | None = None
    """LiteLLM's name for the provider when it differs (``cohere`` -> ``cohere_chat``)."""
    api_route: str | None = None
    """Path appended to ``api_base`` unless already there (``transform`` mode):
    ``v2/chat`` (Cohere), ``v1/messages`` (Anthropic)."""
    tool_call_ids: str = "any"
    """Tool-call ids the provider accepts in history: "any", or "alnum9" (Mistral:
    exactly 9 of ``[a-zA-Z0-9]``; other ids are mapped, deterministically)."""
    accepts_reasoning_history: bool = True
    """False when a ``reasoning_content`` echoed in an assistant message is a 400
    (DeepSeek): it is stripped before sending."""
    unsupported_params: frozenset[str] = frozenset()
    """Top-level body keys the provider rejects (Mistral answers 422 to ``user``)."""
    usage_field: str | None = None
    """Where a stream's usage arrives besides ``usage`` (Groq: ``x_groq.usage``)."""
    thought_signatures_in_ids: bool = False
    """LiteLLM carries Gemini thought signatures inside tool-call ids (base64, which
    Anthropic clients reject): they travel URL-safe and are restored upstream."""
    tool_names_start_with_letter: bool = False
    """Tool names must start with a letter or ``_`` (Gemini); others travel as
    ``t.<name>`` (a dot never occurs in a client's tool name) and come back as sent."""
    cache_control: str = "strip"
    """What becomes of the request's cache breakpoints (:mod:`.prompt_cache`):
    "strip" (OpenAI-compatible APIs reject the field; automatic prefix caches need
    none), "keep" (the provider's transform maps them: Anthropic, and LiteLLM or a
    plugin for providers the gateway has no profile of, such as Bedrock or Vertex) or
    "parts" (on content parts, for the models that cache: OpenRouter)."""
    prompt_cache_key: bool = False
    """Takes OpenAI's ``prompt_cache_key`` (a routing hint for its prefix cache)."""


_OPENAI_COMPATIBLE: dict[str, ProviderProfile] = {
    p.name: p
    for p in (
        ProviderProfile("openai", default_api_base="https://api.openai.com/v1", default_base_env="OPENAI_BASE_URL",
                        default_key_env="OPENAI_API_KEY", reasoning_param="reasoning_effort", prompt_cache_key=True),
        ProviderProfile("azure", default_base_env="AZURE_API_BASE", default_key_env="AZURE_API_KEY",
                        default_api_version="2024-10-21", needs_api_base=True, auth="api-key",
                        path_style="azure", reasoning_param="reasoning_effort"),
        ProviderProfile("ollama", default_api_base="http://localhost:11434/v1", default_base_env="OLLAMA_API_BASE",
                        auth="none", accepts_top_k=True),
        ProviderProfile("hosted_vllm", default_base_env="HOSTED_VLLM_API_BASE", needs_api_base=True,
                        auth="bearer", accepts_top_k=True),
        ProviderProfile("openai_compatible", needs_api_base=True, accepts_top_k=False),
        ProviderProfile("custom_openai", needs_api_base=True),
        ProviderProfile("lm_studio", default_api_base="http://localhost:1234/v1", default_base_env="LM_STUDIO_API_BASE",
                        auth="none"),
        ProviderProfile("deepseek", default_api_base="https://api.deepseek.com/v1", default_key_env="DEEPSEEK_API_KEY",
                        accepts_reasoning_history=False),
        # Groq takes stream_options now; older deployments only report x_groq.usage.
        ProviderProfile("groq", default_api_base="https://api.groq.com/openai/v1", default_key_env="GROQ_API_KEY",
                        usage_field="x_groq"),
        # Mistral always reports usage on the last chunk and answers 422 to unknown keys.
        ProviderProfile("mistral", default_api_base="https://api.mistral.ai/v1", default_key_env="MISTRAL_API_KEY",
                        supports_stream_usage=False, tool_call_ids="alnum9",
                        unsupported_params=frozenset({"user", "stream_options", "top_k", "seed"})),
        ProviderProfile("openrouter", default_api_base="https://openrouter.ai/api/v1", default_key_env="OPENROUTER_API_KEY",
                        accepts_top_k=True, reasoning_param="reasoning_effort", cache_control="parts"),
        ProviderProfile("together_ai", default_api_base="https://api.together.xyz/v1", default_key_env="TOGETHERAI_API_KEY",
                        accepts_top_k=True),
        ProviderProfile("fireworks_ai", default_api_base="https://api.fireworks.ai/inference/v1",
                        default_key_env="FIREWORKS_AI_API_KEY", accepts_top_k=True),
        ProviderProfile("xai", default_api_base="https://api.x.ai/v1", default_key_env="XAI_API_KEY",
                        reasoning_param="reasoning_effort"),
        ProviderProfile("perplexity", default_api_base="https://api.perplexity.ai", default_key_env="PERPLEXITYAI_API_KEY"),
    )
}


# Not OpenAI-compatible: LiteLLM's provider config builds and parses each call, the
# gateway's own session sends it (``mode: transform``, see transform.py).
_TRANSFORM: dict[str, ProviderProfile] = {
    p.name: p
    for p in (
        # Google AI Studio. No default api_base: LiteLLM picks v1beta or v1alpha by
        # model; a custom api_base includes the version (``https://host/v1beta``).
        ProviderProfile("gemini", mode="transform", default_base_env="GEMINI_API_BASE",
                        default_key_env="GEMINI_API_KEY", schema_dialect="gemini", supports_stream_usage=False,
                        reasoning_param="reasoning_effort", thought_signatures_in_ids=True,
                        tool_names_start_with_letter=True),
        ProviderProfile("cohere", mode="transform", litellm_provider="cohere_chat",
                        default_api_base="https://api.cohere.com", default_base_env="COHERE_API_BASE",
                        default_key_env="COHERE_API_KEY", api_route="v2/chat", supports_stream_usage=False),
        ProviderProfile("cohere_chat", mode="transform", default_api_base="https://api.cohere.com",
                        default_base_env="COHERE_API_BASE", default_key_env="COHERE_API_KEY", api_route="v2/chat",
                        supports_stream_usage=False),
        ProviderProfile("ollama_chat", mode="transform", default_api_base="http://localhost:11434",
                        default_base_env="OLLAMA_API_BASE", auth="none", supports_stream_usage=False,
                        reasoning_param="reasoning_effort"),
        # Anthropic clients are passed through verbatim by clasp-claude; this profile
        # serves OpenAI-format clients through LiteLLM's Anthropic transform.
        ProviderProfile("anthropic", mode="transform", default_api_base="https://api.anthropic.com",
                        default_base_env="ANTHROPIC_API_BASE", default_key_env="ANTHROPIC_API_KEY",
                        auth="x-api-key", api_route="v1/messages", supports_stream_usage=False,
                        accepts_top_k=True, reasoning_param="reasoning_effort", cache_control="keep"),
    )
}


def provider_profile(provider: str) -> ProviderProfile:
    """The profile of ``provider``; unknown providers are served through LiteLLM."""
    profile = _OPENAI_COMPATIBLE.get(provider) or _TRANSFORM.get(provider)
    if profile is not None:
        return profile
    # LiteLLM's catch-all maps or drops breakpoints per provider itself; a provider
    # plugin (Bedrock, Vertex) maps them for its own API.
    return ProviderProfile(provider, mode="litellm", schema_dialect="openai", cache_control="keep")


def litellm_package_dir() -> Path | None:
    """LiteLLM's installed folder, found without importing it."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


PRICE_MAP_FILE = "model_prices.json"
"""The newer LiteLLM-format price map ``clasp prices update`` installs in the data dir."""


def price_map_path() -> Path:
    """Where an installed price map lives (``<data dir>/model_prices.json``): read at
    start-up over LiteLLM's bundled map, entry by entry (the bundled one ages)."""
    return data_dir() / PRICE_MAP_FILE


def bundled_price_map_path() -> Path | None:
    """LiteLLM's bundled map (``model_prices_and_context_window_backup.json``)."""
    root = litellm_package_dir()
    return None if root is None else root / "model_prices_and_context_window_backup.json"


def _read_map(path: Path) -> dict[str, Any]:
    try:
        table = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        log.warning("cannot read the model catalogue %s: %s", path, exc)
        return {}
    if not isinstance(table, dict):
        log.warning("the model catalogue %s is not a JSON object: ignored", path)
        return {}
    table.pop("sample_spec", None)
    return table


@lru_cache(maxsize=1)
def _model_table() -> dict[str, Any]:
    bundled = bundled_price_map_path()
    if bundled is None:
        log.warning("litellm is not installed: model limits and prices are unknown")
        table: dict[str, Any] = {}
    else:
        table = _read_map(bundled)
    installed = price_map_path()
    if installed.is_file():
        newer = {k: v for k, v in _read_map(installed).items() if isinstance(v, dict)}
        table.update(newer)
        log.info("model prices: %d entries from %s over LiteLLM's bundled map", len(newer), installed)
    return table


def reload_price_map() -> None:
    """Forget the catalogue read so far: the next lookup reads the bundled and the
    installed maps again (after ``clasp prices update``, in the same process)."""
    _model_table.cache_clear()
    model_info.cache_clear()


def raw_model_entry(provider: str, model: str) -> dict[str, Any] | None:
    """LiteLLM's catalogue entry for a model, trying the provider-qualified name first."""
    table = _model_table()
    for key in (f"{provider}/{model}", model, model.rsplit("/", 1)[-1]):
        entry = table.get(key)
        if isinstance(entry, dict):
            return entry
    return None


@lru_cache(maxsize=4096)
def model_info(provider: str, model: str) -> ModelInfo:
    """What the gateway knows of ``provider/model`` (conservative defaults if unknown)."""
    entry = raw_model_entry(provider, model)
    if entry is None:
        return ModelInfo()

    def num(key: str) -> Any:
        value = entry.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    max_out = num("max_output_tokens") or num("max_tokens")
    return ModelInfo(
        max_input_tokens=int(num("max_input_tokens")) if num("max_input_tokens") else None,
        max_output_tokens=int(max_out) if max_out else None,
        supports_tools=bool(entry.get("supports_function_calling", True)),
        supports_parallel_tool_calls=bool(entry.get("supports_parallel_function_calling", True)),
        supports_reasoning=bool(entry.get("supports_reasoning", False)),
        supports_vision=bool(entry.get("supports_vision", False)),
        input_cost_per_token=float(num("input_cost_per_token") or 0.0),
        output_cost_per_token=float(num("output_cost_per_token") or 0.0),
        cache_read_input_token_cost=num("cache_read_input_token_cost"),
        cache_creation_input_token_cost=num("cache_creation_input_token_cost"),
    )

"""The provider families the transform path knows beyond LiteLLM's generic reading.

One entry per LiteLLM provider name: how its stream is framed and ended
(:class:`~.spec.StreamSpec`) and, where LiteLLM builds its requests outside its
config class, its own :class:`~.recipe.Recipe`. A provider not listed gets the
generic recipe and LiteLLM's parser as it is."""

from __future__ import annotations

from typing import Any

from .anthropic import ANTHROPIC
from .cohere import COHERE
from .gemini import GEMINI, GeminiRecipe
from .ollama import OLLAMA
from .recipe import Recipe
from .spec import StreamSpec

STREAMS: dict[str, StreamSpec] = {
    "gemini": GEMINI,
    "cohere_chat": COHERE,
    "ollama_chat": OLLAMA,
    "anthropic": ANTHROPIC,
}
"""Per LiteLLM provider name: what the gateway knows about its stream."""

RECIPES: dict[str, type[Recipe]] = {"gemini": GeminiRecipe}
"""Per LiteLLM provider name: a recipe of its own (default: :class:`Recipe`)."""


def recipe_for(litellm: Any, provider: str) -> Recipe:
    """The recipe for LiteLLM provider ``provider`` (raises ``ValueError`` when LiteLLM
    does not know it)."""
    return RECIPES.get(provider, Recipe)(litellm, provider, STREAMS.get(provider))

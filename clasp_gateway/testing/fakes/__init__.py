"""Fake LLM provider servers that speak the real wire formats.

Usage::

    from clasp_gateway.testing import FakeUpstream, Text, ToolCalls

    with FakeUpstream("openai") as up:
        up.queue(Text("hello"), ToolCalls([("get_weather", {"city": "Paris"})]))
        ...  # point the gateway at up.base_url
        assert up.last.body["model"] == "gpt-4o-mini"

Modules: :mod:`.replies` (what to answer), :mod:`.wire` (how each provider
spells it), :mod:`.fragment` (awkward TCP writes), :mod:`.record` (what was
received), :mod:`.server` (the server itself), :mod:`.keys` (answers and
rate-limit headers per API key), :mod:`.azure_ad` (an Entra ID token endpoint),
:mod:`.prompt_cache` (providers' prompt caches and the usage they report).
More providers register themselves as flavors (:mod:`.flavors`): :mod:`.gemini`,
:mod:`.cohere`, :mod:`.anthropic`, :mod:`.ai21` (Jamba, on LiteLLM's catch-all) and
:mod:`.openai_compat` (``deepseek``, ``mistral``, ``groq``, ``vllm``).
"""

from . import ai21, anthropic, cohere, gemini, openai_compat  # noqa: F401  (they register their flavors)
from .azure_ad import FakeTokenEndpoint
from .keys import by_key, limits_by_key, openai_limits
from .prompt_cache import CacheUse, PromptCache, render_prompt
from .record import Recorded
from .replies import Cut, Error, Hang, Html, Malformed, Raw, Reasoning, Reply, Script, Text, ToolCalls
from .server import FLAVORS, FakeUpstream, free_port

__all__ = [
    "FLAVORS",
    "CacheUse",
    "PromptCache",
    "render_prompt",
    "Cut",
    "Error",
    "FakeTokenEndpoint",
    "FakeUpstream",
    "Hang",
    "Html",
    "Malformed",
    "Raw",
    "Reasoning",
    "Recorded",
    "Reply",
    "Script",
    "Text",
    "ToolCalls",
    "by_key",
    "free_port",
    "limits_by_key",
    "openai_limits",
]

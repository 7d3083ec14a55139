"""The ``transform`` path: LiteLLM's provider knowledge, the gateway's own wire.

For providers that do not speak OpenAI chat completions (Gemini, Cohere, Ollama's
native API, Anthropic for OpenAI-format clients...), LiteLLM's *provider config*
knows how to build the URL, the headers (auth, signing) and the body, and how to
parse the answer. ``litellm.acompletion`` wraps that knowledge in layers that cost
~20x a raw call on long streams (``../shared/LITELLM.md``); this package calls the
config directly and keeps the rest for itself:

- one pooled aiohttp session (the one the direct path uses) sends the request;
- the gateway decodes the byte stream itself (SSE or NDJSON, split-safe), so a
  provider's events reach LiteLLM's parser as plain dicts, one ``chunk_parser``
  call per event, and come back as canonical OpenAI chunk dicts (no pydantic
  object survives past that call); plain text deltas, most of a stream, skip
  LiteLLM's parser altogether (it builds pydantic objects per chunk: ~10x the
  cost), and a contract test checks both readings agree;
- ``get_optional_params`` (which rewrites every tool schema) is memoised per
  provider: a client sends the same tools and settings turn after turn;
- errors become :class:`~clasp_gateway.errors.UpstreamError` with the provider's
  message, status and retry hints, exactly like the direct path.

Each provider is a :class:`Recipe`: the generic one drives any LiteLLM
``BaseConfig`` (``validate_environment`` → ``get_complete_url`` →
``transform_request`` → ``sign_request``; ``transform_response`` /
``get_model_response_iterator``), and Gemini has its own because LiteLLM builds
Gemini requests outside its config class. What each recipe needs to know about a
stream (its framing, which event is the last one, and where LiteLLM's parser falls
short of the real wire) is in :data:`~.families.STREAMS`. ``tests/test_litellm_contract.py``
pins every LiteLLM behaviour used here, so an upgrade that changes one fails loudly.

Modules, one idea each: :mod:`.adapter` (the mode: send, read, errors),
:mod:`.recipe` (the generic recipe), :mod:`.families` with one module per provider
family (:mod:`.gemini`, :mod:`.cohere`, :mod:`.ollama`, :mod:`.anthropic`),
:mod:`.events` (stream events -> chunks), :mod:`.convert` (LiteLLM objects -> dicts),
:mod:`.stub` (LiteLLM's logging object, reduced); the NDJSON framing is
:mod:`clasp_gateway.wire.ndjson`, beside SSE's.

LiteLLM is imported once, before the app serves (``Providers.start``); nothing in
this package imports it at module level.
"""

from .adapter import TransformAdapter
from .events import EventReader
from .recipe import Prepared, Recipe, litellm_provider
from .spec import StreamSpec

__all__ = ["EventReader", "Prepared", "Recipe", "StreamSpec", "TransformAdapter", "litellm_provider"]

"""The upstream wire: how the gateway calls providers.

The gateway owns the wire (one pooled session, its own SSE/NDJSON framing, bounded
reads, key rotation: ``upstream``); LiteLLM is the provider-knowledge layer. The
provider registry (``providers``) picks a path per deployment: ``direct``
(OpenAI-compatible upstreams), ``transform`` (LiteLLM's provider config builds and
parses, the gateway sends: ``transform/``) or ``litellm_adapter``
(``litellm.acompletion``, the catch-all). Around them: credentials and key pools
(``credentials``), rate-limit headers (``ratelimits``), the parameter allowlist
(``params``), the model catalogue and provider profiles (``catalog``), provider quirks
(``quirks``), framing (``sse``, ``ndjson``, ``reads``), ``clasp check``'s probes
(``probe``) and the permission checks that run them before routing (``permissions``).
"""

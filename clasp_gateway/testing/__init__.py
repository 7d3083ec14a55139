"""Test helpers for the gateway and its plugins, inside or outside this repository.

A plugin package tests itself against a real gateway and fake providers, with nothing
but ``clasp-gateway`` installed (and never a real provider: every fake listens on
127.0.0.1)::

    from clasp_gateway.testing import FakeUpstream, GatewayServer, Text, config_from, openai_models

    with FakeUpstream("openai") as up, GatewayServer(
        config_from({"models": openai_models(up.base_url)}), plugins=[my_plugin]
    ) as gateway:
        up.queue(Text("hello"))
        httpx.post(gateway.base_url + "/v1/chat/completions", headers=gateway.headers, json=...)
        assert up.last.body["model"] == "gpt-4o"

What is here, by use:

- **Fake providers** (:mod:`.fakes`): :class:`FakeUpstream` speaks a provider's real
  wire (``"openai"``, ``"azure"``, ``"ollama"`` (its ``/v1`` and native API), ``"gemini"``,
  ``"cohere"``, ``"anthropic"``, ``"ai21"``, ``"deepseek"``, ``"mistral"``, ``"groq"``,
  ``"vllm"``; ``"json_stream"`` and ``"fragmented"`` for awkward upstreams), records
  every request (:class:`Recorded`) and answers what it is told: :class:`Text`,
  :class:`ToolCalls`, :class:`Reasoning`, or a fault (:class:`Error`, :class:`Cut`,
  :class:`Hang`, :class:`Html`, :class:`Malformed`, :class:`Raw`); a :data:`Script`
  decides per request (:func:`by_key`: per API key, :func:`limits_by_key` and
  :func:`openai_limits`: rate-limit headers). :class:`FakeTokenEndpoint` is an Entra
  ID (Azure AD) token endpoint; :func:`register_flavor` with a :class:`FlavorSpec`
  adds a provider. ``FakeUpstream(prompt_cache=True)`` caches prompts as the provider
  does (:class:`PromptCache`) and reports it in the provider's usage fields.
- **A gateway in a thread** (:mod:`.gateway`): :class:`GatewayServer` serves a
  :func:`config_from` configuration (with the client key :data:`GATEWAY_KEY`) with the
  installed plugins plus ``plugins=[...]``; :func:`openai_models` points model names
  at a fake.
- **Real processes** (:mod:`.processes`): a real Redis (:func:`redis_server`: the
  machine's, or a ``redis-server`` of its own, stopped after; a fresh key prefix per
  test with :meth:`RedisServer.namespace`), and :class:`GatewayProcesses`, real
  ``clasp serve`` processes on one configuration (workers, replicas).
- **A load balancer** (:mod:`.balancer`): :class:`Haproxy`, Debian's haproxy in front
  of :class:`GatewayProcesses` replicas with the recommended settings
  (:data:`HAPROXY_CONFIG`: health checks on ``/ready``, retries on a dead replica).
- **Databases** (:mod:`.databases`): :func:`postgres_server` (the machine's PostgreSQL,
  started when down; :meth:`PostgresServer.database` creates a fresh database and
  drops it after) and :func:`sqlite_file`, for a plugin's storage on both dialects.
- **Time** (:mod:`.clock`): :class:`FakeClock`, a clock a test moves, for components
  that take one (windows, cooldowns, expiries are tested without sleeping).
- **pytest fixtures** (:mod:`.pytest_plugin`, loaded by the ``pytest11`` entry point):
  ``fake_upstream``, ``start_gateway`` (typed :data:`StartGateway`), ``redis_server``,
  ``postgres_server``, ``postgres_url``, ``sqlite_url`` and ``database_url`` (both dialects).

Nothing here imports pytest but :mod:`.pytest_plugin`, and the gateway never imports
this package: it costs nothing at run time.
"""

from __future__ import annotations

from .apps import AppThread, load_module
from .balancer import HAPROXY_CONFIG, Haproxy, haproxy_binary
from .clock import FakeClock
from .databases import PostgresServer, postgres_server, sqlite_file
from .fakes import (
    FLAVORS,
    CacheUse,
    Cut,
    Error,
    FakeTokenEndpoint,
    FakeUpstream,
    Hang,
    Html,
    Malformed,
    PromptCache,
    Raw,
    Reasoning,
    Recorded,
    Reply,
    Script,
    Text,
    ToolCalls,
    by_key,
    limits_by_key,
    openai_limits,
    render_prompt,
)
from .fakes.flavors import FlavorSpec, register_flavor
from .gateway import (
    GATEWAY_KEY,
    UPSTREAM_KEY,
    GatewayServer,
    StartGateway,
    config_from,
    openai_models,
    plugin_manager,
)
from .processes import (
    GatewayProcess,
    GatewayProcesses,
    RedisNamespace,
    RedisServer,
    free_port,
    redis_answers,
    redis_server,
)

__all__ = [
    # fake providers and what they answer; AppThread serves a plugin's own fake
    "AppThread", "FLAVORS", "load_module", "FakeTokenEndpoint", "FakeUpstream", "FlavorSpec", "Recorded", "register_flavor",
    "Cut", "Error", "Hang", "Html", "Malformed", "Raw", "Reasoning", "Reply", "Script", "Text", "ToolCalls",
    "by_key", "limits_by_key", "openai_limits",
    # providers' prompt caches in the fakes (FakeUpstream(prompt_cache=True))
    "CacheUse", "PromptCache", "render_prompt",
    # a gateway in a thread
    "GATEWAY_KEY", "UPSTREAM_KEY", "GatewayServer", "StartGateway", "config_from", "openai_models", "plugin_manager",
    # real databases: a fresh PostgreSQL database, a SQLite file
    "PostgresServer", "postgres_server", "sqlite_file",
    # time that moves when told
    "FakeClock",
    # real processes: Redis, clasp serve
    "GatewayProcess", "GatewayProcesses", "RedisNamespace", "RedisServer", "free_port", "redis_answers",
    "redis_server",
    # a real load balancer (haproxy) in front of replicas
    "HAPROXY_CONFIG", "Haproxy", "haproxy_binary",
]

"""clasp-gateway: serve Claude Code and OpenAI clients from any LLM provider.

This module is the public API: everything a plugin may use is importable from
``clasp_gateway`` itself (``from clasp_gateway import hookimpl, Upstream``), typed
(the package ships ``py.typed``) and listed in ``__all__``. The submodules
(``clasp_gateway.shell``, ``.wire``, ``.shaping``...) are the gateway's own
internals and may change between releases; ``tests/test_architecture.py`` keeps the
bundled plugins on this surface.

The names, by what a plugin does with them:

- **Hooks**: :data:`hookimpl`, :func:`await_me_maybe`, :func:`skips_text_deltas` (an
  ``on_stream_chunk`` that needs no plain text delta; :func:`is_text_delta` is the
  test, :data:`TEXT_DELTA_KEYS` its keys), and for a plugin's own hooks
  :func:`call_first` and :func:`call_each`; the :class:`Gateway` a hook or route is
  handed (``request.app.state.gateway``); the typed ``register`` callbacks of the
  ``register_*`` hooks (:class:`RegisterProvider`, :class:`RegisterRoute`...) and
  :class:`RegistrationError`.
- **Request classes** (computed once per request, ``ctx.classes``):
  :class:`RequestClass`, :class:`RequestFeatures`, :class:`Classifier`.
- **The canonical format**: :data:`CanonicalRequest`, :data:`Chunk`, :data:`KEEPALIVE`,
  :func:`completion_to_chunk`, :func:`chunks_to_completion`, and for plugins that judge
  answers :func:`collect_tool_arguments` (:func:`note_tool_arguments` for a delta's calls) and
  :func:`invalid_tool_arguments`; what travels with a
  request: :class:`RequestContext`, :class:`RequestHints`, :class:`Principal`,
  :class:`Usage`, :class:`Attempt`, :class:`UpstreamStream`; a deployment:
  :class:`Deployment`, :class:`ModelInfo`, :class:`Timeouts`, :class:`Secret`.
- **Errors**: :class:`GatewayError` and its kinds, each with its HTTP status and its
  Anthropic and OpenAI shapes.
- **Configuration**: :class:`Config`, :func:`resolve_secret`, and the schema helpers
  (:class:`Section`, :class:`Field`, :class:`Integer`...) a plugin's own section is
  checked with.
- **Routes** (``register_routes``): :func:`authenticate`, :func:`require_role` (admin
  routes under ``/admin/``, whose docstrings make ``GET /admin/openapi.json``), the
  key's model allowlist (:func:`may_use_model`, :func:`check_model_access`), residency (:func:`region_allowed`, :func:`inside_regions`), :func:`read_json`,
  :func:`request_headers`, :func:`json_response`, :func:`error_response`,
  :func:`note_access`, :func:`status_of`, whether the client came over https
  (:func:`is_https`: cookies' ``Secure`` flag), :func:`check_message_count`, the served
  model names (:func:`served_models`, :func:`describe_model`), and :func:`serve_stream`
  with a :class:`StreamEncoder` to stream an answer in one's own API format (an
  :class:`EventStreamResponse`).
- **Providers** (``register_providers``): :class:`ProviderAdapter` (what to
  implement), :class:`Providers` (what ``bind`` receives) and :class:`Upstream`, the
  call helper (pooled session, the deployment's timeouts, key rotation, bounded
  reads within :class:`ReadLimits`, status errors), with the stream decoders
  :class:`SSEDecoder` and :class:`NDJSONDecoder`; a provider's defaults
  (:func:`provider_profile`) and health (:func:`probe_deployment`); LiteLLM's provider
  knowledge through the transform path
  (:class:`TransformAdapter`, :class:`EventReader`, :func:`prepare_body`,
  :func:`response_fixer`); the request's prompt-cache breakpoints
  (:func:`has_marks`, :func:`strip_marks`, :func:`prompt_cache_key`).
- **Secrets**: :func:`redact`, :func:`redact_bytes`, :func:`register_secret`; secret
  backends (``register_secret_backends``: :class:`SecretBackend`,
  :class:`RegisterSecretBackend`, :class:`SecretLookupError`).
- **Tracing**: :func:`set_upstream_headers` (a ``traceparent`` for the upstream calls
  of this request), :func:`upstream_headers`.
- **Retention** (``register_data_stores``): :class:`DataSelection` (what a store's
  ``purge`` deletes), :class:`RegisterDataStore`, :func:`delete_data`.
- **Records** (ledger, keys, analytics): :class:`Database` (``gateway.database``,
  SQLAlchemy async Core over ``storage:``), :class:`BulkInsert` (a background writer's
  batch straight to the driver: multi-row statements on SQLite, ``executemany`` on
  PostgreSQL), migrations registered as
  :class:`MigrationRegistration` (``register_migrations``), :class:`StorageSettings`,
  :class:`DatabaseError`, :class:`MigrationError`.
- **Shared state** (breakers, limits, counters, caches; shared by workers and
  replicas when configured): :class:`StateBackend` (``gateway.state``) and its parts;
  :data:`UNAVAILABLE_KEY`, where the core notes the candidates a permission check
  skipped. :class:`Handover` (``gateway.handover``): objects a plugin keeps across
  reloads while the settings that shape them are unchanged (an in-memory cache,
  Prometheus counters).
- **Tokens and context**: :func:`estimate_tokens`, :func:`count_canonical`,
  :func:`encoding_for_model`, :func:`get_encoding`, :func:`is_context_overflow`.
- **Per-request facts** computed once and shared by plugins: :func:`input_estimate`
  (``estimate_tokens`` of the request) and :func:`request_fingerprint`
  (:class:`RequestFingerprint`: the prompt and conversation digests).
- **Server tools** (``register_tools``): :class:`ToolContext`.
- **Prices**: :func:`request_cost` (what a usage cost on a deployment, from its prices).
- **Prices** (LiteLLM's price map, read once): :func:`raw_model_entry`, the bundled
  map (:func:`bundled_price_map_path`) and a newer one installed over it
  (:func:`price_map_path` in the gateway's :func:`data_dir`, :func:`reload_price_map`).
"""

from .canonical import (
    chunks_to_completion,
    collect_tool_arguments,
    completion_to_chunk,
    invalid_tool_arguments,
    note_tool_arguments,
)
from .classes import Classifier, RequestClass, RequestFeatures, build_classifier
from .classes import features as request_features
from .config import Config, ConfigError, load_config, parse_config, resolve_secret
from .errors import (
    ApiError,
    AuthenticationError,
    ConfigurationError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    UpstreamError,
)
from .handover import Handover
from .hookspecs import hookimpl
from .pipeline import Gateway, request_cost
from .plugins import TEXT_DELTA_KEYS, await_me_maybe, call_each, call_first, is_text_delta, skips_text_deltas
from .policy import check_model_access, inside_regions, may_use_model, region_allowed
from .redact import redact, redact_bytes, register_secret
from .registrations import (
    CacheBackendRegistration,
    CommandRegistration,
    ConfigSectionRegistration,
    MigrationRegistration,
    ProviderRegistration,
    RegisterCacheBackend,
    RegisterCommand,
    RegisterConfigSection,
    RegisterMigrations,
    RegisterProvider,
    RegisterRequestClass,
    RegisterRoute,
    RegisterRoutingStrategy,
    RegisterTool,
    RegistrationError,
    RequestClassRegistration,
    RouteRegistration,
    RoutingStrategyRegistration,
    ToolRegistration,
)
from .request_facts import RequestFingerprint, input_estimate, request_fingerprint
from .retention import DataSelection, DataStoreRegistration, RegisterDataStore, delete_data
from .secrets import RegisterSecretBackend, SecretBackend, SecretBackendRegistration, SecretLookupError
from .shaping.context import estimate_tokens, is_context_overflow
from .shaping.long_answers import CONTINUED_HEADER, REWRITTEN_KEY
from .shaping.schema import clean_schema
from .shaping.server_tools import ToolContext
from .shaping.tokens import count_canonical, encoding_for_model, get_encoding, tiktoken_cache_dir
from .shell.access import note as note_access
from .shell.admin import require_role
from .shell.http import (
    EventStreamResponse,
    authenticate,
    error_response,
    is_https,
    json_response,
    read_json,
    request_headers,
)
from .shell.limits import MAX_OUTPUT_TOKENS, check_message_count
from .shell.openai_api import list_models as list_openai_models
from .shell.openai_api import retrieve_model as retrieve_openai_model
from .shell.openai_api import status_of
from .shell.served import ServedModel, created_timestamps, describe_model, served_models
from .shell.streaming import StreamEncoder, serve_stream
from .state import (
    RateWindow,
    Reservation,
    Script,
    ScriptTx,
    StateBackend,
    StateSettings,
    StateUnavailable,
    Subscription,
    create_state,
    parse_state_settings,
)
from .state.ops import WINDOW_LUA, store_window, window_counts
from .storage import Database, DatabaseError, MigrationError, StorageSettings, data_dir, parse_storage_settings
from .storage.bulk import BulkInsert
from .storage.standalone import database_for
from .tracing import set_upstream_headers, upstream_headers
from .types import (
    KEEPALIVE,
    Attempt,
    CanonicalRequest,
    Chunk,
    Deployment,
    KeyPolicy,
    ModelInfo,
    Principal,
    RequestContext,
    RequestHints,
    Secret,
    Timeouts,
    UpstreamStream,
    Usage,
)
from .validation import (
    Anything,
    Boolean,
    Choice,
    Custom,
    Duration,
    Field,
    Integer,
    Invalid,
    ListOf,
    MapOf,
    Number,
    Reference,
    Section,
    String,
    did_you_mean,
)
from .wire.catalog import (
    PRICE_MAP_FILE,
    ProviderProfile,
    bundled_price_map_path,
    price_map_path,
    provider_profile,
    raw_model_entry,
    reload_price_map,
)
from .wire.credentials import RefreshingToken
from .wire.ndjson import NDJSONDecoder
from .wire.permissions import UNAVAILABLE_KEY
from .wire.probe import ProbeResult, probe_deployment
from .wire.prompt_cache import has_marks, prompt_cache_key, strip_marks
from .wire.providers import ProviderAdapter, Providers
from .wire.quirks import prepare_body, response_fixer
from .wire.reads import FrameTooLarge, ReadLimits
from .wire.sse import SSEDecoder
from .wire.transform import EventReader, TransformAdapter
from .wire.upstream import Upstream, UpstreamRequest, parse_retry_after

__version__ = "0.1.0"

__all__ = [
    # hooks and the gateway
    "Gateway", "Handover", "await_me_maybe", "call_each", "call_first", "hookimpl", "is_text_delta", "skips_text_deltas", "TEXT_DELTA_KEYS",
    # typed registration callbacks (register_* hooks) and what they record
    "CacheBackendRegistration", "RegisterCacheBackend",
    "CommandRegistration", "ConfigSectionRegistration", "ProviderRegistration", "RegisterCommand",
    "RegisterConfigSection", "RegisterProvider", "RegisterRequestClass", "RegisterRoute", "RegisterRoutingStrategy",
    "RegisterTool", "RegistrationError", "RequestClassRegistration", "RouteRegistration", "RoutingStrategyRegistration",
    "ToolRegistration",
    # request classes, computed once per request
    "Classifier", "RequestClass", "RequestFeatures", "build_classifier", "request_features",
    # the canonical format and what travels with a request
    "KEEPALIVE", "Attempt", "CanonicalRequest", "Chunk", "Deployment", "KeyPolicy", "ModelInfo", "Principal", "RequestContext",
    "RequestHints", "Secret", "Timeouts", "UpstreamStream", "Usage", "chunks_to_completion", "collect_tool_arguments", "completion_to_chunk", "note_tool_arguments",
    "invalid_tool_arguments",
    # errors
    "ApiError", "AuthenticationError", "ConfigurationError", "GatewayError", "InvalidRequestError", "NotFoundError",
    "OverloadedError", "PermissionDeniedError", "RateLimitError", "RequestTooLargeError", "UpstreamError",
    # configuration and its schema helpers
    "Anything", "Boolean", "Choice", "Config", "ConfigError", "Custom", "Duration", "Field", "Integer", "Invalid",
    "ListOf", "MapOf", "Number", "Reference", "Section", "String", "did_you_mean", "load_config", "parse_config",
    "resolve_secret",
    # routes
    "MAX_OUTPUT_TOKENS", "EventStreamResponse", "ServedModel", "StreamEncoder", "authenticate", "check_message_count", "created_timestamps",
    "describe_model", "error_response", "is_https", "json_response", "list_openai_models", "note_access", "read_json",
    "check_model_access", "inside_regions", "may_use_model", "region_allowed", "request_headers", "require_role", "retrieve_openai_model", "serve_stream", "served_models", "status_of",
    # providers: the call helper and LiteLLM's knowledge
    "EventReader", "FrameTooLarge", "NDJSONDecoder", "ProbeResult", "ProviderAdapter", "ProviderProfile", "Providers",
    "ReadLimits", "SSEDecoder", "TransformAdapter", "Upstream", "UpstreamRequest", "parse_retry_after", "prepare_body",
    "probe_deployment", "provider_profile", "response_fixer",
    # provider prompt caches: the canonical request's cache breakpoints (wire/prompt_cache.py)
    "has_marks", "prompt_cache_key", "strip_marks",
    # token-based credentials (OAuth, Azure AD): fetched before they expire, one refresh at a time
    "RefreshingToken",
    # secrets: redaction, and secret backends (register_secret_backends)
    "redact", "redact_bytes", "register_secret",
    "RegisterSecretBackend", "SecretBackend", "SecretBackendRegistration", "SecretLookupError",
    # per-request headers a plugin adds to upstream calls (tracing: traceparent)
    "set_upstream_headers", "upstream_headers",
    # retention and deletion (register_data_stores): what a store's purge receives
    "DataSelection", "DataStoreRegistration", "RegisterDataStore", "delete_data",
    # shared state (clasp_gateway/state/): gateway.state is a StateBackend
    "RateWindow", "Reservation", "Script", "ScriptTx", "StateBackend", "StateSettings", "StateUnavailable",
    "Subscription", "WINDOW_LUA", "create_state", "parse_state_settings", "store_window", "window_counts",
    # records (clasp_gateway/storage/): gateway.database, plugins' migrations
    "BulkInsert", "Database", "DatabaseError", "MigrationError", "MigrationRegistration", "RegisterMigrations",
    "StorageSettings",
    "database_for", "parse_storage_settings",
    # permission checks: the candidates the core skipped (ctx.state[UNAVAILABLE_KEY])
    "UNAVAILABLE_KEY",
    # tokens, context, schemas, server tools
    "ToolContext", "clean_schema", "count_canonical", "encoding_for_model", "estimate_tokens", "get_encoding",
    "is_context_overflow", "tiktoken_cache_dir",
    # per-request facts, computed once (clasp_gateway/request_facts.py)
    "RequestFingerprint", "input_estimate", "request_fingerprint",
    # long answers (shaping/long_answers.py): a body the gateway wrote, the header saying so
    "CONTINUED_HEADER", "REWRITTEN_KEY",
    # prices: what a deployment's usage cost (budgets, the ledger)
    "request_cost",
    # prices and the data dir: LiteLLM's price map, a newer one installed over it (clasp prices update)
    "PRICE_MAP_FILE", "bundled_price_map_path", "data_dir", "price_map_path", "raw_model_entry", "reload_price_map",
    "__version__",
]

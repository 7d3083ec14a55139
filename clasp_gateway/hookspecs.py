"""The hooks plugins implement, grouped by phase.

Hooks are synchronous pluggy hooks; a hook that needs to do async work returns an
awaitable (or a callable returning one), or is an ``async def``, and the core awaits it
(see :func:`clasp_gateway.plugins.await_me_maybe`). ``firstresult`` hooks are called
with :func:`clasp_gateway.plugins.call_first`: each implementation in pluggy's order
(last registered first; ``tryfirst``/``trylast`` respected), each answer awaited, the
first that is not ``None`` wins and later implementations are not called. Bookkeeping
hooks (``after_attempt``, ``on_stream_chunk``, ``record``) are isolated: an exception
is logged once per request and counted (``Gateway.hook_failures``), never fails the
answer, and the other plugins still run. Every hook here is documented in
``docs/plugin_hooks.md`` and exercised by a test (``tests/test_hookspecs.py`` checks both).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .config import Config
    from .pipeline import Gateway
    from .registrations import (
        RegisterCacheBackend,
        RegisterCommand,
        RegisterConfigSection,
        RegisterMigrations,
        RegisterProvider,
        RegisterRequestClass,
        RegisterRoute,
        RegisterRoutingStrategy,
        RegisterTool,
    )
    from .retention import RegisterDataStore
    from .secrets import RegisterSecretBackend
    from .types import Attempt, CanonicalRequest, Chunk, Deployment, RequestContext

hookspec = pluggy.HookspecMarker("clasp")
hookimpl = pluggy.HookimplMarker("clasp")
"""Marks a plugin's hook implementations: ``@hookimpl def record(ctx, event): ...``."""


# --- registration: called once per app, each gets a ``register`` callback ------------------
#
# Each ``register`` has a real signature (positional or keyword arguments alike), checks
# its arguments at once and records them as a frozen dataclass naming the plugin
# (``clasp_gateway.registrations``). A bad argument, or a name another registration
# already has (two plugins registering a provider ``bedrock``), is a start-up error naming
# the plugin(s): a :class:`~clasp_gateway.registrations.RegistrationError`.


@hookspec
def register_routes(register: RegisterRoute) -> None:
    """Add HTTP routes: ``register(path, endpoint, methods=["POST"], name=None)``.

    ``endpoint`` is a Starlette endpoint ``async def endpoint(request) -> Response``;
    ``request.app.state.gateway`` is the :class:`~clasp_gateway.pipeline.Gateway`.
    Routes ignore the query string (Claude Code adds ``?beta=true``). A plugin route
    takes precedence over a core route of the same path; two plugins may not both
    register one path and method. Recorded as a
    :class:`~clasp_gateway.registrations.RouteRegistration`.
    """


@hookspec
def register_providers(register: RegisterProvider) -> None:
    """Add provider adapters: ``register(name, adapter)``.

    ``adapter`` implements :class:`clasp_gateway.ProviderAdapter`; a
    deployment whose ``provider`` equals ``name`` is served by it instead of the
    built-in paths. An ``open`` that declares ``ctx`` receives the request's
    context; an adapter with ``bind(providers)`` is handed the gateway's
    :class:`~clasp_gateway.Providers` (its call helper ``providers.upstream``, or
    delegate to ``providers.builtin_for(deployment)``). One plugin per provider name
    (:class:`~clasp_gateway.ProviderRegistration`).
    """


@hookspec
def register_routing_strategies(register: RegisterRoutingStrategy) -> None:
    """Add routing strategies: ``register(name, strategy)`` where ``strategy`` is
    ``(ctx, deployments) -> ordered deployments`` (may return an awaitable). Names are
    unique across plugins (:class:`~clasp_gateway.registrations.RoutingStrategyRegistration`);
    ``gateway.strategies`` maps each name to its strategy."""


@hookspec
def register_commands(register: RegisterCommand) -> None:
    """Add ``clasp`` CLI sub-commands: ``register(name, function, help="")`` where
    ``function(argv: list[str], config_path: str) -> int``. Names are unique across
    plugins (:class:`~clasp_gateway.registrations.CommandRegistration`). A two-word
    name (``"report experiment"``) adds a sub-command beside another plugin's command:
    ``clasp report experiment X`` runs it with ``["X"]``, before ``report`` is asked."""


@hookspec
def register_tools(register: RegisterTool) -> None:
    """Add server-side tools the gateway runs itself:
    ``register(name, description, input_schema, handler)``.

    ``name`` matches ``^[a-zA-Z0-9_-]{1,64}$`` and is unique across plugins;
    ``input_schema`` is a JSON Schema with ``"type": "object"``;
    ``handler(arguments: dict, ctx: ToolContext) -> str`` (or an awaitable of one)
    returns the text the model reads (``ctx``:
    :class:`clasp_gateway.ToolContext`, with the request context and the
    config). A plain function runs in a worker thread, so it may block; a coroutine
    function runs on the event loop. An exception or a timeout becomes an error result
    the model sees. Registering offers nothing yet: ``server_tools:`` in clasp.yaml says
    which requests get which tools
    (:class:`~clasp_gateway.registrations.ToolRegistration`).
    """


@hookspec
def register_config_sections(register: RegisterConfigSection) -> None:
    """Declare the top-level clasp.yaml sections this plugin reads: ``register(name)``.

    A top-level key that neither the core nor a loaded plugin declares is an error
    (a typo such as ``model:``, or the section of a plugin that is not loaded), so a
    plugin with a section of its own must declare it. Check its content in
    :func:`validate_config`. A section has one owner: a core section, or one another
    plugin declares, is an error
    (:class:`~clasp_gateway.registrations.ConfigSectionRegistration`).
    """


@hookspec
def register_request_classes(register: RegisterRequestClass) -> None:
    """Add request classes: ``register(name, predicate, description="", after=None)``.

    ``predicate(features: RequestFeatures) -> bool`` looks at cheap facts about the
    canonical request (:class:`~clasp_gateway.classes.RequestFeatures`: estimated input
    tokens, tools offered, tool results, images, thinking, ``max_tokens``...); it runs
    once per request, in the core, before ``resolve_route``, so keep it cheap and free
    of I/O. A plugin class is tried before the built-in ones (``background``,
    ``long_context``, ``images``, ``thinking``, ``coding``, ``question``), or right
    after the class named by ``after``; the first class that matches is the request's
    ``ctx.request_class``, and every class that matches is in ``ctx.traits``. A
    predicate that raises counts as "no match". Names are unique (built-in ones
    included) (:class:`~clasp_gateway.registrations.RequestClassRegistration`).
    """


@hookspec
def register_cache_backends(register: RegisterCacheBackend) -> None:
    """Add response-cache backends: ``register(name, factory)``.

    ``factory(**kwargs)`` builds the backend a cache plugin keeps its entries in when
    its configuration names ``name`` (clasp-cache: ``cache.backend``); the keyword
    arguments are the cache plugin's (clasp-cache passes ``limits``, ``clock``,
    ``options`` and ``gateway``, and its backends implement
    ``clasp_cache.backends.base.CacheBackend``). clasp-cache registers ``memory`` and
    ``redis`` this way; a plugin adds another store (Memcached, a database) without
    touching it. Names are unique across plugins; ``gateway.cache_backends`` maps each
    name to its :class:`~clasp_gateway.registrations.CacheBackendRegistration`.
    """


@hookspec
def register_secret_backends(register: RegisterSecretBackend) -> None:
    """Add a secret backend: ``register(scheme, factory, settings=None)``.

    clasp.yaml references ``scheme:path`` (``vault:secret/llm/openai#api_key``) are
    resolved by the backend registered for ``scheme``; ``${VAR}`` and ``file:/path``
    are built in. ``factory(options)`` builds the backend once per configuration from
    its ``secrets.<scheme>:`` section, checked with ``settings`` (a :class:`Section`;
    ``None``: the backend takes no settings). The backend's ``resolve(path)`` returns
    the secret or raises :class:`~clasp_gateway.SecretLookupError` with a hint; it runs
    when the configuration loads, never per request, and every value it returns is
    redacted from logs and errors. Only installed plugins (entry points) provide
    backends: secrets are resolved before ``plugins.paths`` is read. See
    :mod:`clasp_gateway.secrets`.
    """


@hookspec
def register_data_stores(register: RegisterDataStore) -> None:
    """Add a data store: ``register(name, purge, description="")``.

    ``purge(gateway, selection)`` (async) deletes the plugin's records that a
    :class:`~clasp_gateway.DataSelection` names (created before ``selection.before``,
    of ``selection.key_id``, of ``selection.team``: every field given must match), in
    batches of ``selection.batch``, and returns how many records went. The core calls
    it from the retention job (``retention.max_age.<name>``) and for deletions on
    demand (``clasp data delete``, ``POST /admin/data/delete``; ``selection.actor``
    names who asked). See :mod:`clasp_gateway.retention`.
    """


@hookspec
def register_migrations(register: RegisterMigrations) -> None:
    """Add database migrations: ``register(MigrationRegistration(name="ledger",
    directory=Path(__file__).parent / "migrations"))``.

    Each registration is its own Alembic branch: ``name`` is its branch label (a
    lower-case word), ``directory`` holds its revision files, the first with
    ``down_revision = None`` and ``branch_labels = ("ledger",)``. Write them with
    ``alembic.op`` (``op.create_table(...)``) and portable types: the same files run on
    SQLite and PostgreSQL. A gateway with any registration has a database
    (``gateway.database``, a :class:`~clasp_gateway.storage.Database` over ``storage:``)
    and upgrades every branch to its head when it starts (``storage.auto_migrate``,
    default true; replicas starting together take turns), or with ``clasp db upgrade``.
    One branch per name, one name per directory
    (:class:`~clasp_gateway.registrations.MigrationRegistration`).
    """


# --- configuration ---------------------------------------------------------------------------


@hookspec
def validate_config(config: Config, gateway: Gateway) -> Any:
    """Check this plugin's part of the configuration; return its problems as a list
    of ``"key.path: what was expected, got what"`` strings (or ``None``).

    Called by ``clasp check`` and by ``clasp serve`` before it binds (and by every
    ``create_app``), after the core's sections were checked and the
    :class:`~clasp_gateway.pipeline.Gateway` was built, not started (``gateway.strategies``,
    ``gateway.resolve_model``, ``config.deployments()`` are there). Both commands then
    agree: a file ``check`` accepts, ``serve`` serves. The
    :class:`~clasp_gateway.validation.Section` schema helpers check a section in a
    few lines. Raising :class:`~clasp_gateway.config.ConfigError` works too; any other
    exception is reported as the plugin's failure. Keep it free of I/O beyond the
    filesystem: probing upstreams is ``clasp check``'s job, not this hook's.
    """


# --- lifecycle ------------------------------------------------------------------------------


@hookspec
def startup(app: Starlette, config: Config) -> Any:
    """Called once before the app serves; may return an awaitable (open pools, load
    state). Raise to refuse to start, with a message for a person."""


@hookspec
def shutdown(app: Starlette) -> Any:
    """Called once when the app stops; may return an awaitable (flush, close)."""


@hookspec
def prepare_workers(config: Config, workers: int) -> Any:
    """``clasp serve`` with ``workers`` > 1, in the supervising process, before it starts
    the worker processes: return a context manager (or ``None``) that is entered around
    the workers' whole life and exited after the last one stopped.

    For what every worker must share and that only exists per run: an environment
    variable the workers inherit and a directory to remove at the end (Prometheus
    multiprocess mode needs both). A worker is a fresh interpreter, so anything set here
    in ``os.environ`` is there before any worker imports a plugin."""


@hookspec
def asgi_wrapper(config: Config) -> Any:
    """Return a function ``app -> app`` wrapping the whole ASGI app (tracing, custom
    auth), or ``None``."""


# --- per request ----------------------------------------------------------------------------


@hookspec(firstresult=True)
def authenticate(api_key: str | None, headers: dict[str, str], config: Config, path: str) -> Any:
    """Decide who the caller is (first answer wins).

    ``path`` is the request's path (``""`` when the gateway is asked outside a
    request): a plugin may accept its credential on some routes only (clasp-oidc's
    single sign-on identities on ``/admin/`` unless configured otherwise). An
    implementation may leave out any argument it does not need.

    Return a :class:`~clasp_gateway.types.Principal` (or an awaitable of one) to
    accept, raise :class:`~clasp_gateway.errors.AuthenticationError` to refuse,
    return ``None`` (an ``async def`` may too) to let the next plugin decide. The
    core's default (``trylast``) accepts the keys listed under ``keys:`` in
    clasp.yaml. An answer that is not a ``Principal``, or none at all, is a 401.
    """


@hookspec(firstresult=True)
def resolve_route(
    ctx: RequestContext, request: CanonicalRequest, candidates: list[Deployment]
) -> Any:
    """Order (or filter) the deployments that may serve this request.

    ``candidates`` is the chain configured for the public model name, in file order.
    ``ctx.request_class`` and ``ctx.traits`` are already set (computed once per request).
    Return a new list (or an awaitable of one), or ``None`` to keep the order and let
    the next plugin decide (first answer wins). A ``wrapper=True`` implementation
    receives the awaited answer.
    """


@hookspec(firstresult=True)
def before_call(ctx: RequestContext, request: CanonicalRequest) -> Any:
    """Called once before any upstream attempt. Return a list of canonical chunks
    (or an awaitable of one) to answer without calling upstream (a cache hit), or
    ``None``. Raise a GatewayError to refuse (a budget exceeded). The first plugin
    that answers wins; the ones after it are not called."""


@hookspec
def before_round(ctx: RequestContext, request: CanonicalRequest) -> Any:
    """Called before each later upstream round of the same client request (the
    gateway ran server tools and asks the model again; it continues a cut answer),
    with that round's request: ``before_call`` is called once per client request, so
    this is where a plugin sees what the gateway added (tool results, the partial
    answer). Raise a GatewayError to refuse the round; may return an awaitable.
    Every implementation is called, each awaited in turn."""


@hookspec
def before_side_call(ctx: RequestContext, deployment: Deployment, purpose: str) -> Any:
    """The gateway or a plugin is about to send this request's conversation (or part
    of it) to ``deployment`` on its own account, not as an attempt (``purpose``:
    ``"context_summary"``, a summariser condensing what a trim drops; ``"shadow"``, an
    experiment's background copy). Return ``False`` (or an awaitable of it) to skip
    that deployment; every implementation is called. ``before_attempt`` is not called
    for such calls. A plugin making such a call asks ``Gateway.may_side_call``."""


@hookspec
def before_attempt(ctx: RequestContext, deployment: Deployment, attempt_number: int) -> Any:
    """Called before each upstream attempt. Return ``False`` (or an awaitable of it)
    to skip this deployment (an open circuit breaker)."""


@hookspec(firstresult=True)
def hedge_delay(ctx: RequestContext, deployment: Deployment, attempt_number: int) -> Any:
    """An attempt on ``deployment`` is starting: return the seconds after which, if it
    has not committed (no first byte), the pipeline starts the next candidate in
    parallel (a hedge) and keeps whichever commits first, or ``None`` for no hedge.
    Called for the first attempt on a deployment that has a candidate after it, never
    for a hedge itself (at most one hedge per attempt). The hedge candidate passes every check a fallback
    passes (regions, permissions, ``before_attempt``: breakers, limits, budgets). May
    return an awaitable. First answer wins."""


@hookspec(firstresult=True)
def start_hedge(ctx: RequestContext, deployment: Deployment, candidate: Deployment) -> Any:
    """The hedge delay of an attempt on ``deployment`` passed without a first byte,
    and ``candidate`` would be started beside it: return ``False`` to not hedge now
    (a spent hedge budget), anything else to go on. Called before ``candidate``'s
    ``before_attempt``. May return an awaitable. First answer wins."""


@hookspec(firstresult=True)
def on_error(
    ctx: RequestContext, deployment: Deployment, error: Exception, attempt_number: int
) -> Any:
    """An attempt failed before its first chunk reached the client.

    Return a float (seconds) to retry the same deployment after that delay, a list
    of canonical chunks to answer with instead (graceful degradation), ``"next"``
    to try the next candidate, ``"fail"`` to give up now, or ``None`` for the
    default (next candidate if the error is retryable, else fail) and let the next
    plugin decide (first answer wins). May return an awaitable.
    """


@hookspec(firstresult=True)
def on_exhausted(ctx: RequestContext, request: CanonicalRequest, error: Exception) -> Any:
    """Every candidate failed or was skipped (open breakers); nothing reached the client.

    ``error`` is the last attempt's error, or a 529 ``OverloadedError`` when no
    deployment was even tried. Return a list of canonical chunks to answer with
    (graceful degradation: a stale cached answer, a canned reply; set
    ``ctx.response_headers["x-clasp-degraded"]`` to say which), a ``GatewayError``
    to fail with instead, or ``None`` to fail with ``error`` (or let the next plugin
    decide: first answer wins). May return an awaitable.
    """


@hookspec
def after_attempt(ctx: RequestContext, attempt: Attempt) -> Any:
    """An attempt ended (success or failure; for streams, when the stream ended).
    Use it for circuit breakers and latency statistics. An exception is logged and
    counted, never fails the answer."""


@hookspec
def on_stream_chunk(ctx: RequestContext, chunk: Chunk) -> None:
    """Called for every canonical chunk sent to the client (and for the chunks a
    whole, non-streaming answer is assembled from, so a cache sees them). Keep it cheap; it is
    only called when at least one plugin implements it. An implementation that needs no
    plain text delta (it reads finish reasons, tool calls, usage) says so with
    ``@skips_text_deltas`` under ``@hookimpl``: when every implementation does, streams
    do not call the hook for text deltas at all. An exception is logged (once per
    request) and counted; the stream goes on."""


@hookspec
def record(ctx: RequestContext, event: dict[str, Any]) -> Any:
    """Receive events: ``kind: "attempt"`` after every upstream attempt, ``kind:
    "tool_call"`` after every server tool call (name, duration_ms, ok), ``kind:
    "context_summary"`` after the gateway summarised a conversation that did not fit
    (usage, cost), ``kind: "feedback"`` when a plugin stored a client's feedback on an
    earlier request (clasp-analytics' ``POST /v1/feedback``: ``request_id``, ``score``,
    ``metrics``, ``deployment``...; ``ctx`` is then a minimal context for that request
    id, not a request being served), and one ``kind: "request"`` per request that reached the pipeline,
    after the answer ended (complete, failed before any upstream answered, or cut),
    with key, team, usage, cost (``None`` when the deployment's prices could not be
    applied), status, latency and attempts. ``attempt`` and ``request`` events carry
    the request's class (``request_class``, and ``traits`` on the request event: see
    :attr:`~clasp_gateway.types.RequestContext.request_class`). May return an awaitable. An exception is
    logged and counted, never fails the answer, and other plugins still get the event.

    The ``request`` event's fields: ``request_id``, ``api``, ``public_model``,
    ``request_class``, ``traits``; who: ``key_id``, ``key_name``, ``team``, ``project``
    (the key's), ``user`` (``ctx.user``: the person behind a shared key), ``tags``
    (``ctx.tags``, a dict); where: ``deployment``, ``provider``, ``model``, ``region``
    (the deployment's ``region:``), all ``None`` when no deployment answered; what:
    ``stream``, ``status``, ``error``, ``cut`` (the stream was cut: ``usage`` is then
    the partial usage), ``usage`` (``input_tokens``, ``output_tokens``,
    ``cache_read_input_tokens``, ``cache_creation_input_tokens``,
    ``reasoning_tokens``), ``cost_usd`` (a provider-reported cost wins over the price
    map: ``pipeline.request_cost``), ``cache_hit`` (``"exact"|"semantic"|"stale"`` or
    ``None``) and ``saved_usd`` (what the hit saved); how: ``latency_ms``, ``ttfb_ms``,
    ``attempts`` (a list: deployment, ok, error, ms), ``retries`` (attempts on the
    same deployment as the one before), ``fallbacks`` (attempts on another one),
    ``continued`` (extra calls that continued a long answer, ``long_answers:``; the
    cost is then the sum of the attempts' costs); when: ``started_at`` (unix seconds the request started) and ``time`` (when it
    ended). The ``attempt`` event: ``request_id``, ``attempt`` (1, 2, ... in order),
    ``public_model``, ``request_class``, ``deployment``, ``provider``, ``model``,
    ``region``, ``ok``, ``error``, ``upstream_status``, ``ms``, ``ttfb_ms``, ``usage``
    (the attempt's, zeros for a failed one), ``cost_usd`` (that attempt's cost),
    ``started_at``, ``time``."""


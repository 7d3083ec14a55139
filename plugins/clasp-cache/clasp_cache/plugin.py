"""clasp-cache's hooks: the ``cache:`` section, the ``memory`` and ``redis`` backends,
the per-app runtime (:mod:`.runtime`), ``/admin/cache`` (:mod:`.admin`) and ``clasp
cache`` (:mod:`.cli`).

Inert without a ``cache:`` section: nothing is registered per request, so a gateway
without a cache pays nothing for the plugin being installed.
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

from starlette.applications import Starlette

from clasp_gateway import (
    Config,
    Gateway,
    RegisterCacheBackend,
    RegisterCommand,
    RegisterConfigSection,
    RegisterDataStore,
    RegisterRoute,
    hookimpl,
    resolve_secret,
)

from .admin import RUNTIME_KEY, cache_endpoint, clear_endpoint
from .backends.base import BackendLimits, CacheBackend, SemanticLayer
from .backends.memory import MemoryBackend
from .backends.redis import RedisBackend
from .cli import main as cli_main
from .keys import config_namespace
from .runtime import CacheCounts, CacheRuntime
from .settings import CacheSettings, parse_settings

log = logging.getLogger("clasp.cache")

RUNTIME_PLUGIN = "cache.runtime"
"""Name of the per-app runtime in the app's plugin manager."""
KEPT_BACKEND = "clasp_cache.backend"
"""Name of the backend in the gateway's handover: a reload whose cache keys are shaped
the same (same backend, same namespace) keeps it, with the answers it holds."""
KEPT_COUNTS = "clasp_cache.counts"
"""Name of the hit, miss and store counts in the gateway's handover: every reload keeps them."""
_APP_ATTR = RUNTIME_KEY.replace(".", "_")


def memory_backend(*, limits: BackendLimits, clock: Any = time.time, **_: Any) -> CacheBackend:
    """The ``memory`` backend (the default)."""
    return MemoryBackend(limits, clock)


def redis_backend(*, limits: BackendLimits, clock: Any = time.time, options: dict[str, Any],
                  gateway: Gateway | None = None, **_: Any) -> CacheBackend:
    """The ``redis`` backend: ``backend_options.url``, else the ``state:`` section's Redis.

    Either may be a secret reference (``${REDIS_URL}``, ``file:/run/secrets/redis_url``:
    the URL holds the password), resolved here like every secret of clasp.yaml."""
    where, url = "cache.backend_options.url", options.get("url")
    if not url and gateway is not None:
        state = gateway.config.raw.get("state") or {}
        where, url = "state.url", state.get("url") if isinstance(state, dict) else None
    if not url:
        raise ValueError("cache.backend_options.url: required for the redis backend (or a state: section with a Redis url)")
    secret = resolve_secret(url)
    if not secret.value:
        raise ValueError(f"{where}: {secret.describe()} does not resolve ({secret.hint})")
    return RedisBackend(limits, clock, url=secret.value, prefix=options.get("prefix", "clasp:cache:"),
                        timeout=float(options.get("timeout", 0.25)),
                        max_connections=int(options.get("max_connections", 32)))


@hookimpl
def register_cache_backends(register: RegisterCacheBackend) -> None:
    register("memory", memory_backend)
    register("redis", redis_backend)


@hookimpl
def register_data_stores(register: RegisterDataStore) -> None:
    """``cache``: cached answers, for retention and deletion (:mod:`.retention`)."""
    from .retention import purge

    register("cache", purge, "cached answers (and their semantic vectors)")


@hookimpl
def register_config_sections(register: RegisterConfigSection) -> None:
    register("cache")


@hookimpl
def prepare_workers(config: Config, workers: int) -> None:
    """Say so when several workers would each keep their own cache (``memory``)."""
    problems: list[str] = []
    settings = parse_settings(config.raw.get("cache"), problems)
    if not problems and settings.enabled and settings.backend == "memory":
        log.warning("cache.backend memory with %d workers: each worker keeps its own cached answers (a hit on "
                    "one is a miss on another; answers stay correct); cache.backend: redis shares them", workers)


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    register("/admin/cache", cache_endpoint, methods=["GET", "DELETE"])
    register("/admin/cache/clear", clear_endpoint, methods=["POST"])


@hookimpl
def register_commands(register: RegisterCommand) -> None:
    register("cache", cli_main, "the response cache of a running gateway: stats, clear")


def _semantic_module() -> Any:
    return importlib.import_module("clasp_cache.semantic")


@hookimpl
def validate_config(config: Config, gateway: Gateway) -> list[str] | None:
    """Check ``cache:``: its fields, the backend name, the request classes, the semantic part."""
    if "cache" not in config.raw:
        return None
    problems: list[str] = []
    settings = parse_settings(config.raw.get("cache"), problems)
    if settings.backend not in gateway.cache_backends:
        known = ", ".join(sorted(gateway.cache_backends))
        problems.append(f"cache.backend: no cache backend named {settings.backend!r} (backends: {known})")
    if settings.backend == "redis" and not settings.backend_options.get("url"):
        state = config.raw.get("state") or {}
        if not (isinstance(state, dict) and state.get("url")):
            problems.append("cache.backend_options.url: required for the redis backend (or a state: url)")
    classes = set(gateway.classifier.names)
    for glob, policy in [("", settings.default), *settings.routes]:
        for name in sorted(policy.request_classes - classes):
            where = f"cache.routes.{glob}.request_classes" if glob else "cache.request_classes"
            problems.append(f"{where}: no request class {name!r} (classes: {', '.join(sorted(classes))})")
    semantic = settings.semantic
    if semantic is not None:
        try:
            module = _semantic_module()
        except ImportError:
            problems.append("cache.semantic: the semantic layer is not installed (pip install 'clasp-cache[semantic]')")
        else:
            module.SETTINGS.parse(semantic, "cache.semantic", problems)
    return problems


def _build(app: Starlette, config: Config) -> CacheRuntime | None:
    gateway: Gateway = app.state.gateway
    problems: list[str] = []
    settings: CacheSettings = parse_settings(config.raw.get("cache"), problems)
    if problems or not settings.enabled:
        return None  # (validate_config reported the problems before start-up)
    registration = gateway.cache_backends[settings.backend]
    clock = getattr(app.state, "cache_clock", None) or time.time
    namespace = config_namespace(config.raw)
    built: list[CacheBackend] = []

    def build() -> CacheBackend:
        built.append(registration.factory(limits=settings.limits, clock=clock, options=settings.backend_options,
                                          gateway=gateway))
        return built[0]

    # A reload keeps the running backend while the keys it holds are the new
    # configuration's too: the namespace hashes every section that shapes an answer or
    # a key (``cache:`` included, so limits and scope), the clock is the same. Else the
    # memory backend's answers can never be served again: dropped at once.
    backend = gateway.handover.adopt(KEPT_BACKEND, (settings.backend, namespace, clock), build,
                                     replaced=_drop_local)
    semantic: SemanticLayer | None = None
    if isinstance(settings.semantic, dict) and settings.semantic.get("enabled"):
        try:
            module = _semantic_module()  # imported only when on: torch stays out of start-up otherwise
            semantic = module.build(module.SETTINGS.parse(settings.semantic, "cache.semantic", []), backend)
        except BaseException:
            gateway.handover.release(KEPT_BACKEND, backend)
            raise
    counts = gateway.handover.adopt(KEPT_COUNTS, None, CacheCounts)

    def release() -> bool:
        gateway.handover.release(KEPT_COUNTS, counts)
        return gateway.handover.release(KEPT_BACKEND, backend)

    return CacheRuntime(gateway, settings, backend, namespace, clock=clock, semantic=semantic,
                        opened=not built, release=release, counts=counts)


def _drop_local(backend: CacheBackend) -> None:
    """A replaced memory backend's entries are another configuration's: free them now
    (a shared backend's stay: replicas not yet reloaded still serve them)."""
    if isinstance(backend, MemoryBackend):
        backend.clear()


@hookimpl
async def startup(app: Starlette, config: Config) -> None:
    """Build this app's cache (settings, backend, namespace) and register its per-request hooks."""
    if "cache" not in config.raw:
        return
    runtime = _build(app, config)
    if runtime is None:
        return
    setattr(app.state, _APP_ATTR, runtime)  # first: a backend that fails to open is still released
    if not runtime.opened:
        await runtime.backend.open()
        runtime.opened = True
    app.state.gateway.pm.register(runtime, name=RUNTIME_PLUGIN)
    # on_stream_chunk became implemented after the gateway was built: tell it.
    app.state.gateway.chunk_hook = True
    log.info("response cache on: backend %s, ttl %.0fs, scope %s", runtime.backend.name,
             runtime.settings.default.ttl, runtime.settings.scope)


@hookimpl
async def shutdown(app: Starlette) -> None:
    runtime: CacheRuntime | None = getattr(app.state, _APP_ATTR, None)
    if runtime is None:
        return
    pm = app.state.gateway.pm
    if pm.has_plugin(RUNTIME_PLUGIN):
        pm.unregister(name=RUNTIME_PLUGIN)
    setattr(app.state, _APP_ATTR, None)
    await runtime.close()

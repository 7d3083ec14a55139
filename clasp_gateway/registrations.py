"""What plugins register, as typed records: the ``register`` callbacks of the
``register_*`` hooks and the collectors the core reads them with.

Every ``register_*`` hook receives a ``register`` callable with a real signature
(``register(name, adapter)``, ``register(path, endpoint, methods=("POST",), name=None)``...),
so a plugin may pass its arguments by position or by keyword
(``register(name="bedrock", adapter=a)`` is ``register("bedrock", a)``). Each call is
checked at once and becomes a frozen record (:class:`ProviderRegistration`,
:class:`RouteRegistration`...) naming the plugin that made it; the core reads records
by attribute, never arguments by position.

A bad registration is a start-up error naming the plugin (a :class:`RegistrationError`,
which ``clasp serve`` and ``clasp check`` print for a person), never a ``TypeError``
deep in the core at the first request. So is a name two registrations share (two
providers called ``bedrock``, two tools called ``docs_lookup``, two routes for the
same path and method): the error names both plugins, because "the last one wins"
would silently change which code serves a request depending on load order.

The hooks are called one implementation at a time, in pluggy's order (the last
registered first; ``tryfirst``/``trylast`` respected), each with a ``register`` bound
to that plugin.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .classes import Classifier, Predicate, RequestClass, build_classifier

if TYPE_CHECKING:
    import pluggy
    from starlette.requests import Request
    from starlette.responses import Response

    from .plugins import PluginManager
    from .types import Deployment, RequestContext

__all__ = [
    "CacheBackendRegistration",
    "CommandRegistration",
    "ConfigSectionRegistration",
    "MigrationRegistration",
    "ProviderRegistration",
    "RegisterCacheBackend",
    "RegisterCommand",
    "RegisterConfigSection",
    "RegisterMigrations",
    "RegisterProvider",
    "RegisterRequestClass",
    "RegisterRoute",
    "RegisterRoutingStrategy",
    "RegisterTool",
    "RegistrationError",
    "RequestClassRegistration",
    "RouteRegistration",
    "RoutingStrategyRegistration",
    "ToolRegistration",
    "cache_backends",
    "commands",
    "config_sections",
    "migrations",
    "providers",
    "request_classes",
    "request_classifier",
    "routes",
    "routing_strategies",
    "tools",
]


class RegistrationError(RuntimeError):
    """A plugin registered something invalid, or a name another registration has.

    The message names the plugin (both plugins, for a duplicate) and the hook. A
    ``RuntimeError``, so ``clasp serve`` and ``clasp check`` print it without a
    traceback and exit 2."""


Endpoint = Callable[["Request"], Awaitable["Response"]]
"""A Starlette endpoint: ``async def endpoint(request) -> Response``."""

RoutingStrategy = Callable[["RequestContext", "list[Deployment]"], Any]
"""``(ctx, deployments) -> ordered deployments`` (or an awaitable of them)."""

CommandFunction = Callable[[list[str], str], Any]
"""``function(argv, config_path) -> exit code`` (``None`` counts as 0)."""

ToolHandler = Callable[[dict[str, Any], Any], Any]
"""``handler(arguments, ctx: ToolContext) -> str`` (or an awaitable of one)."""

CacheBackendFactory = Callable[..., Any]
"""``factory(**kwargs) -> backend``: the keyword arguments are the cache plugin's
(clasp-cache: ``limits``, ``clock``, ``options``, ``gateway``)."""


# --- the records --------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class RouteRegistration:
    """An HTTP route a plugin adds (``register_routes``)."""

    path: str
    endpoint: Endpoint
    methods: tuple[str, ...]
    """Upper-case HTTP methods."""
    name: str | None
    plugin: str
    """The plugin that registered it (for error messages and ``/-/plugins``)."""


@dataclass(slots=True, frozen=True)
class ProviderRegistration:
    """A provider adapter serving the deployments whose ``provider`` is ``name``."""

    name: str
    adapter: Any
    """A :class:`~clasp_gateway.wire.providers.ProviderAdapter` (anything with ``open``)."""
    plugin: str


@dataclass(slots=True, frozen=True)
class RoutingStrategyRegistration:
    """A routing strategy, by name (``register_routing_strategies``)."""

    name: str
    strategy: RoutingStrategy
    plugin: str


@dataclass(slots=True, frozen=True)
class CommandRegistration:
    """A ``clasp NAME ...`` sub-command (``register_commands``)."""

    name: str
    function: CommandFunction
    help: str
    plugin: str


@dataclass(slots=True, frozen=True)
class ToolRegistration:
    """A server-side tool (``register_tools``); ``server_tools:`` says who gets it."""

    name: str
    description: str
    input_schema: dict[str, Any]
    handler: ToolHandler
    plugin: str


@dataclass(slots=True, frozen=True)
class ConfigSectionRegistration:
    """A top-level clasp.yaml section a plugin reads (``register_config_sections``)."""

    name: str
    plugin: str


@dataclass(slots=True, frozen=True)
class RequestClassRegistration:
    """A request class a plugin adds (``register_request_classes``)."""

    name: str
    predicate: Predicate
    description: str
    after: str | None
    """The class this one goes right after; ``None``: before every built-in class."""
    plugin: str


@dataclass(slots=True, frozen=True)
class CacheBackendRegistration:
    """A response-cache backend, by name (``register_cache_backends``)."""

    name: str
    factory: CacheBackendFactory
    plugin: str


@dataclass(slots=True, frozen=True)
class MigrationRegistration:
    """A plugin's database migrations (``register_migrations``): an Alembic branch.

    ``name`` is the branch label (``"ledger"``): the first revision in ``directory``
    has ``down_revision = None`` and ``branch_labels = ("ledger",)``, later ones follow
    it. ``directory`` holds the revision files (``Path(__file__).parent /
    "migrations"``). ``plugin`` is filled in by ``register``."""

    name: str
    directory: Path
    plugin: str = ""


# --- the register callables, as plugins see them --------------------------------------------------


class RegisterRoute(Protocol):
    """``register`` of ``register_routes``."""

    def __call__(
        self, path: str, endpoint: Endpoint, methods: Iterable[str] = ("POST",), name: str | None = None
    ) -> RouteRegistration: ...


class RegisterProvider(Protocol):
    """``register`` of ``register_providers``."""

    def __call__(self, name: str, adapter: Any) -> ProviderRegistration: ...


class RegisterRoutingStrategy(Protocol):
    """``register`` of ``register_routing_strategies``."""

    def __call__(self, name: str, strategy: RoutingStrategy) -> RoutingStrategyRegistration: ...


class RegisterCommand(Protocol):
    """``register`` of ``register_commands``."""

    def __call__(self, name: str, function: CommandFunction, help: str = "") -> CommandRegistration: ...


class RegisterTool(Protocol):
    """``register`` of ``register_tools``."""

    def __call__(
        self, name: str, description: str, input_schema: dict[str, Any], handler: ToolHandler
    ) -> ToolRegistration: ...


class RegisterConfigSection(Protocol):
    """``register`` of ``register_config_sections``."""

    def __call__(self, name: str) -> ConfigSectionRegistration: ...


class RegisterMigrations(Protocol):
    """``register`` of ``register_migrations``: ``register(MigrationRegistration(name=...,
    directory=...))``, or ``register(name, directory)``."""

    def __call__(
        self, registration: MigrationRegistration | str, directory: Path | str | None = None
    ) -> MigrationRegistration: ...


class RegisterRequestClass(Protocol):
    """``register`` of ``register_request_classes``."""

    def __call__(
        self, name: str, predicate: Predicate, description: str = "", after: str | None = None
    ) -> RequestClassRegistration: ...


class RegisterCacheBackend(Protocol):
    """``register`` of ``register_cache_backends``."""

    def __call__(self, name: str, factory: CacheBackendFactory) -> CacheBackendRegistration: ...


_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_PROVIDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_COMMAND_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}( [A-Za-z0-9][A-Za-z0-9_-]{0,63})?$")
_SECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_BRANCH_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class _Bad(Exception):
    """A registration's argument is wrong; the collector names the plugin and hook."""


def _name(value: Any, what: str, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise _Bad(f"{what} {value!r} {rule}")
    return value


def _callable(value: Any, what: str) -> None:
    if not callable(value):
        raise _Bad(f"{what} must be callable, got {type(value).__name__}")


def _route_register(plugin: str, out: list[RouteRegistration]) -> RegisterRoute:
    def register(
        path: str, endpoint: Endpoint, methods: Iterable[str] = ("POST",), name: str | None = None
    ) -> RouteRegistration:
        """Add the HTTP route ``path`` served by ``endpoint`` for ``methods``."""
        if not isinstance(path, str) or not path.startswith("/"):
            raise _Bad(f"path must be a string starting with '/', got {path!r}")
        _callable(endpoint, f"the endpoint of {path}")
        listed = [methods] if isinstance(methods, str) else methods
        try:
            verbs = tuple(dict.fromkeys(str(m).upper() for m in listed))
        except TypeError:
            raise _Bad(f"methods of {path} must be a list such as ['GET'], got {methods!r}") from None
        unknown = [m for m in verbs if m not in _HTTP_METHODS]
        if not verbs or unknown:
            raise _Bad(f"methods of {path} must be HTTP methods such as ['GET'] or ['POST'], got {methods!r}")
        if name is not None and not isinstance(name, str):
            raise _Bad(f"name of {path} must be a string or None, got {name!r}")
        record = RouteRegistration(path, endpoint, verbs, name, plugin)
        out.append(record)
        return record

    return register


def _provider_register(plugin: str, out: list[ProviderRegistration]) -> RegisterProvider:
    def register(name: str, adapter: Any) -> ProviderRegistration:
        """Serve deployments whose ``provider`` is ``name`` (``model: name/...``) with ``adapter``."""
        _name(name, "provider name", _PROVIDER_NAME, "must be a word such as 'bedrock' (letters, digits, _ . -)")
        _callable(getattr(adapter, "open", None), f"the adapter of provider {name!r} (its open method)")
        record = ProviderRegistration(name, adapter, plugin)
        out.append(record)
        return record

    return register


def _strategy_register(plugin: str, out: list[RoutingStrategyRegistration]) -> RegisterRoutingStrategy:
    def register(name: str, strategy: RoutingStrategy) -> RoutingStrategyRegistration:
        """Add the routing strategy ``name``: ``strategy(ctx, deployments)`` orders them."""
        _name(name, "strategy name", _NAME, "must be a word such as 'cheapest' (letters, digits, _ . : -)")
        _callable(strategy, f"strategy {name!r}")
        record = RoutingStrategyRegistration(name, strategy, plugin)
        out.append(record)
        return record

    return register


def _command_register(plugin: str, out: list[CommandRegistration]) -> RegisterCommand:
    def register(name: str, function: CommandFunction, help: str = "") -> CommandRegistration:
        """Add ``clasp NAME ...``: ``function(argv, config_path)`` returns the exit code."""
        _name(name, "command name", _COMMAND_NAME, "must be a word such as 'keys' (letters, digits, _ -), or two such as 'report experiment'")
        _callable(function, f"the function of command {name!r}")
        if not isinstance(help, str):
            raise _Bad(f"help of command {name!r} must be a string, got {type(help).__name__}")
        record = CommandRegistration(name, function, help, plugin)
        out.append(record)
        return record

    return register


def _tool_register(plugin: str, out: list[ToolRegistration]) -> RegisterTool:
    def register(name: str, description: str, input_schema: dict[str, Any], handler: ToolHandler) -> ToolRegistration:
        """Add the server-side tool ``name``; ``handler(arguments, ctx)`` returns its text."""
        _name(name, "tool name", _TOOL_NAME, "must match ^[a-zA-Z0-9_-]{1,64}$")
        if not isinstance(description, str) or not description.strip():
            raise _Bad(f"tool {name!r} needs a description (the model reads it)")
        if not isinstance(input_schema, dict) or input_schema.get("type") != "object":
            raise _Bad(f"tool {name!r} needs a JSON Schema with \"type\": \"object\"")
        if not callable(handler):
            raise _Bad(f"the handler of tool {name!r} is not callable")
        record = ToolRegistration(name, description, input_schema, handler, plugin)
        out.append(record)
        return record

    return register


def _section_register(plugin: str, out: list[ConfigSectionRegistration]) -> RegisterConfigSection:
    def register(name: str) -> ConfigSectionRegistration:
        """Declare the top-level clasp.yaml section ``name`` as this plugin's."""
        _name(name, "section name", _SECTION_NAME, "must be a YAML key such as 'cache' (letters, digits, _ -)")
        record = ConfigSectionRegistration(name, plugin)
        out.append(record)
        return record

    return register


def _migrations_register(plugin: str, out: list[MigrationRegistration]) -> RegisterMigrations:
    def register(
        registration: MigrationRegistration | str, directory: Path | str | None = None
    ) -> MigrationRegistration:
        """Add the Alembic branch ``registration.name`` whose revisions are in ``registration.directory``."""
        where: Any
        if isinstance(registration, MigrationRegistration):
            if directory is not None:
                raise _Bad("pass a MigrationRegistration, or a name and a directory, not both")
            name, where = registration.name, registration.directory
        else:
            name, where = registration, directory
        _name(name, "migration branch", _BRANCH_NAME,
              "must be a lower-case word such as 'ledger' (letters, digits, _; 32 at most)")
        if not isinstance(where, (str, Path)):
            raise _Bad(f"the directory of migration branch {name!r} must be a path, got {type(where).__name__}")
        path = Path(where)
        if not path.is_dir():
            raise _Bad(f"the directory of migration branch {name!r} does not exist: {path}")
        record = dataclasses.replace(
            registration if isinstance(registration, MigrationRegistration) else MigrationRegistration(name, path),
            directory=path.absolute(), plugin=plugin)
        out.append(record)
        return record

    return register


def _class_register(plugin: str, out: list[RequestClassRegistration]) -> RegisterRequestClass:
    def register(
        name: str, predicate: Predicate, description: str = "", after: str | None = None
    ) -> RequestClassRegistration:
        """Add the request class ``name``: ``predicate(features) -> bool``."""
        _name(name, "request class name", _NAME, "must be a word such as 'review' (letters, digits, _ . : -)")
        _callable(predicate, f"the predicate of request class {name!r}")
        if not isinstance(description, str):
            raise _Bad(f"description of request class {name!r} must be a string")
        if after is not None and not isinstance(after, str):
            raise _Bad(f"after= of request class {name!r} must be a class name or None, got {after!r}")
        record = RequestClassRegistration(name, predicate, description, after, plugin)
        out.append(record)
        return record

    return register


def _cache_backend_register(plugin: str, out: list[CacheBackendRegistration]) -> RegisterCacheBackend:
    def register(name: str, factory: CacheBackendFactory) -> CacheBackendRegistration:
        """Add the response-cache backend ``name``, built by ``factory(**kwargs)``."""
        _name(name, "cache backend name", _PROVIDER_NAME, "must be a word such as 'redis' (letters, digits, _ . -)")
        _callable(factory, f"the factory of cache backend {name!r}")
        record = CacheBackendRegistration(name, factory, plugin)
        out.append(record)
        return record

    return register


_USAGE = {
    "register_routes": "register(path, endpoint, methods=['POST'], name=None)",
    "register_providers": "register(name, adapter)",
    "register_routing_strategies": "register(name, strategy)",
    "register_commands": "register(name, function, help='')",
    "register_tools": "register(name, description, input_schema, handler)",
    "register_config_sections": "register(name)",
    "register_request_classes": "register(name, predicate, description='', after=None)",
    "register_cache_backends": "register(name, factory)",
    "register_migrations": "register(MigrationRegistration(name='ledger', directory=Path(...)))",
}

_WHAT = {
    "register_routes": "a route for",
    "register_providers": "a provider named",
    "register_routing_strategies": "a routing strategy named",
    "register_commands": "a command named",
    "register_tools": "a tool named",
    "register_config_sections": "the config section",
    "register_request_classes": "a request class named",
    "register_cache_backends": "a cache backend named",
    "register_migrations": "the migration branch",
}


# --- calling the hooks ----------------------------------------------------------------------------

R = TypeVar("R")
Factory = Callable[[str, list[R]], Callable[..., R]]


def plugin_label(impl: pluggy.HookImpl) -> str:
    """How messages name the plugin of ``impl``: its registered name, or for an object
    registered without one (pluggy names it by ``id``), its class."""
    name = impl.plugin_name
    if name.isdigit():
        plugin = impl.plugin
        kind = plugin.__name__ if inspect.ismodule(plugin) else type(plugin).__name__
        return f"{kind} (registered without a name)"
    return name


def call_registration(function: Callable[..., Any], hook: str, plugin: str, factory: Factory[R]) -> list[R]:
    """Call one plugin's ``hook`` implementation ``function`` with a ``register`` bound
    to ``plugin``; return its records. Any mistake is a :class:`RegistrationError`
    naming the plugin and the hook."""
    records: list[R] = []
    prefix = f"plugin {plugin!r}: {hook}"
    try:
        function(register=factory(plugin, records))
    except RegistrationError:
        raise
    except _Bad as exc:
        raise RegistrationError(f"{prefix}: {exc}") from None
    except TypeError as exc:  # most often the call itself: a missing or unknown argument
        raise RegistrationError(f"{prefix}: {exc} (call {_USAGE.get(hook, 'register(...)')})") from exc
    except Exception as exc:
        raise RegistrationError(f"{prefix} failed: {type(exc).__name__}: {exc}") from exc
    return records


def _collect(pm: PluginManager, hook: str, factory: Factory[R], key: Callable[[R], Iterable[Any]]) -> list[R]:
    """Every registration of ``hook``, in pluggy's call order; a key (``key(record)``)
    two registrations share is an error naming both plugins."""
    caller = getattr(pm.hook, hook)
    records: list[R] = []
    for impl in reversed(caller.get_hookimpls()):
        plugin = plugin_label(impl)
        if impl.wrapper or impl.hookwrapper:
            raise RegistrationError(f"plugin {plugin!r}: {hook} cannot be a hook wrapper (register directly)")
        if "register" not in impl.argnames:
            continue  # (pluggy allows it) an implementation without ``register`` adds nothing
        records += call_registration(impl.function, hook, plugin, factory)
    check_unique(hook, records, key)
    return records


def check_unique(hook: str, records: Iterable[R], key: Callable[[R], Iterable[Any]]) -> None:
    """Raise a :class:`RegistrationError` naming both plugins when two records share a key."""
    owners: dict[Any, str] = {}
    for record in records:
        plugin: str = getattr(record, "plugin")  # noqa: B009 (every record has one)
        for k in key(record):
            first = owners.get(k)
            if first is None:
                owners[k] = plugin
                continue
            what = f"{_WHAT.get(hook, 'something named')} {_describe(k)}"
            who = (f"the plugin {plugin!r} registers {what} twice" if first == plugin
                   else f"the plugins {first!r} and {plugin!r} both register {what}")
            raise RegistrationError(f"{hook}: {who}; each name belongs to one registration (remove one)")


def _describe(key: Any) -> str:
    if isinstance(key, tuple):
        return " ".join(str(part) for part in key)
    return repr(key)


def routes(pm: PluginManager) -> list[RouteRegistration]:
    """The routes plugins add (``register_routes``); one path and method, one plugin."""
    return _collect(pm, "register_routes", _route_register, lambda r: ((m, r.path) for m in r.methods))


def providers(pm: PluginManager) -> list[ProviderRegistration]:
    """The provider adapters plugins add (``register_providers``), unique by name."""
    return _collect(pm, "register_providers", _provider_register, lambda r: (r.name,))


def routing_strategies(pm: PluginManager) -> list[RoutingStrategyRegistration]:
    """The routing strategies plugins add (``register_routing_strategies``), unique by name."""
    return _collect(pm, "register_routing_strategies", _strategy_register, lambda r: (r.name,))


def commands(pm: PluginManager) -> list[CommandRegistration]:
    """The ``clasp`` sub-commands plugins add (``register_commands``), unique by name."""
    return _collect(pm, "register_commands", _command_register, lambda r: (r.name,))


def tools(pm: PluginManager) -> list[ToolRegistration]:
    """The server-side tools plugins add (``register_tools``), unique by name."""
    return _collect(pm, "register_tools", _tool_register, lambda r: (r.name,))


def config_sections(pm: PluginManager) -> list[ConfigSectionRegistration]:
    """The top-level sections plugins declare (``register_config_sections``), one owner each."""
    return _collect(pm, "register_config_sections", _section_register, lambda r: (r.name,))


def sections_declared_by(function: Callable[..., Any], plugin: str) -> list[ConfigSectionRegistration]:
    """What one plugin's ``register_config_sections`` declares, called outside a plugin
    manager (for plugins installed but not loaded)."""
    return call_registration(function, "register_config_sections", plugin, _section_register)


def request_classes(pm: PluginManager) -> list[RequestClassRegistration]:
    """The request classes plugins add (``register_request_classes``), unique by name."""
    return _collect(pm, "register_request_classes", _class_register, lambda r: (r.name,))


def cache_backends(pm: PluginManager) -> list[CacheBackendRegistration]:
    """The response-cache backends plugins add (``register_cache_backends``), unique by name."""
    return _collect(pm, "register_cache_backends", _cache_backend_register, lambda r: (r.name,))


def migrations(pm: PluginManager) -> list[MigrationRegistration]:
    """The database migrations plugins add (``register_migrations``): one branch per
    name, one name per directory."""
    return _collect(pm, "register_migrations", _migrations_register, lambda r: (r.name, r.directory))


def request_classifier(pm: PluginManager, settings: Mapping[str, Any]) -> Classifier:
    """The gateway's :class:`~clasp_gateway.classes.Classifier`: the built-in classes
    with ``settings`` (``classes:`` of clasp.yaml) and every plugin class. A plugin
    class named like a built-in one, or placed ``after`` a class nobody defines, is a
    :class:`RegistrationError` naming the plugin."""
    registered = request_classes(pm)
    builtin = set(build_classifier(settings).names)
    names = builtin | {r.name for r in registered}
    for r in registered:
        if r.name in builtin:
            raise RegistrationError(f"plugin {r.plugin!r}: register_request_classes: {r.name!r} is a built-in "
                                    f"request class; give yours another name")
        if r.after is not None and (r.after not in names or r.after == r.name):
            raise RegistrationError(f"plugin {r.plugin!r}: register_request_classes: class {r.name!r}: "
                                    f"after={r.after!r} names no other class (classes: {', '.join(sorted(names))})")
    try:
        return build_classifier(settings, [(RequestClass(r.name, r.predicate, r.description), r.after)
                                           for r in registered])
    except ValueError as exc:  # e.g. classes placed after each other in a circle
        plugins = ", ".join(sorted({repr(r.plugin) for r in registered}))
        raise RegistrationError(f"register_request_classes (plugins {plugins}): {exc}") from None

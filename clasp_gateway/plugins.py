"""Plugin discovery and the per-app plugin manager.

Plugins are found in installed packages through the ``clasp`` entry-point group and
in ``plugins.paths`` of clasp.yaml (module names or ``.py`` files). The environment
variable ``CLASP_LOAD_PLUGINS`` (comma-separated entry-point or module names; empty
means none) restricts what loads, which keeps tests and debugging exact. Each app
builds its own manager, so two apps in one process never share plugins.

Hooks are synchronous pluggy hooks whose implementations may return awaitables, so the
core never lets pluggy pick an answer: pluggy's ``firstresult`` would take an
un-awaited coroutine (which may resolve to ``None``, "I defer") as the answer.
:func:`call_first` and :func:`call_each` walk the implementations themselves, in
pluggy's call order, awaiting each result.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pluggy

from . import hookspecs

log = logging.getLogger("clasp.plugins")

PROJECT = "clasp"


@dataclass(slots=True)
class PluginInfo:
    """What ``GET /-/plugins`` and ``clasp plugins`` show for one plugin."""

    name: str
    version: str | None
    hooks: list[str]
    source: str
    module: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "hooks": self.hooks,
            "source": self.source,
            "module": self.module,
        }


async def await_me_maybe(value: Any) -> Any:
    """Resolve a hook result that may be a value, a coroutine or a callable."""
    if callable(value) and not inspect.isclass(value):
        value = value()
    if inspect.isawaitable(value):
        value = await value
    return value


HookFailure = Callable[[str, Exception], None]
"""``(plugin name, exception)``: told about an implementation (or a hook wrapper) that
raised, by :func:`call_each` and :func:`call_each_sync`."""

_WRAPPER = "(a hook wrapper)"


def _call(impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> Any:
    """Call one implementation with the arguments it declares (as pluggy does)."""
    args = [kwargs[name] for name in impl.argnames]
    kwargnames = getattr(impl, "kwargnames", ())
    if kwargnames:
        return impl.function(*args, **{name: kwargs[name] for name in kwargnames if name in kwargs})
    return impl.function(*args)


class _Wrappers:
    """The ``wrapper=True`` (and old-style ``hookwrapper=True``) implementations of one
    call: entered before the plain implementations run, left after, outermost last,
    exactly as pluggy's own call loop does."""

    __slots__ = ("_teardowns",)

    def __init__(self) -> None:
        self._teardowns: list[tuple[bool, Generator[Any, Any, Any]]] = []

    def __bool__(self) -> bool:
        return bool(self._teardowns)

    def enter(self, impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> None:
        gen = _call(impl, kwargs)
        try:
            next(gen)
        except StopIteration:
            raise RuntimeError(f"hook wrapper {impl.plugin_name}.{impl.function.__name__} did not yield") from None
        self._teardowns.append((bool(impl.hookwrapper), gen))

    def leave(self, result: Any, error: BaseException | None) -> Any:
        """The result after every wrapper has seen (and maybe replaced) it."""
        for old_style, gen in reversed(self._teardowns):
            if old_style:
                outcome = pluggy.Result(result, error)
                try:
                    gen.send(outcome)
                except StopIteration:
                    pass
                else:
                    raise RuntimeError("an old-style hook wrapper yielded twice")
                try:
                    result, error = outcome.get_result(), None
                except BaseException as exc:  # the wrapper kept (or forced) an exception
                    result, error = None, exc
                continue
            try:
                if error is not None:
                    gen.throw(error)
                else:
                    gen.send(result)
            except StopIteration as stop:
                result, error = stop.value, None
                continue
            except BaseException as exc:
                error = exc
                continue
            raise RuntimeError("a hook wrapper yielded twice")
        if error is not None:
            raise error
        return result


def _in_call_order(hook: pluggy.HookCaller, kwargs: dict[str, Any]) -> tuple[_Wrappers, list[pluggy.HookImpl]]:
    """Enter the wrappers; the plain implementations in pluggy's call order (last
    registered first, ``tryfirst``/``trylast`` respected)."""
    wrappers = _Wrappers()
    plain: list[pluggy.HookImpl] = []
    for impl in reversed(hook.get_hookimpls()):
        if impl.wrapper or impl.hookwrapper:
            wrappers.enter(impl, kwargs)
        else:
            plain.append(impl)
    return wrappers, plain


async def call_first(hook: pluggy.HookCaller, **kwargs: Any) -> Any:
    """Call a "first answer wins" hook: the first implementation whose result, once
    awaited, is not ``None`` is the answer; later implementations are not called.

    Used by the core for ``authenticate``, ``resolve_route``, ``before_call``,
    ``on_error`` and ``on_exhausted``. Each result may be a value, a coroutine or a
    callable (:func:`await_me_maybe`); ``async def`` implementations returning ``None``
    to defer therefore defer for real, instead of their coroutine winning as it would
    under pluggy's ``firstresult``. An exception from an implementation propagates
    (through any hook wrappers, as in pluggy). Wrappers see the awaited answer."""
    wrappers, plain = _in_call_order(hook, kwargs)
    answer: Any = None
    error: BaseException | None = None
    try:
        for impl in plain:
            answer = _call(impl, kwargs)
            if answer is not None:  # (None needs no resolving: most implementations defer)
                answer = await await_me_maybe(answer)
                if answer is not None:
                    break
    except BaseException as exc:  # wrappers see it (and may replace it), as in pluggy
        answer, error = None, exc
    if not wrappers:
        if error is not None:
            raise error
        return answer
    # A wrapper may return an awaitable (it cannot await inside its generator).
    return await await_me_maybe(wrappers.leave(answer, error))


async def call_each(hook: pluggy.HookCaller, *, on_failure: HookFailure | None = None, **kwargs: Any) -> list[Any]:
    """Call every implementation in pluggy's call order, awaiting each result in turn;
    return the results that are not ``None``.

    With ``on_failure``, an implementation that raises (or whose awaitable raises) is
    reported to it and the others still run: how the core calls bookkeeping hooks
    (``after_attempt``, ``record``) that must never fail an answer. Without it, the
    first exception propagates."""
    try:
        wrappers, plain = _in_call_order(hook, kwargs)
    except Exception as exc:
        if on_failure is None:
            raise
        on_failure(_WRAPPER, exc)  # a wrapper failed before the call: nobody is told
        return []
    results: list[Any] = []
    error: BaseException | None = None
    try:
        for impl in plain:
            try:
                result = _call(impl, kwargs)
                if result is not None:  # (None needs no resolving: the common bookkeeping case)
                    result = await await_me_maybe(result)
            except Exception as exc:
                if on_failure is None:
                    raise
                on_failure(impl.plugin_name, exc)
                continue
            if result is not None:
                results.append(result)
    except BaseException as exc:
        results, error = [], exc
    if not wrappers:
        if error is not None:
            raise error
        return results
    if on_failure is None:
        out: list[Any] = await await_me_maybe(wrappers.leave(results, error))
        return out
    try:
        out = await await_me_maybe(wrappers.leave(results, error))
    except Exception as exc:  # a failing wrapper is reported like any implementation
        on_failure(_WRAPPER, exc)
        return results
    return out


F = TypeVar("F", bound=Callable[..., Any])

_SKIPS_TEXT = "_clasp_skips_text_deltas"
TEXT_DELTA_KEYS = frozenset({"role", "content", "reasoning_content"})
"""The keys a plain text delta's ``delta`` may have (:func:`is_text_delta`); an encoder
that reports text deltas itself (``StreamEncoder.report_text_deltas``) tests the same."""


def skips_text_deltas(function: F) -> F:
    """Mark an ``on_stream_chunk`` implementation that has nothing to do with a plain
    text delta (:func:`is_text_delta`): the finish reason, tool calls and usage are in
    other chunks. When every implementation is so marked, a streaming route does not
    call the hook for the text deltas of a translated stream (most of a long answer's
    chunks), a dispatch saved per chunk. Put it under ``@hookimpl``."""
    setattr(function, _SKIPS_TEXT, True)
    return function


def is_text_delta(chunk: Any) -> bool:
    """Whether a canonical chunk is only text: one choice, no finish reason, a delta of
    ``content``/``reasoning_content`` (and ``role``) alone, no usage. Called for every
    chunk of a stream whose ``on_stream_chunk`` implementations all skip text deltas:
    the common shape is checked first, anything else is not a text delta."""
    try:
        (choice,) = chunk["choices"]
        delta = choice["delta"]
    except (KeyError, TypeError, ValueError):  # no choices, not one, not a dict, no delta
        return False
    return (type(delta) is dict and type(choice) is dict and choice.get("finish_reason") is None
            and TEXT_DELTA_KEYS.issuperset(delta) and not chunk.get("usage"))


def notifier(hook: pluggy.HookCaller, on_failure: HookFailure, argnames: tuple[str, ...]) -> Callable[..., None]:
    """:func:`call_each_sync` for many calls with the same implementations: resolved
    once, then each call is a loop over plain functions (positional arguments in
    ``argnames`` order). For ``on_stream_chunk``, whose per-chunk cost through pluggy
    (argument lists rebuilt, wrappers looked for) is most of what a cheap
    implementation costs. Implementations registered after this call are not seen;
    with a hook wrapper, each call goes through :func:`call_each_sync`."""
    return HookPlan(hook, argnames).notifier(on_failure)


_PLAIN = frozenset({list, dict, tuple, str, int, float, bool, bytes, frozenset, set})
"""Result types that are never callable nor awaitable: answered as they are, without
:func:`await_me_maybe`."""


class HookPlan:
    """How to call one hook with positional arguments in ``argnames`` order, resolved
    once: its plain implementations in pluggy's call order, each as ``(plugin name,
    function, picks, is_async)``, where ``picks`` are the positions of the arguments it
    declares (``None``: all of them, in order) and ``is_async`` says it is an
    ``async def`` (its coroutine is awaited directly). A call then costs a loop over
    plain functions: no argument lists rebuilt by name, no wrapper search, no
    :func:`await_me_maybe` for a coroutine or a plain answer; a hook nobody implements
    costs one truth test.

    Same semantics as :func:`call_first`, :func:`call_each` and :func:`call_each_sync`
    (which :meth:`first`, :meth:`each` and :meth:`notifier` fall back to when the hook
    has a wrapper). :meth:`PluginManager.plan` keeps one per hook and builds it again
    after a plugin is registered or unregistered; a plan built from a bare
    ``HookCaller`` does not see later registrations."""

    __slots__ = ("hook", "argnames", "impls", "wrapped", "skips_text_deltas")

    def __init__(self, hook: pluggy.HookCaller, argnames: tuple[str, ...]) -> None:
        self.hook = hook
        self.argnames = argnames
        found = hook.get_hookimpls()
        self.wrapped = any(impl.wrapper or impl.hookwrapper for impl in found)
        impls: list[tuple[str, Callable[..., Any], tuple[int, ...] | None, bool]] = []
        for impl in reversed(found):  # pluggy's call order
            if impl.wrapper or impl.hookwrapper:
                continue
            wanted = tuple(impl.argnames)
            picks = None if wanted == argnames else tuple(argnames.index(name) for name in wanted)
            function = impl.function
            keywords = tuple((name, argnames.index(name)) for name in getattr(impl, "kwargnames", ()) or ()
                             if name in argnames)
            if keywords:  # (rare) parameters with defaults are passed by name, as _call does
                function, picks = _by_name(impl.function, picks or tuple(range(len(wanted))), keywords), None
            impls.append((impl.plugin_name, function, picks, inspect.iscoroutinefunction(impl.function)))
        self.impls = tuple(impls)
        self.skips_text_deltas = not self.wrapped and all(
            getattr(impl.function, _SKIPS_TEXT, False) for impl in found)
        """Every implementation is marked :func:`skips_text_deltas`."""

    def __bool__(self) -> bool:
        """Whether anything implements the hook (a wrapper counts)."""
        return bool(self.impls) or self.wrapped

    async def first(self, *args: Any) -> Any:
        """:func:`call_first` with ``args`` in ``argnames`` order."""
        if self.wrapped:
            return await call_first(self.hook, **dict(zip(self.argnames, args, strict=True)))
        for _name, function, picks, is_async in self.impls:
            answer = function(*args) if picks is None else function(*[args[i] for i in picks])
            if is_async:
                answer = await answer
            elif answer is not None and type(answer) not in _PLAIN:
                answer = await await_me_maybe(answer)
            if answer is not None:
                return answer
        return None

    async def each(self, *args: Any, on_failure: HookFailure | None = None) -> list[Any]:
        """:func:`call_each` with ``args`` in ``argnames`` order."""
        if self.wrapped:
            return await call_each(self.hook, on_failure=on_failure, **dict(zip(self.argnames, args, strict=True)))
        results: list[Any] = []
        for name, function, picks, is_async in self.impls:
            try:
                result = function(*args) if picks is None else function(*[args[i] for i in picks])
                if is_async:
                    result = await result
                elif result is not None and type(result) not in _PLAIN:
                    result = await await_me_maybe(result)
            except Exception as exc:
                if on_failure is None:
                    raise
                on_failure(name, exc)
                continue
            if result is not None:
                results.append(result)
        return results

    def notify(self, on_failure: HookFailure, *args: Any) -> None:
        """One :func:`call_each_sync` with ``args`` in ``argnames`` order (for a hook
        called once; :meth:`notifier` for many calls)."""
        if self.wrapped:
            call_each_sync(self.hook, on_failure=on_failure, **dict(zip(self.argnames, args, strict=True)))
            return
        for name, function, picks, _is_async in self.impls:
            try:
                if picks is None:
                    function(*args)
                else:
                    function(*[args[i] for i in picks])
            except Exception as exc:
                on_failure(name, exc)

    def notifier(self, on_failure: HookFailure) -> Callable[..., None]:
        """:func:`call_each_sync` as a function of ``args`` (in ``argnames`` order),
        each failure reported to ``on_failure``; it has this plan's
        ``skips_text_deltas``. Results are ignored, nothing is awaited."""
        if self.wrapped:
            hook, argnames = self.hook, self.argnames

            def wrapped(*args: Any) -> None:
                call_each_sync(hook, on_failure=on_failure, **dict(zip(argnames, args, strict=True)))

            wrapped.skips_text_deltas = False  # type: ignore[attr-defined]
            return wrapped
        impls = self.impls

        def notify(*args: Any) -> None:
            for name, function, picks, _is_async in impls:
                try:
                    if picks is None:
                        function(*args)
                    else:
                        function(*[args[i] for i in picks])
                except Exception as exc:
                    on_failure(name, exc)

        notify.skips_text_deltas = self.skips_text_deltas  # type: ignore[attr-defined]
        return notify


def _by_name(function: Callable[..., Any], picks: tuple[int, ...], keywords: tuple[tuple[str, int], ...]
             ) -> Callable[..., Any]:
    """``function`` called from positional ``args``: ``picks`` positionally, ``keywords``
    (parameters with defaults) by name."""
    def call(*args: Any) -> Any:
        return function(*[args[i] for i in picks], **{name: args[i] for name, i in keywords})

    return call


def call_each_sync(hook: pluggy.HookCaller, *, on_failure: HookFailure, **kwargs: Any) -> None:
    """Call every implementation of a notification hook (results ignored, nothing
    awaited), reporting each failure to ``on_failure`` while the others still run.
    For ``on_stream_chunk``, which runs for every chunk and must stay cheap."""
    try:
        wrappers, plain = _in_call_order(hook, kwargs)
    except Exception as exc:
        on_failure(_WRAPPER, exc)
        return
    for impl in plain:
        try:
            _call(impl, kwargs)
        except Exception as exc:
            on_failure(impl.plugin_name, exc)
    try:
        wrappers.leave([], None)
    except Exception as exc:
        on_failure(_WRAPPER, exc)


def _allowed() -> set[str] | None:
    raw = os.environ.get("CLASP_LOAD_PLUGINS")
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _load_path(spec: str) -> ModuleType:
    if spec.endswith(".py") or os.sep in spec:
        path = Path(spec).resolve()
        name = f"clasp_local_plugin_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"cannot load plugin file {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module
    return importlib.import_module(spec)


class PluginManager(pluggy.PluginManager):
    """A pluggy manager with clasp's hook specs and discovery."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self._plans: dict[str, HookPlan] = {}
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}

    def plan(self, hook_name: str, argnames: tuple[str, ...]) -> HookPlan:
        """The :class:`HookPlan` of ``hook_name`` for arguments in ``argnames`` order,
        kept until a plugin is registered or unregistered (then built again on next
        use). What the core calls per request: pass the same ``argnames`` tuple (a
        constant) every time."""
        plan = self._plans.get(hook_name)
        if plan is None or (plan.argnames is not argnames and plan.argnames != argnames):
            plan = self._plans[hook_name] = HookPlan(getattr(self.hook, hook_name), argnames)
        return plan

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        """pluggy's ``register``; the hooks' plans are built again on next use."""
        try:
            return super().register(plugin, name)
        finally:
            self._plans.clear()

    def unregister(self, plugin: Any | None = None, name: str | None = None) -> Any | None:
        """pluggy's ``unregister``; the hooks' plans are built again on next use."""
        try:
            return super().unregister(plugin, name)
        finally:
            self._plans.clear()

    def add_hookspecs(self, module_or_class: Any) -> None:
        """pluggy's ``add_hookspecs``; the hooks' plans are built again on next use."""
        try:
            super().add_hookspecs(module_or_class)
        finally:
            self._plans.clear()

    def load(self, paths: Iterable[str] = (), *, entry_points: bool = True) -> None:
        """Register the built-in defaults, installed plugins and configured paths."""
        from . import defaults

        self.register(defaults, name="clasp_gateway.defaults")
        allowed = _allowed()
        if entry_points:
            for ep in importlib.metadata.entry_points(group=PROJECT):
                if allowed is not None and ep.name not in allowed:
                    continue
                if self.get_plugin(ep.name) is not None:
                    continue
                try:
                    plugin = ep.load()
                except Exception as exc:  # a broken plugin must say who it is
                    raise RuntimeError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
                self.register(plugin, name=ep.name)
                dist = ep.dist
                self.infos[ep.name] = PluginInfo(
                    name=ep.name,
                    version=dist.version if dist else None,
                    hooks=[],
                    source=f"entry point ({dist.name if dist else '?'})",
                    module=ep.value,
                )
        for spec in paths:
            name = Path(spec).stem if spec.endswith(".py") else spec
            if allowed is not None and name not in allowed and spec not in allowed:
                continue
            if self.get_plugin(name) is not None:
                continue
            module = _load_path(spec)
            self.register(module, name=name)
            self.infos[name] = PluginInfo(
                name=name,
                version=getattr(module, "__version__", None),
                hooks=[],
                source="clasp.yaml plugins.paths",
                module=module.__name__,
            )
        # Catch misspelled hook implementations at start-up, not at the first request.
        self.check_pending()

    def describe(self) -> list[PluginInfo]:
        """Every registered plugin (defaults included) with the hooks it implements."""
        out: list[PluginInfo] = []
        for name, plugin in self.list_name_plugin():
            if name is None:
                continue
            hooks = sorted(h.name for h in self.get_hookcallers(plugin) or [])
            info = self.infos.get(name) or PluginInfo(
                name=name,
                version=getattr(plugin, "__version__", None),
                hooks=[],
                source="built-in" if name.startswith("clasp_gateway") else "registered",
                module=getattr(plugin, "__name__", type(plugin).__name__),
            )
            info.hooks = hooks
            out.append(info)
        return sorted(out, key=lambda i: i.name)

    def has_impls(self, hook_name: str) -> bool:
        """Whether any plugin implements ``hook_name`` (skip per-chunk calls if none)."""
        caller = getattr(self.hook, hook_name)
        return bool(caller.get_hookimpls())

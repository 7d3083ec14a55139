"""Plugin discovery and the per-app plugin manager.

Plugins are found in installed packages through the ``clasp`` entry-point group and
in ``plugins.paths`` of clasp.yaml (module names or ``.py`` files). The environment
variable ``CLASP_LOAD_PLUGINS`` (comma-separated entry-point or module names; empty
means none) restricts what loads, which keeps tests and debugging exact. Each app
builds its own manager, so two apps in one process never share plugins.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

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
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}

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

    def collect(self, hook_name: str, **kwargs: Any) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        """Call a ``register_*`` hook; return each registration's ``(args, kwargs)``."""
        items: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

        def register(*args: Any, **kw: Any) -> None:
            items.append((args, kw))

        getattr(self.hook, hook_name)(register=register, **kwargs)
        return items

"""A real gateway (uvicorn on 127.0.0.1) in a thread of the test process.

For real-socket tests of the gateway and of any plugin: the app is the one ``clasp
serve`` builds (:func:`clasp_gateway.shell.app.create_app`), its plugins loaded as
usual (installed ones, filtered by ``CLASP_LOAD_PLUGINS``) plus the plugin objects a
test hands over, so a plugin is testable before it is installed::

    with FakeUpstream("openai") as up, GatewayServer(
        config_from({"models": openai_models(up.base_url)}), plugins=[my_plugin]
    ) as gateway:
        httpx.post(gateway.base_url + "/v1/chat/completions", headers=gateway.headers, json=...)

A thread rather than a process: start-up takes milliseconds, and a test can reach the
running :class:`~clasp_gateway.Gateway` (``server.gateway``). For what must hold across
workers or replicas, :mod:`.processes` runs real ``clasp serve`` processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import uvicorn
import yaml

from ..config import Config, parse_config
from ..plugins import PluginManager
from ..shell.app import create_app
from .processes import free_port

GATEWAY_KEY = "clasp-test-key-0123456789"
"""The client key :func:`config_from` adds (``keys:``): send it as ``x-api-key`` or
``Authorization: Bearer``."""

UPSTREAM_KEY = "sk-upstream-test-1234567890"
"""The provider key :func:`openai_models` gives its deployments (fakes accept any key
unless told otherwise)."""


def config_from(data: dict[str, Any] | str, *, keys: bool = True) -> Config:
    """A validated :class:`~clasp_gateway.Config` from a dict or YAML text, as ``clasp
    serve`` would read it; adds :data:`GATEWAY_KEY` under ``keys:`` unless the data has
    ``keys:`` or ``keys=False``."""
    raw: dict[str, Any] = dict((yaml.safe_load(data) if isinstance(data, str) else data) or {})
    if keys and "keys" not in raw:
        raw["keys"] = [{"key": GATEWAY_KEY, "name": "tests", "team": "qa"}]
    return parse_config(raw, "test-config")


def openai_models(base_url: str, mapping: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    """A ``models:`` section sending each public name pattern (default ``*``) to a model
    of an OpenAI-compatible fake at ``base_url``; ``extra`` goes into every deployment
    (``timeouts``, ``id``...)."""
    mapping = mapping or {"*": "gpt-4o"}
    return {
        pattern: [{"model": f"openai/{model}", "api_base": base_url, "api_key": UPSTREAM_KEY, **extra}]
        for pattern, model in mapping.items()
    }


def plugin_manager(config: Config, plugins: Iterable[object] = ()) -> PluginManager:
    """The plugin manager ``clasp serve`` would build for ``config`` (installed plugins,
    ``plugins.paths``, ``CLASP_LOAD_PLUGINS``), plus ``plugins`` registered after them,
    so their hooks are called first. A plugin already loaded through its entry point is
    not registered twice."""
    pm = PluginManager()
    pm.load(config.plugin_paths)
    for plugin in plugins:
        if not pm.is_registered(plugin):
            name = getattr(plugin, "__name__", None) or f"test-plugin-{id(plugin):x}"
            pm.register(plugin, name=name if pm.get_plugin(name) is None else f"{name}-{id(plugin):x}")
    pm.check_pending()
    return pm


class GatewayServer:
    """A gateway served by uvicorn in a daemon thread, for real-socket tests.

    ``GatewayServer(config)`` builds the app with the installed plugins;
    ``plugins=[module_or_object, ...]`` adds plugin objects (not installed, or one
    per test); ``app=`` serves an app built elsewhere. Use it as a context manager, or
    ``start()``/``stop()``. :attr:`base_url` is where it listens, :attr:`headers`
    authenticates as :data:`GATEWAY_KEY`.
    """

    def __init__(self, config: Config, app: Any = None, *, plugins: Iterable[object] = (), port: int | None = None) -> None:
        plugins = list(plugins)
        if app is not None and plugins:
            raise ValueError("pass plugins= or app=, not both (an app already has its plugins)")
        self.config = config
        self.app: Any = app or create_app(config, plugin_manager(config, plugins))
        self.port = port or free_port()  # a port chosen first: for a config that names its own URL
        from ..shell.tls import scheme, tls_options

        self.base_url = f"{scheme(config.server)}://127.0.0.1:{self.port}"  # https with server.tls
        self.headers = {"x-api-key": GATEWAY_KEY}
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app, host="127.0.0.1", port=self.port, log_config=None, access_log=False,
                lifespan="on", loop="asyncio", timeout_graceful_shutdown=2, **tls_options(config.server),
                proxy_headers=False,  # as `clasp serve`: forwarded headers count from server.trusted_proxies only
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def gateway(self) -> Any:
        """The running :class:`~clasp_gateway.Gateway` (``app.state.gateway``)."""
        return self.app.starlette_app.state.gateway

    def start(self, timeout: float = 30.0) -> GatewayServer:
        """Serve from a daemon thread; returns once uvicorn has started (the app's
        start-up hooks ran), raises if it failed or took longer than ``timeout``."""
        self._thread = threading.Thread(target=self._serve, name=f"GatewayServer-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("gateway failed to start (its log says why)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway did not start within {timeout:g}s")
            time.sleep(0.01)
        return self

    def _serve(self) -> None:
        try:
            self._server.run()
        except SystemExit:  # uvicorn's exit when start-up fails: start() reports it (the thread ended)
            pass

    def stop(self) -> None:
        """Ask uvicorn to exit (the app's shutdown hooks run) and wait for the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


StartGateway = Callable[..., GatewayServer]
"""The type of the ``start_gateway`` fixture (:mod:`.pytest_plugin`):
``start_gateway(config, plugins=[...]) -> GatewayServer``, started, stopped after the test."""


__all__ = [
    "GATEWAY_KEY", "UPSTREAM_KEY", "GatewayServer", "StartGateway", "config_from", "openai_models", "plugin_manager",
]

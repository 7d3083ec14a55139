"""Running a real gateway (uvicorn on 127.0.0.1) inside the test process."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import uvicorn
import yaml

from ..config import Config, parse_config
from ..shell.app import create_app
from .processes import free_port

GATEWAY_KEY = "clasp-test-key-0123456789"


def config_from(data: dict[str, Any] | str, *, keys: bool = True) -> Config:
    """A validated Config; adds the test gateway key unless ``keys=False``."""
    raw: dict[str, Any] = dict(yaml.safe_load(data) if isinstance(data, str) else data)
    if keys and "keys" not in raw:
        raw["keys"] = [{"key": GATEWAY_KEY, "name": "tests", "team": "qa"}]
    return parse_config(raw, "test-config")


def openai_models(base_url: str, mapping: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    """A ``models:`` section sending every public name (default ``*``) to a fake upstream."""
    mapping = mapping or {"*": "gpt-4o"}
    return {
        pattern: [{"model": f"openai/{model}", "api_base": base_url, "api_key": "sk-upstream-test-1234567890", **extra}]
        for pattern, model in mapping.items()
    }


class GatewayServer:
    """A gateway served by uvicorn in a background thread, for real-socket tests."""

    def __init__(self, config: Config, app: Any = None) -> None:
        self.config = config
        self.app: Any = app or create_app(config)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app, host="127.0.0.1", port=self.port, log_config=None, access_log=False,
                lifespan="on", loop="asyncio", timeout_graceful_shutdown=2,
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def gateway(self) -> Any:
        return self.app.starlette_app.state.gateway

    def start(self) -> GatewayServer:
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("gateway failed to start")
            if time.monotonic() > deadline:
                raise TimeoutError("gateway did not start within 30s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def run(coro: Any) -> Any:
    return asyncio.run(coro)

"""The ``budgets_keys`` entry point: virtual keys, teams and the admin API in a gateway.

Registers the ``keys`` migrations (so every gateway with this plugin has the tables),
the ``virtual_keys:`` section, the admin routes and the ``clasp keys`` / ``clasp teams``
commands; at start-up it registers one :class:`.auth.KeyAuthenticator` per app (never
module state: two gateways in one process keep their own cache), which answers
``authenticate`` before the core's static keys.

```yaml
virtual_keys:              # all optional; the defaults shown
  enabled: true
  cache: {max_entries: 10000, ttl: 10s, negative_ttl: 5s, stale_if_error: 1h}
  last_used_interval: 30s  # how often last_used_at is written (one batch)
  lookup_timeout: 5s       # a database lookup slower than this is an outage (503)
  max_lookups: 8           # database lookups at once per process
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clasp_gateway import (
    Boolean,
    Config,
    Duration,
    Field,
    Integer,
    RegisterCommand,
    RegisterConfigSection,
    RegisterMigrations,
    RegisterRoute,
    Section,
    hookimpl,
)

from .admin import ROUTES, RUNTIME
from .auth import KeyAuthenticator
from .cache import LookupCache
from .store import KeyStore

SECTION = "virtual_keys"
SETTINGS = Section({
    "enabled": Field(Boolean(), True),
    "cache": Field(Section({
        "max_entries": Field(Integer(1, 10_000_000), 10_000),
        "ttl": Field(Duration(minimum=0.001, maximum=3600), 10.0),
        "negative_ttl": Field(Duration(minimum=0.001, maximum=3600), 5.0),
        "stale_if_error": Field(Duration(minimum=0, maximum=7 * 86400), 3600.0),
    })),
    "last_used_interval": Field(Duration(minimum=0.01, maximum=86400), 30.0),
    "lookup_timeout": Field(Duration(minimum=0.01, maximum=120), 5.0),
    "max_lookups": Field(Integer(1, 1000), 8),
})


def settings_of(config: Config) -> dict[str, Any]:
    return dict(SETTINGS.parse(config.raw.get(SECTION), SECTION, []))


@hookimpl
def register_migrations(register: RegisterMigrations) -> None:
    register("keys", Path(__file__).parent / "migrations")


@hookimpl
def register_config_sections(register: RegisterConfigSection) -> None:
    register(SECTION)


@hookimpl
def validate_config(config: Config) -> list[str]:
    problems: list[str] = []
    SETTINGS.parse(config.raw.get(SECTION), SECTION, problems)
    return problems


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    for path, endpoint, methods in ROUTES:
        register(path, endpoint, methods=methods)


@hookimpl
def register_commands(register: RegisterCommand) -> None:
    from .cli import keys_command, teams_command

    register("keys", keys_command, help="virtual keys: create, list, revoke (on the gateway's database)")
    register("teams", teams_command, help="teams: create, list, update, delete")


@hookimpl
async def startup(app: Any, config: Config) -> None:
    settings = settings_of(config)
    gateway = app.state.gateway
    if not settings["enabled"] or gateway.pm.has_plugin(RUNTIME):
        return
    cache = settings["cache"]
    runtime = KeyAuthenticator(
        KeyStore(gateway.database), gateway.state, static_keys=bool(config.keys or config.raw.get("keys")),
        cache=LookupCache(max_entries=cache["max_entries"], ttl=cache["ttl"], negative_ttl=cache["negative_ttl"],
                          stale_if_error=cache["stale_if_error"]),
        last_used_interval=settings["last_used_interval"], lookup_timeout=settings["lookup_timeout"],
        max_lookups=settings["max_lookups"])
    gateway.pm.register(runtime, name=RUNTIME)


@hookimpl
async def shutdown(app: Any) -> None:
    pm = app.state.gateway.pm
    runtime = pm.get_plugin(RUNTIME)
    if isinstance(runtime, KeyAuthenticator):
        await runtime.close()
        pm.unregister(name=RUNTIME)

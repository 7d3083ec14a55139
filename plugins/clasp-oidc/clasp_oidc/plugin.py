"""The ``oidc`` entry point: the ``oidc:`` section, the sign-in routes, and at start-up
one :class:`.runtime.OidcRuntime` per app answering ``authenticate``.

Without an ``oidc:`` section the plugin does nothing (no routes answer but 404, no
token is looked at). See :mod:`.settings` for the section.
"""

from __future__ import annotations

import logging
from typing import Any

from clasp_gateway import Config, RegisterConfigSection, RegisterRoute, hookimpl

from .login import ROUTES
from .runtime import RUNTIME, OidcRuntime
from .settings import SECTION, problems_of, settings_of

log = logging.getLogger("clasp.oidc")


@hookimpl
def register_config_sections(register: RegisterConfigSection) -> None:
    register(SECTION)


@hookimpl
def validate_config(config: Config) -> list[str]:
    return problems_of(config)


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    for path, endpoint, methods in ROUTES:
        register(path, endpoint, methods=methods)


@hookimpl
async def startup(app: Any, config: Config) -> None:
    settings = settings_of(config)
    pm = app.state.gateway.pm
    if settings is None or pm.has_plugin(RUNTIME):
        return
    pm.register(OidcRuntime(settings, state=app.state.gateway.state), name=RUNTIME)
    log.info("oidc: single sign-on with %s (%s)", settings.issuer,
             "browser sign-in and bearer tokens" if settings.login_enabled else "bearer tokens only")


@hookimpl
async def shutdown(app: Any) -> None:
    pm = app.state.gateway.pm
    runtime = pm.get_plugin(RUNTIME)
    if isinstance(runtime, OidcRuntime):
        await runtime.close()
        pm.unregister(name=RUNTIME)

"""clasp-router-example: a routing strategy a team would copy.

``project-hours``: batch projects, and everybody outside office hours, go to the
cheapest deployment first; interactive projects in office hours keep the configured
order (the best model first). Select it with ``router: {strategy: project-hours}``
(or a pool's ``router: project-hours``, or ``fallback: {strategy: project-hours}``).

The project is the key's (``principal.project``), else the ``project`` tag of the
request (``x-clasp-tags: project=batch``): never a header the strategy trusts for
anything but an order among deployments the key may already use. Time comes from the
gateway's clock (``gateway.clock``), so tests move a ``FakeClock`` instead of waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from clasp_gateway import Config, Deployment, RequestContext, hookimpl

__version__ = "0.1.0"

STRATEGY = "project-hours"
OFFICE_HOURS = range(9, 18)
"""Hours (UTC) in which interactive projects get the configured order."""
BATCH_PROJECTS = frozenset({"batch", "nightly", "evals"})

_clock: Callable[[], float] = time.time
"""Wall-clock seconds; ``startup`` swaps in the gateway's clock."""


def project_of(ctx: RequestContext) -> str | None:
    """The key's project, else the request's ``project`` tag."""
    principal = ctx.principal
    if principal is not None and principal.project:
        return principal.project
    return ctx.tags.get("project")


def cheap_first(deployments: list[Deployment]) -> list[Deployment]:
    """By price per token (input plus output), ties in chain order."""
    return sorted(deployments, key=lambda d: d.info.input_cost_per_token + d.info.output_cost_per_token)


def project_hours(ctx: RequestContext, deployments: list[Deployment]) -> list[Deployment]:
    """Cheapest first for batch projects and outside office hours, else chain order."""
    hour = time.gmtime(_clock()).tm_hour
    if project_of(ctx) in BATCH_PROJECTS or hour not in OFFICE_HOURS:
        ctx.response_headers["x-clasp-project-hours"] = "cheap"
        return cheap_first(deployments)
    ctx.response_headers["x-clasp-project-hours"] = "chain"
    return list(deployments)


@hookimpl
def register_routing_strategies(register: Callable[..., None]) -> None:
    """Register ``project-hours``."""
    register(STRATEGY, project_hours)


@hookimpl
def startup(app: Any, config: Config) -> None:
    """Read time from the gateway's clock (a ``FakeClock`` in tests)."""
    global _clock
    gateway = app.state.gateway
    _clock = lambda: gateway.clock()  # noqa: E731  (late-bound: tests swap gateway.clock after start)

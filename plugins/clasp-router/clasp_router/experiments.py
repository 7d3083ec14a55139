"""Experiments: trying a candidate model on a route is a config change (``experiments:``).

```yaml
experiments:
  mini-for-sonnet:
    route: claude-sonnet-*        # a public model pattern under models:
    candidate: gpt-mini-eu        # a deployment id (any route's)
    mode: split                   # split | shadow
    weight: 0.1                   # split: share of traffic the candidate serves
    sticky: user                  # split: conversation | user | key | request
    shadow_rate: 0.05             # shadow: share of requests copied to the candidate
    max_shadow_per_minute: 30     # shadow: per replica
    max_shadow_concurrency: 4     # shadow: per replica
    max_shadow_usd_per_day: 5.0   # shadow: per replica, then no more copies that day
```

- **split**: a stable hash of the experiment's name and the sticky id (the
  conversation's first message, ``ctx.user`` or the key, the request) puts a request in
  the ``candidate`` arm with probability ``weight``: the candidate is tried first, the
  route's own order after it (fallback unchanged). Everything else is ``control``.
  A candidate the request may not use (outside the key's regions, missing a capability
  the request needs) leaves it in control.
- **shadow**: a sampled copy of the request goes to the candidate in the background
  (never awaited by the real answer, non-streamed, bounded per minute, concurrency and
  dollars per day), its answer discarded. Its outcome is recorded as a ``kind:
  "request"`` event without a key (``arm: shadow``): the ledger keeps it, no key's or
  team's budget pays it. Inside the key's regions only.

Each request in an experiment carries the tags ``experiment`` and ``arm`` (set by the
gateway; a client's own tags of those names are dropped), which the ledger keeps and
:mod:`.experiments_report` compares.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from clasp_gateway import (
    KEEPALIVE,
    CanonicalRequest,
    Choice,
    Config,
    ConfigError,
    Deployment,
    Field,
    Gateway,
    Integer,
    Number,
    RequestContext,
    Section,
    String,
    Usage,
    chunks_to_completion,
    prepare_body,
    region_allowed,
    request_cost,
)

from .capability import Needs, missing

log = logging.getLogger("clasp.router.experiments")

TAG_EXPERIMENT = "experiment"
TAG_ARM = "arm"
SHADOW_TIMEOUT = 120.0
"""Seconds a shadow call may take at most (its deployment's ``total`` timeout if lower)."""

EXPERIMENT = Section({
    "route": Field(String(non_empty=True, expected="a public model pattern under models:"), required=True),
    "candidate": Field(String(non_empty=True, expected="a deployment id"), required=True),
    "mode": Field(Choice("split", "shadow"), "split"),
    "weight": Field(Number(0, 1, expected="a share between 0 and 1"), 0.1),
    "sticky": Field(Choice("conversation", "user", "key", "request"), "user"),
    "shadow_rate": Field(Number(0, 1, expected="a share between 0 and 1"), 0.05),
    "max_shadow_per_minute": Field(Integer(1, 10_000), 30),
    "max_shadow_concurrency": Field(Integer(1, 64), 4),
    "max_shadow_usd_per_day": Field(Number(0, 100_000), 5.0),
})


@dataclass(slots=True, frozen=True)
class Experiment:
    """One validated experiment."""

    name: str
    route: str
    candidate: str
    mode: str = "split"
    weight: float = 0.1
    sticky: str = "user"
    shadow_rate: float = 0.05
    max_shadow_per_minute: int = 30
    max_shadow_concurrency: int = 4
    max_shadow_usd_per_day: float = 5.0


def parse_experiments(config: Config) -> dict[str, Experiment]:
    """``experiments:`` by name; :class:`ConfigError` lists every problem."""
    raw = config.raw.get("experiments")
    problems: list[str] = []
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(config.source, [f"experiments: expected a mapping of name -> experiment, got {type(raw).__name__}"])
    routes = {r.pattern for r in config.models}
    ids = {d.id for d in config.deployments()}
    out: dict[str, Experiment] = {}
    taken: dict[str, str] = {}
    for name, spec in raw.items():
        path = f"experiments.{name}"
        values = EXPERIMENT.parse(spec, path, problems)
        route, candidate = values.get("route"), values.get("candidate")
        if route is not None and route not in routes:
            problems.append(f"{path}.route: {route!r} is not a route under models: ({', '.join(sorted(routes))})")
        if candidate is not None and candidate not in ids:
            problems.append(f"{path}.candidate: {candidate!r} is not a deployment id ({', '.join(sorted(ids))})")
        if route is not None and route in taken:
            problems.append(f"{path}.route: {route!r} already has an experiment ({taken[route]}); one per route")
        if route is None or candidate is None:
            continue
        taken[route] = str(name)
        out[str(name)] = Experiment(str(name), route, candidate, values["mode"], values["weight"], values["sticky"],
                                    values["shadow_rate"], values["max_shadow_per_minute"],
                                    values["max_shadow_concurrency"], values["max_shadow_usd_per_day"])
    if problems:
        raise ConfigError(config.source, problems)
    return out


def bucket(name: str, sticky_id: str) -> float:
    """A stable number in [0, 1) for ``sticky_id`` in experiment ``name``."""
    digest = hashlib.blake2b(f"{name}\0{sticky_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def sticky_id(how: str, ctx: RequestContext, request: CanonicalRequest) -> str:
    """Who a split keeps together: the conversation (its system prompt and first
    message), the user (``ctx.user``, else the key), the key, or the request."""
    principal = ctx.principal
    key = principal.key_id if principal is not None else "-"
    if how == "request":
        return ctx.request_id
    if how == "key":
        return key
    if how == "user":
        return ctx.user or key
    messages = request.get("messages") or []
    head = [m for m in messages[:2] if isinstance(m, dict)]
    return key + hashlib.blake2b(orjson.dumps(head, option=orjson.OPT_SORT_KEYS, default=str),
                                 digest_size=12).hexdigest()


@dataclass(slots=True)
class ShadowBudget:
    """One experiment's shadow limits on this replica."""

    minute: int = -1
    in_minute: int = 0
    day: int = -1
    spent_today: float = 0.0
    running: int = 0

    def admit(self, exp: Experiment, now: float) -> bool:
        minute, day = int(now // 60), int(now // 86_400)
        if minute != self.minute:
            self.minute, self.in_minute = minute, 0
        if day != self.day:
            self.day, self.spent_today = day, 0.0
        if (self.in_minute >= exp.max_shadow_per_minute or self.running >= exp.max_shadow_concurrency
                or self.spent_today >= exp.max_shadow_usd_per_day):
            return False
        self.in_minute += 1
        self.running += 1
        return True


@dataclass(slots=True)
class Experiments:
    """The configured experiments of one gateway app, applied in ``resolve_route``."""

    gateway: Gateway
    by_route: dict[str, Experiment]
    deployments: dict[str, Deployment]
    clock: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    budgets: dict[str, ShadowBudget] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @classmethod
    def build(cls, gateway: Gateway) -> Experiments | None:
        found = parse_experiments(gateway.config)
        if not found:
            return None
        return cls(gateway, {e.route: e for e in found.values()}, {d.id: d for d in gateway.config.deployments()})

    def apply(self, ctx: RequestContext, request: CanonicalRequest, route: str, ordered: list[Deployment],
              needs: Needs) -> list[Deployment]:
        """Tag the request and put the candidate first (split), or start a shadow copy."""
        ctx.tags.pop(TAG_EXPERIMENT, None)  # only the gateway says which arm a request is in
        ctx.tags.pop(TAG_ARM, None)
        exp = self.by_route.get(route)
        if exp is None:
            return ordered
        first_round = "router.experiment" not in ctx.state
        arm = ctx.state.setdefault("router.experiment", self._arm(exp, ctx, request) if exp.mode == "split" else "control")
        ctx.tags[TAG_EXPERIMENT] = exp.name
        ctx.tags[TAG_ARM] = arm
        candidate = self.deployments.get(exp.candidate)
        usable = candidate is not None and region_allowed(ctx, candidate) and missing(candidate, needs) in (None, "context")
        if exp.mode == "split":
            if arm == "candidate" and usable and candidate is not None:
                return [candidate, *(d for d in ordered if d.id != candidate.id)]
            if arm == "candidate":  # cannot serve this one: it is a control request
                ctx.tags[TAG_ARM] = ctx.state["router.experiment"] = "control"
            return [d for d in ordered if d.id != exp.candidate]
        if first_round and usable and candidate is not None and self.rng.random() < exp.shadow_rate:
            shadow = self.budgets.setdefault(exp.name, ShadowBudget())
            if shadow.admit(exp, self.clock()):
                task = asyncio.get_running_loop().create_task(self._shadow(exp, shadow, ctx, request, candidate))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        return ordered

    def _arm(self, exp: Experiment, ctx: RequestContext, request: CanonicalRequest) -> str:
        return "candidate" if bucket(exp.name, sticky_id(exp.sticky, ctx, request)) < exp.weight else "control"

    async def _shadow(self, exp: Experiment, budget: ShadowBudget, ctx: RequestContext, request: CanonicalRequest,
                      deployment: Deployment) -> None:
        """Send the copy, read the whole answer, record its outcome; never raises. Not
        sent when a plugin keeps this conversation off the candidate (``before_side_call``:
        clasp-credential-guard, for a request carrying a credential)."""
        if not await self.gateway.may_side_call(ctx, deployment, "shadow"):
            budget.running -= 1
            return
        shadow_ctx = RequestContext(f"{ctx.request_id}-shadow", ctx.api, ctx.public_model, False,
                                    principal=None, headers={}, hints=ctx.hints)
        shadow_ctx.request_class = ctx.request_class
        started, wall = time.perf_counter(), time.time()
        first: float | None = None
        usage = Usage()
        status, error = 200, None
        try:
            body = prepare_body(request, deployment, ctx.hints, stream=False)
            chunks = []
            async with asyncio.timeout(min(SHADOW_TIMEOUT, deployment.timeouts.total or SHADOW_TIMEOUT)):
                async for chunk in self.gateway.providers.open(deployment, body, stream=False, ctx=shadow_ctx):
                    if chunk is KEEPALIVE:
                        continue
                    if first is None:
                        first = time.perf_counter()
                    chunks.append(chunk)
            completion = chunks_to_completion(chunks, ctx.public_model)
            usage = Usage.from_openai(completion.get("usage"))
        except Exception as exc:  # noqa: BLE001 (a shadow's failure is a data point, never the client's)
            status = int(getattr(exc, "status", 0) or 502)
            error = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
        finally:
            budget.running -= 1
        try:
            cost: float | None = request_cost(deployment, usage)
        except (TypeError, ValueError):
            cost = None
        budget.spent_today += cost or 0.0
        ended = time.perf_counter()
        event: dict[str, Any] = {
            "kind": "request", "request_id": shadow_ctx.request_id, "api": "shadow", "public_model": ctx.public_model,
            "deployment": deployment.id, "provider": deployment.provider, "model": deployment.model,
            "region": deployment.settings.get("region"), "key_id": None, "key_name": None, "team": None,
            "project": None, "user": None, "tags": {TAG_EXPERIMENT: exp.name, TAG_ARM: "shadow"}, "stream": False,
            "status": status, "error": error, "cut": False,
            "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                      "cache_read_input_tokens": usage.cache_read_input_tokens,
                      "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                      "reasoning_tokens": usage.reasoning_tokens},
            "cost_usd": cost, "cache_hit": None, "saved_usd": 0.0, "latency_ms": (ended - started) * 1000,
            "ttfb_ms": (first - started) * 1000 if first else None, "attempts": [], "retries": 0, "fallbacks": 0,
            "request_class": ctx.request_class, "traits": sorted(ctx.traits), "started_at": wall, "time": time.time(),
        }
        await self.gateway.record(shadow_ctx, event)

    async def close(self) -> None:
        """Cancel shadow calls still running (shutdown)."""
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 (closing)
                pass

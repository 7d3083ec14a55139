#!/usr/bin/env python3
"""CPU per request of the budgets plugin (``clasp_budgets.budgets``) and of virtual-key
authentication (``clasp_budgets.keys``), in process, on the memory state backend (what
one process uses; Redis and SQLite add a round trip per operation, which is wait, not
the CPU measured here).

- budgets: ``before_call`` (which budgets, the worst case, the reservation script) plus
  ``record`` (the settlement script, thresholds) with ``team.yaml``'s two budgets (a
  global one and one per user), minus building the request context and its input
  estimate alone (the core computes that once per request for budgets and limits);
- keys: ``authenticate`` of a virtual key found in the lookup cache (what every request
  after the first one pays).

Best of 5 runs of 5,000 requests::

    .venv/bin/python bench/budgets_cpu.py
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from clasp_budgets.budgets.reservations import Reservations
from clasp_budgets.budgets.runtime import BudgetRuntime
from clasp_budgets.budgets.settings import BudgetSettings, BudgetSpec
from clasp_budgets.budgets.store import DatabaseBudgets
from clasp_budgets.keys.auth import KeyAuthenticator
from clasp_budgets.keys.cache import Entry, LookupCache
from clasp_budgets.keys.tokens import key_hash, new_key

from clasp_gateway import (
    Config,
    Principal,
    RequestContext,
    StateSettings,
    create_state,
    input_estimate,
)

REQUEST: Any = {"messages": [{"role": "user", "content": "hello " * 500}], "max_tokens": 4096}
EVENT = {"kind": "request", "status": 200}
TEAM_BUDGETS = BudgetSettings(limits=(
    BudgetSpec(name="everyone", usd=1_000_000, scope="global", period="monthly"),
    BudgetSpec(name="per-user-daily", usd=100_000, scope="user", period="daily"),
))
PRINCIPAL = Principal("key_0123456789abcdef", name="bench", team="t")
N = 5000


def context() -> RequestContext:
    ctx = RequestContext(request_id="r", api="anthropic", public_model="m", client_stream=True, principal=PRINCIPAL)
    ctx.user = "alice"
    input_estimate(ctx, REQUEST)
    return ctx


async def budgets() -> float:
    state = create_state(StateSettings(backend="memory"))
    gateway: Any = SimpleNamespace(resolve_model=lambda name: SimpleNamespace(deployments=[]))
    reservations = Reservations(state, TEAM_BUDGETS)
    runtime = BudgetRuntime(gateway, TEAM_BUDGETS, reservations, DatabaseBudgets(None, state))
    runtime.ready.set()
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(N):
            ctx = context()
            await runtime.before_call(ctx, REQUEST)
            await runtime.record(ctx, EVENT)
        spent = time.process_time() - start
        start = time.process_time()
        for _ in range(N):
            context()
        base = time.process_time() - start
        best = min(best, (spent - base) / N)
    return best * 1000


async def keys() -> float:
    key = new_key()
    cache = LookupCache()
    cache.put(key_hash(key), Entry(key_id=PRINCIPAL.key_id, team="t", status="active", principal=PRINCIPAL,
                                   expires_at=None, stored=0.0))
    auth = KeyAuthenticator(store=Any, state=None, static_keys=True, cache=cache)  # type: ignore[arg-type]
    auth._started = asyncio.get_running_loop().create_future()  # started: no store to read here
    auth._started.set_result(None)  # type: ignore[arg-type]
    config: Any = Config.__new__(Config)
    headers: dict[str, str] = {}
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(N):
            await auth.authenticate(key, headers, config)
        best = min(best, (time.process_time() - start) / N)
    return best * 1000


async def main() -> None:
    print(f"{await budgets():7.4f} ms/request  budgets: before_call + record, a global and a per-user budget")
    print(f"{await keys():7.4f} ms/request  keys: authenticate a cached virtual key")


if __name__ == "__main__":
    asyncio.run(main())

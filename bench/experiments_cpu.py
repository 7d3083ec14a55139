#!/usr/bin/env python3
"""CPU per request of clasp-router's experiments (``Experiments.apply`` in
``resolve_route``): a route without an experiment, a split (sticky by user, by
conversation), in process, interleaved; median of 15 rounds of 5,000 requests, minus
building the request context alone::

    .venv/bin/python bench/experiments_cpu.py
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from clasp_router.capability import Needs
from clasp_router.experiments import Experiment, Experiments

from clasp_gateway import Deployment, RequestContext

DEPS = [Deployment(id=f"d{i}", provider="openai", model="m", api_base="http://x") for i in range(5)]
REQUEST: Any = {"messages": [{"role": "system", "content": "you are helpful " * 50},
                             {"role": "user", "content": "hello " * 200}], "max_tokens": 1000}
ROUNDS, N = 15, 5000


def runner(experiment: Experiment | None) -> Experiments:
    by_route = {experiment.route: experiment} if experiment is not None else {"other": Experiment("x", "other", "d4")}
    return Experiments(gateway=None, by_route=by_route, deployments={d.id: d for d in DEPS})  # type: ignore[arg-type]


def main() -> None:
    cases = {
        "route without an experiment": runner(None),
        "split, sticky by user": runner(Experiment("e", "m", "d4", weight=0.1, sticky="user")),
        "split, sticky by conversation": runner(Experiment("e", "m", "d4", weight=0.1, sticky="conversation")),
    }
    needs = Needs()
    times: dict[str, list[float]] = {name: [] for name in ["context alone", *cases]}
    for _ in range(ROUNDS):
        start = time.process_time()
        for i in range(N):
            RequestContext("r", "openai", "m", False, user=f"user-{i % 100}")
        times["context alone"].append((time.process_time() - start) / N * 1e6)
        for name, exp in cases.items():
            start = time.process_time()
            for i in range(N):
                ctx = RequestContext("r", "openai", "m", False, user=f"user-{i % 100}")
                exp.apply(ctx, REQUEST, "m", DEPS, needs)
            times[name].append((time.process_time() - start) / N * 1e6)
    base = statistics.median(times.pop("context alone"))
    print(f"{'case':<34} {'us CPU/request':>15}")
    for name, values in times.items():
        print(f"{name:<34} {statistics.median(values) - base:>15.2f}")


if __name__ == "__main__":
    main()

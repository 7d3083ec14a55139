#!/usr/bin/env python3
"""CPU per request of the core's key-policy step (``clasp_gateway.policy.admit``:
``ctx.user``/``ctx.tags`` from the headers, the model allowlist), in process.

It runs once per request at the top of ``Gateway.open``; compare with the gateway's
1.3-4 ms of CPU per request (``run_bench.py``). Best of 5 runs of 20,000 calls,
minus building the request context alone::

    .venv/bin/python bench/policy_cpu.py
"""

from __future__ import annotations

import time

from clasp_gateway import KeyPolicy, Principal, RequestContext
from clasp_gateway.policy import admit

ROUTES = ("claude-*sonnet*", "claude-*haiku*", "claude-*")
CASES = {
    "a key without policy, no headers": (Principal("k"), {}),
    "models + tags policy, x-clasp-user + x-clasp-tags": (
        Principal("k", tags={"env": "ci"}, policy=KeyPolicy(models=("claude-*haiku*", "gpt-4o-mini"))),
        {"x-clasp-user": "alice@example.com", "x-clasp-tags": "project=api,feature=review"}),
}


def resolve(name: str) -> str:
    """The gateway's resolver is a dict lookup once a name has been seen."""
    return "claude-*haiku*"


def per_call(principal: Principal, headers: dict[str, str], *, with_admit: bool, n: int = 20_000) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(n):
            ctx = RequestContext("r", "anthropic", "claude-haiku-4-5", False, principal=principal, headers=headers)
            if with_admit:
                admit(ctx, {"user": "x"}, resolve, ROUTES)
        best = min(best, (time.process_time() - started) / n)
    return best


def main() -> None:
    for label, (principal, headers) in CASES.items():
        cost = per_call(principal, headers, with_admit=True) - per_call(principal, headers, with_admit=False)
        print(f"{label}: {cost * 1e6:.2f} µs CPU per request")


if __name__ == "__main__":
    main()

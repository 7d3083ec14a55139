#!/usr/bin/env python3
"""CPU per request of clasp-credential-guard's scan, in process (no network).

The benchmark's 21 KB Claude Code request (``workload.py``, OpenAI-shaped as the
gateway sees it after conversion) is scanned with :func:`clasp_credential_guard.locate`
the way ``before_call`` does; three variants:

- ``whole_request_as_text``: the whole 21 KB request (tool definitions included) as one
  message's text, scanned end to end (nothing found): the upper bound per request;
- ``clean``: the request's messages (what the guard scans: tool definitions come from
  the client's harness, not the conversation), nothing found;
- ``pem_last``: a PEM key in the last message (found after scanning everything else);
- ``pem_first``: a PEM key in the first user message (early exit).

Also the cost of the hook when the guard is off for the request (a team exemption).
Reports the median over ``--rounds`` of ``process_time`` per call.

    .venv/bin/python bench/credential_guard.py [--iterations 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
       "-----END RSA PRIVATE KEY-----")


def per_call(fn: Any, iterations: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(iterations):
            fn()
        samples.append((time.process_time() - start) / iterations)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import workload
    from clasp_credential_guard import CredentialGuard, locate
    from clasp_credential_guard.scan import KINDS

    from clasp_gateway import Principal, RequestContext

    clean: dict[str, Any] = workload.openai_request("gpt-4o")
    size = len(json.dumps(clean["messages"]))
    last = copy.deepcopy(clean)
    last["messages"].append({"role": "user", "content": "why does this fail?\n" + PEM})
    first = copy.deepcopy(clean)
    index = next(i for i, m in enumerate(first["messages"]) if m["role"] == "user")
    first["messages"][index] = {"role": "user", "content": PEM}
    whole = json.dumps(workload.anthropic_request("m"))  # the whole 21 KB request as text, tools included
    big = {"messages": [{"role": "user", "content": whole}]}
    kinds = frozenset(KINDS)
    assert locate(clean, "openai", kinds) is None
    assert locate(last, "openai", kinds) is not None and locate(first, "openai", kinds) is not None

    guard = CredentialGuard({"enabled": True, "kinds": list(KINDS), "routes": {}, "teams": {"exempt": False}})
    exempt = RequestContext("req", "openai", "gpt-4o", False, principal=Principal("k", team="exempt"))
    results = {
        "request_bytes": size,
        "whole_request_bytes": len(whole),
        "whole_request_as_text_us": per_call(lambda: locate(big, "openai", kinds), args.iterations, args.rounds) * 1e6,
        "clean_us": per_call(lambda: locate(clean, "openai", kinds), args.iterations, args.rounds) * 1e6,
        "pem_last_us": per_call(lambda: locate(last, "openai", kinds), args.iterations, args.rounds) * 1e6,
        "pem_first_us": per_call(lambda: locate(first, "openai", kinds), args.iterations, args.rounds) * 1e6,
        "exempt_team_us": per_call(lambda: guard.before_call(exempt, clean), args.iterations * 10, args.rounds) * 1e6,
    }
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()

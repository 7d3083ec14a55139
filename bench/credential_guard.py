#!/usr/bin/env python3
"""CPU per request of clasp-credential-guard's scan, in process (no network).

Two requests:

- ``bench``: the benchmark's 21 KB Claude Code request (``workload.py``), as an
  Anthropic client sends it (what the guard scans on ``/v1/messages``) and as the
  OpenAI-shaped body (``/v1/chat/completions``);
- ``tool_heavy``: a tool-heavy Claude Code turn (``clasp_gateway.testing.sessions``:
  12 tools with long descriptions and schemas, a 2,200-word system prompt, five tool
  rounds in the history), ~46 KB.

Variants, each the median over ``--rounds`` of ``process_time`` per call, all taken
in the same process, interleaved round by round:

- ``before_messages_only``: what the guard scanned before tools were covered (each
  canonical message's content, tool calls' arguments and tool results' text, one
  ``find_credential`` per text; tool definitions and system blocks of the raw body
  not looked at): the previous cost, for the A/B;
- ``cold``: everything (system, tools, every message), nothing remembered: the first
  request of a conversation a gateway process sees;
- ``warm``: the next turn of the same conversation: the same system prompt, tools and
  history (remembered clean) plus a new last message, the steady state of a Claude
  Code session;
- ``pem_last``: a PEM key in a new last message (found after the rest, warm);
- ``exempt_team``: the hook when the guard is off for the request's team.

    .venv/bin/python bench/credential_guard.py [--iterations 400] [--rounds 7]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
       "-----END RSA PRIVATE KEY-----")


def interleaved(cases: dict[str, Callable[[], Any]], iterations: int, rounds: int) -> dict[str, float]:
    """Microseconds per call of each case: median over rounds, the cases alternating
    within each round (so machine load hits them alike)."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.process_time()
            for _ in range(iterations):
                fn()
            samples[name].append((time.process_time() - start) / iterations * 1e6)
    return {name: round(statistics.median(values), 2) for name, values in samples.items()}


def old_messages_only(request: dict[str, Any], kinds: frozenset[str]) -> str | None:
    """The scan before this change: each canonical message's texts, one by one."""
    from clasp_credential_guard.scan import find_credential

    for message in request.get("messages") or []:
        content = message.get("content")
        texts: list[str] = []
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        for call in message.get("tool_calls") or ():
            texts.append(call["function"]["arguments"])
        for text in texts:
            kind = find_credential(text, kinds)
            if kind is not None:
                return kind
    return None


def next_turn(body: dict[str, Any], text: str) -> dict[str, Any]:
    """``body`` with one more user message (the history kept as it was)."""
    turn = copy.deepcopy(body)
    turn["messages"].append({"role": "user", "content": [{"type": "text", "text": text}]})
    return turn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    import workload
    from clasp_credential_guard import STATE, CredentialGuard, locate
    from clasp_credential_guard.finder import Scanner
    from clasp_credential_guard.scan import KINDS
    from clasp_credential_guard.texts import segments

    from clasp_gateway import Principal, RequestContext
    from clasp_gateway.testing.sessions import claude_code_session

    kinds = frozenset(KINDS)
    requests = {
        "bench_anthropic": workload.anthropic_request("claude-sonnet-4-5"),
        "bench_openai": workload.openai_request("gpt-4o"),
        "tool_heavy": claude_code_session(6)[-1],
    }
    from clasp_claude.request import to_canonical

    canonical = {"bench_anthropic": requests["bench_openai"], "bench_openai": requests["bench_openai"],
                 "tool_heavy": to_canonical(requests["tool_heavy"]).body}
    results: dict[str, Any] = {"load_average": os.getloadavg(),
                               "bytes": {name: len(json.dumps(body)) for name, body in requests.items()}}
    cases: dict[str, Callable[[], Any]] = {}
    for name, body in requests.items():
        assert locate(body, kinds) is None
        turn = next_turn(body, "Good, please fix it and run the test again.")
        found = next_turn(body, "why does this fail?\n" + PEM)
        assert locate(found, kinds) is not None
        warm = Scanner(kinds)
        assert warm.first(segments(body)) is None  # the previous turn: remembered
        if name in canonical:
            cases[f"{name}.before_messages_only"] = (lambda r=canonical[name]: old_messages_only(r, kinds))
        cases[f"{name}.cold"] = (lambda b=turn: locate(b, kinds))
        cases[f"{name}.warm"] = (lambda b=turn, s=warm: s.first(segments(b)))
        cases[f"{name}.pem_last"] = (lambda b=found, s=warm: s.first(segments(b)))

    guard = CredentialGuard({"enabled": True, "kinds": list(KINDS), "routes": {}, "teams": {"exempt": False}})
    exempt = RequestContext("req", "openai", "gpt-4o", False, principal=Principal("k", team="exempt"))
    cases["exempt_team"] = lambda: guard.before_call(exempt, requests["bench_openai"])
    results["us_per_request"] = interleaved(cases, args.iterations, args.rounds)
    assert STATE not in exempt.state
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

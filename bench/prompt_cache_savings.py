#!/usr/bin/env python3
"""How much of a Claude Code workload's input cost provider prompt caches save, with
the gateway's shipped defaults.

Replays a fixed workload of Claude-Code-shaped sessions
(:func:`clasp_gateway.testing.sessions.claude_code_session`: 3 teams x 4 sessions of
4 to 30 model calls, interleaved as concurrent users would be) through a real gateway
(``GatewayServer``, the installed plugins, no cache configuration: the defaults)
against fake providers that cache prompts the way the real ones do
(``FakeUpstream(prompt_cache=True)``: OpenAI's automatic prefix cache in 128-token
units from 1,024 tokens, DeepSeek's in 64-token units, Gemini's implicit cache). The
gateway's own books (the ``record`` events the ledger prices) give the usage; prices
come from LiteLLM's catalogue (input, cached input, output per token).

Reported per provider: input tokens, the share read from cache, the input cost
without and with the cache, the share of input cost saved, and the share of the
whole cost (output included) saved. The fakes' caches never evict, so this is the
ceiling a real provider approaches when a session's turns come within its cache
lifetime (OpenAI: 5-10 minutes idle, up to an hour; DeepSeek: hours; Gemini: minutes).

    .venv/bin/python bench/prompt_cache_savings.py [--json bench/results/prompt_cache_savings.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx  # noqa: E402

from clasp_gateway import Usage, hookimpl  # noqa: E402
from clasp_gateway.testing import GATEWAY_KEY, UPSTREAM_KEY, FakeUpstream, GatewayServer, Text, config_from  # noqa: E402
from clasp_gateway.testing.sessions import claude_code_session  # noqa: E402
from clasp_gateway.wire.catalog import model_info  # noqa: E402

PROVIDERS = {
    # public model: (fake flavor, provider, upstream model, deployment extras)
    "cc-openai-gpt-4.1": ("openai", "openai", "gpt-4.1", {}),
    "cc-openai-gpt-4o": ("openai", "openai", "gpt-4o", {}),
    "cc-deepseek": ("deepseek", "deepseek", "deepseek-chat", {}),
    "cc-gemini-flash": ("gemini", "gemini", "gemini-2.5-flash", {}),
}
TEAMS = 3
SESSIONS_PER_TEAM = 4
TURNS = (4, 8, 12, 30)
"""Model calls per session (each team has one session of each length)."""
ANSWER = "I'll check the file and make the change. " * 14
"""~150 output tokens per model call (Claude Code's turns are mostly tool calls)."""


class Books:
    """The ``record`` events of the gateway (what the ledger prices)."""

    def __init__(self) -> None:
        self.usage: dict[str, list[Usage]] = {}

    @hookimpl
    def record(self, ctx: Any, event: dict[str, Any]) -> None:
        if event.get("kind") == "request" and event.get("status") == 200:
            u = event["usage"]
            self.usage.setdefault(ctx.public_model, []).append(Usage(
                input_tokens=u["input_tokens"], output_tokens=u["output_tokens"],
                cache_read_input_tokens=u.get("cache_read_input_tokens", 0),
                cache_creation_input_tokens=u.get("cache_creation_input_tokens", 0)))


def workload(model: str) -> list[dict[str, Any]]:
    """The requests of every session, interleaved turn by turn (round-robin)."""
    sessions = [
        claude_code_session(turns, seed=team * 100 + n, team_seed=team, model=model)
        for team in range(TEAMS) for n, turns in enumerate(TURNS[:SESSIONS_PER_TEAM])
    ]
    out = []
    for turn in range(max(TURNS)):
        out.extend(session[turn] for session in sessions if turn < len(session))
    return out


def replay(gateway: GatewayServer, fake: FakeUpstream, model: str) -> int:
    headers = {"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"}
    fake.script = lambda body, rec: Text(ANSWER)
    requests = workload(model)
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=120) as client:
        for body in requests:
            response = client.post("/v1/messages?beta=true", json=body)
            response.raise_for_status()
            response.read()
    return len(requests)


def costs(provider: str, upstream: str, usages: list[Usage]) -> dict[str, Any]:
    info = model_info(provider, upstream)
    rate_in, rate_out = info.input_cost_per_token, info.output_cost_per_token
    rate_read = info.cache_read_input_token_cost if info.cache_read_input_token_cost is not None else rate_in
    rate_write = (info.cache_creation_input_token_cost
                  if info.cache_creation_input_token_cost is not None else rate_in)
    fresh = sum(u.input_tokens for u in usages)
    read = sum(u.cache_read_input_tokens for u in usages)
    written = sum(u.cache_creation_input_tokens for u in usages)
    output = sum(u.output_tokens for u in usages)
    prompt = fresh + read + written
    input_without = prompt * rate_in
    input_with = fresh * rate_in + read * rate_read + written * rate_write
    total_without = input_without + output * rate_out
    total_with = input_with + output * rate_out
    return {
        "requests": len(usages), "input_tokens": prompt, "cached_tokens": read, "output_tokens": output,
        "cached_share": round(read / prompt, 4) if prompt else 0.0,
        "cache_read_discount": round(1 - rate_read / rate_in, 3) if rate_in else 0.0,
        "input_cost_usd": {"without_cache": round(input_without, 4), "with_cache": round(input_with, 4)},
        "input_cost_saved_share": round(1 - input_with / input_without, 4) if input_without else 0.0,
        "total_cost_saved_share": round(1 - total_with / total_without, 4) if total_without else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    fakes = {name: FakeUpstream(flavor, prompt_cache=True, require_key=False).start()
             for name, (flavor, *_rest) in PROVIDERS.items()}
    books = Books()
    try:
        models = {}
        for name, (flavor, provider, upstream, extra) in PROVIDERS.items():
            fake = fakes[name]
            base = fake.origin + "/v1" if flavor == "deepseek" else fake.base_url
            models[name] = [{"model": f"{provider}/{upstream}", "api_base": base, "api_key": UPSTREAM_KEY, **extra}]
        with GatewayServer(config_from({"models": models}), plugins=[books]) as gateway:
            for name in PROVIDERS:
                replay(gateway, fakes[name], name)
    finally:
        for fake in fakes.values():
            fake.stop()
    results = {
        "workload": {"teams": TEAMS, "sessions": TEAMS * SESSIONS_PER_TEAM, "turns_per_session": list(TURNS),
                     "requests_per_provider": sum(TURNS[:SESSIONS_PER_TEAM]) * TEAMS},
        "providers": {name: {"upstream": f"{p}/{m}", **costs(p, m, books.usage.get(name, []))}
                      for name, (_, p, m, _) in PROVIDERS.items()},
    }
    print(json.dumps(results, indent=2))
    for name, r in results["providers"].items():
        print(f"{name:20s} cached {r['cached_share']:6.1%} of input at -{r['cache_read_discount']:.0%}: "
              f"input cost saved {r['input_cost_saved_share']:6.1%}, whole cost saved {r['total_cost_saved_share']:6.1%}",
              file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

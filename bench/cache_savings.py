"""What the response cache saves on a fixed, replayed workload with repeats, with the
shipped defaults (``cache: {}``), against the same workload with the cache off.

    .venv/bin/python bench/cache_savings.py            # ~1 minute; writes bench/results/cache_savings.json

Two workloads, generated from a fixed seed, replayed through a real gateway (in a
thread) in front of a fake OpenAI upstream (gpt-4o prices from LiteLLM's catalogue;
usage: the fake's, ~4 characters a token):

- **OpenAI Q&A** (``/v1/chat/completions``): 600 questions from three teams, drawn
  Zipf-like from a pool of 80 (a few are asked often, most rarely), half streamed; 30%
  ask with ``temperature: 0.7`` (not cached by default).
- **Claude-Code-like sessions** (``/v1/messages``, tools offered, streamed): 40 sessions
  of three turns (read a file, run a command, answer), each a task from a pool of 12
  in one of three repositories, from two teams. The first two turns end in tool calls
  (never stored by default: the client has not run them yet); the last, a text answer,
  hits only when the same team ran the same task in the same repository before (the
  tool results, and so the conversation, are then identical).

The figure: the share of the cache-off cost that the cache-on run did not spend
(``saved_usd`` summed over hits; checked against the difference of the two runs).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx  # noqa: E402

from clasp_gateway import RequestContext, hookimpl  # noqa: E402
from clasp_gateway.testing import FakeUpstream, GatewayServer, Text, ToolCalls, config_from  # noqa: E402

TEAMS = {"alpha": "key-alpha-0123456789abcdef", "beta": "key-beta-0123456789abcdefg",
         "gamma": "key-gamma-0123456789abcdef"}
TOPICS = ["a list", "a dict", "a file", "a thread", "a socket", "a date", "a regex", "a class", "a test", "a query"]
VERBS = ["sort", "copy", "parse", "close", "validate", "format", "open", "mock"]
LANGS = ["Python", "Go"]


def qa_workload(rng: random.Random, n: int = 600) -> list[dict[str, Any]]:
    pool = [f"How do I {v} {t} in {lang}?" for t in TOPICS for v in VERBS for lang in LANGS]
    rng.shuffle(pool)
    pool = pool[:80]
    weights = [1 / (i + 1) for i in range(len(pool))]
    out = []
    for _ in range(n):
        question = rng.choices(pool, weights)[0]
        body: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": question}],
                                "stream": rng.random() < 0.5}
        if rng.random() < 0.3:
            body["temperature"] = 0.7
        out.append({"team": rng.choice(list(TEAMS)), "body": body})
    return out


TASKS = [f"fix the failing test in module {m}" for m in ("auth", "billing", "search", "export", "cli", "parser")] + [
    f"explain what {f} does" for f in ("setup.py", "main.py", "Makefile", "config.py", "worker.py", "db.py")]
TOOLS = [{"name": "Read", "description": "Read a file", "input_schema": {"type": "object", "properties": {
    "file_path": {"type": "string"}}, "required": ["file_path"]}},
         {"name": "Bash", "description": "Run a command", "input_schema": {"type": "object", "properties": {
             "command": {"type": "string"}}, "required": ["command"]}}]


def session_turns(task: str, repo: str, user: str) -> list[dict[str, Any]]:
    """The three requests of one session (the tool results are the repository's)."""
    system = [{"type": "text", "text": f"You are a coding agent. Working directory: /home/dev/{repo}.",
               "cache_control": {"type": "ephemeral"}}]
    base = {"model": "claude-sonnet-4-5", "max_tokens": 32000, "stream": True, "system": system, "tools": TOOLS,
            "metadata": {"user_id": user}}
    messages: list[dict[str, Any]] = [{"role": "user", "content": task}]
    turns = [{**base, "messages": list(messages)}]
    for step, (tool, arg, result) in enumerate([("Read", {"file_path": "main.py"}, f"# {repo} main.py\nprint('hi')"),
                                                ("Bash", {"command": "pytest -q"}, f"{repo}: 3 passed")]):
        messages += [{"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{step}", "name": tool,
                                                         "input": arg}]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{step}",
                                                   "content": result}]}]
        turns.append({**base, "messages": list(messages)})
    return turns


def cc_workload(rng: random.Random, n: int = 40) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        task, repo, team = rng.choice(TASKS), rng.choice(["api", "web", "infra"]), rng.choice(["alpha", "beta"])
        out += [{"team": team, "body": b} for b in session_turns(task, repo, f"user-{i}")]
    return out


def script(body: dict[str, Any], recorded: Any) -> Any:
    """The fake model: deterministic by the conversation."""
    messages = body["messages"]
    if body.get("tools"):
        results = sum(1 for m in messages if m.get("role") == "tool")
        if results == 0:
            return ToolCalls([("Read", {"file_path": "main.py"})])
        if results == 1:
            return ToolCalls([("Bash", {"command": "pytest -q"})])
        return Text("All tests pass now; the fix was a missing import in main.py. " * 3)
    question = messages[-1]["content"]
    return Text(f"To answer '{question}': use the standard library; here is an example and why it works. " * 4)


class Ledger:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    @hookimpl
    def record(self, ctx: RequestContext, event: dict[str, Any]) -> None:
        if event.get("kind") == "request":
            self.rows.append({"api": ctx.api, "cost": event.get("cost_usd") or 0.0, "saved": ctx.saved_usd,
                              "hit": ctx.cache_hit, "status": event.get("status")})


def replay(workload: list[dict[str, Any]], cache: dict[str, Any] | None) -> list[dict[str, Any]]:
    with FakeUpstream("openai") as up:
        up.script = script
        raw: dict[str, Any] = {
            "keys": [{"key": k, "name": t, "team": t} for t, k in TEAMS.items()],
            "models": {"*": [{"model": "openai/gpt-4o", "api_base": up.base_url, "api_key": "sk-up-1234567890abc"}]},
        }
        if cache is not None:
            raw["cache"] = cache
        ledger = Ledger()
        with GatewayServer(config_from(raw), plugins=[ledger]) as gw, httpx.Client(timeout=60) as client:
            for item in workload:
                body = item["body"]
                path = "/v1/messages" if "system" in body else "/v1/chat/completions"
                headers = {"x-api-key": TEAMS[item["team"]], "anthropic-version": "2023-06-01"}
                response = client.post(gw.base_url + path, headers=headers, json=body)
                assert response.status_code == 200, response.text
                time.sleep(0.002)  # lets the store (off the response path) land before a repeat
            deadline = time.monotonic() + 10
            while len(ledger.rows) < len(workload) and time.monotonic() < deadline:
                time.sleep(0.01)
        return ledger.rows


def summary(off: list[dict[str, Any]], on: list[dict[str, Any]], api: str) -> dict[str, Any]:
    base = sum(r["cost"] for r in off if r["api"] == api)
    spent = sum(r["cost"] for r in on if r["api"] == api)
    saved = sum(r["saved"] for r in on if r["api"] == api)
    hits = sum(1 for r in on if r["api"] == api and r["hit"])
    n = sum(1 for r in on if r["api"] == api)
    return {"requests": n, "hits": hits, "hit_rate": round(hits / n, 3), "cost_off_usd": round(base, 5),
            "cost_on_usd": round(spent, 5), "saved_usd": round(saved, 5), "share_saved": round(saved / base, 3),
            "check_off_minus_on": round(base - spent, 5)}


def main() -> int:
    rng = random.Random(11)
    workload = qa_workload(rng) + cc_workload(rng)
    off = replay(workload, None)
    on = replay(workload, {})  # the shipped defaults
    results = {"openai_qa": summary(off, on, "openai"), "claude_code_sessions": summary(off, on, "anthropic")}
    total_off = sum(r["cost"] for r in off)
    results["all"] = {"cost_off_usd": round(total_off, 5), "saved_usd": round(sum(r["saved"] for r in on), 5),
                      "share_saved": round(sum(r["saved"] for r in on) / total_off, 3)}
    out = ROOT / "bench" / "results" / "cache_savings.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Residency over every path (issue 12): one gateway where every path that picks a
deployment has an out-of-region candidate, and a key restricted to eu-west-1 that must
never reach one. Each fake upstream counts its calls.

Paths: a chain, a pool (the out-of-region deployment is the cheapest), a
similar-capability fallback (the out-of-region twin is the cheapest), a long answer's
continuations and its tool-call retry on a deployment with more room, context
fallbacks and the context summariser, every round of a server-tool loop, an
experiment's split arm and its shadow copies. A model that only runs outside the
key's regions is refused with a 403 that says so.

Not here: hedged first bytes (another helper is building them; main has none yet: a
hedge is one more candidate of the same ordered list, which the core filters with
``inside_regions`` before any attempt) and health probes (``clasp-fallback``'s
``GET /models`` or a one-token ping of the gateway's own, carrying no key's data:
they check each deployment where it runs, whoever is restricted).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from clasp_gateway import hookimpl
from clasp_gateway.testing import GATEWAY_KEY, Error, FakeUpstream, GatewayServer, Text, ToolCalls, config_from

EU_KEY = "sk-clasp-eu-only-residency-0123456789ab"
UPSTREAM_KEY = "sk-upstream-residency-0123456789abcdef"
EU, US = "eu-west-1", "us-east-1"
NAMES = ("chain_us", "chain_eu", "pool_us", "pool_eu", "solo_eu", "twin_us", "twin_eu", "long_eu", "long_us",
         "fit_eu", "ctx_us", "summ_us", "summ_eu", "tools_us", "tools_eu", "exp_eu", "exp_us", "shadow_eu",
         "shadow_us", "only_us")


@pytest.fixture(scope="module", autouse=True)
def plugins() -> Iterator[None]:
    """The router, clasp-fallback and the Anthropic API (module scope: one gateway)."""
    old = os.environ.get("CLASP_LOAD_PLUGINS")
    os.environ["CLASP_LOAD_PLUGINS"] = "router,fallback,claude"
    yield
    if old is None:
        os.environ.pop("CLASP_LOAD_PLUGINS", None)
    else:
        os.environ["CLASP_LOAD_PLUGINS"] = old


class Clock:
    """A server tool the model calls once per answer."""

    @hookimpl
    def register_tools(self, register: Callable[..., None]) -> None:
        register("clock", "The time", {"type": "object", "properties": {}}, lambda arguments, ctx: "noon")


def tool_script(body: dict[str, Any], rec: Any) -> Any:
    done = any(m.get("role") == "tool" for m in body.get("messages") or [])
    return Text("it is noon") if done else ToolCalls([("clock", {})])


def history(turns: int = 14) -> list[dict[str, str]]:
    """A conversation far over a 3000-token window."""
    out: list[dict[str, str]] = []
    for i in range(turns):
        out.append({"role": "user", "content": f"step {i}: " + "please look at this code again " * 40})
        out.append({"role": "assistant", "content": f"done with step {i}: " + "it looks fine to me " * 40})
    out.append({"role": "user", "content": "and now?"})
    return out


@pytest.fixture(scope="module")
def ups() -> Iterator[dict[str, FakeUpstream]]:
    started = [FakeUpstream("openai").start() for _ in NAMES]
    found = dict(zip(NAMES, started, strict=True))
    for name, up in found.items():
        up.script = (lambda n: lambda body, rec: Text(f"from {n}"))(name)
    found["tools_us"].script = found["tools_eu"].script = tool_script
    try:
        yield found
    finally:
        for up in started:
            up.stop()


def calls(up: FakeUpstream) -> int:
    return sum(1 for r in up.requests if r.path.endswith("/chat/completions"))


@pytest.fixture(scope="module")
def gw(ups: dict[str, FakeUpstream]) -> Iterator[GatewayServer]:
    def d(name: str, **extra: Any) -> dict[str, Any]:
        region = US if name.endswith("_us") else EU
        return {"id": name.replace("_", "-"), "model": "openai/gpt-4o-mini", "api_base": ups[name].base_url,
                "api_key": UPSTREAM_KEY, "region": region,
                "timeouts": {"connect": 1, "first_byte": 3, "idle": 3, "total": 10}, **extra}

    cheap = {"input_cost_per_token": 1e-9, "output_cost_per_token": 1e-9}
    dear = {"input_cost_per_token": 1e-5, "output_cost_per_token": 1e-5}
    caps = {"supports_vision": True, "max_input_tokens": 128000, "max_output_tokens": 16000}
    config = config_from({
        "keys": [{"key": GATEWAY_KEY, "name": "anywhere"}, {"key": EU_KEY, "name": "eu", "regions": [EU]}],
        "models": {
            "chain": [d("chain_us"), d("chain_eu")],
            "pool-parts": [d("pool_us", **cheap), d("pool_eu", **dear)],
            "pool": {"pool": ["pool-us", "pool-eu"], "router": "cheapest-capable"},
            "solo": [d("solo_eu", **caps, **dear)],
            "twin-us": [d("twin_us", **caps, **cheap)],
            "twin-eu": [d("twin_eu", **caps, **dear)],
            "long": [d("long_eu", max_output_tokens=50), d("long_us", max_output_tokens=8000)],
            "fitme": {"deployments": [d("fit_eu", max_input_tokens=3000, max_output_tokens=512)],
                      "context_fallback": ["ctx-us"], "context": {"summarize_with": "summ", "summary_max_tokens": 100}},
            "ctx": [d("ctx_us", max_input_tokens=200000)],
            "summ": [d("summ_us"), d("summ_eu")],
            "tools": [d("tools_us"), d("tools_eu")],
            "exp": [d("exp_eu")],
            "exp-candidate": [d("exp_us")],
            "shadowed": [d("shadow_eu")],
            "shadow-candidate": [d("shadow_us")],
            "us-only": [d("only_us")],
        },
        "router": {"strategy": "chain"},
        "fallback": {"breaker": {"failures": 1, "cooldown": 60}},
        "long_answers": {"max_continuations": 2},
        "server_tools": {"enabled": ["clock"], "models": ["tools"]},
        "experiments": {
            "split-us": {"route": "exp", "candidate": "exp-us", "mode": "split", "weight": 1.0, "sticky": "request"},
            "shadow-us": {"route": "shadowed", "candidate": "shadow-us", "mode": "shadow", "shadow_rate": 1.0},
        },
    })
    with GatewayServer(config, plugins=[Clock()]) as server:
        yield server


def post(gw: GatewayServer, body: dict[str, Any], key: str = EU_KEY, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(gw.base_url + path, json=body, headers={"x-api-key": key}, timeout=15)


def ask(gw: GatewayServer, model: str, key: str = EU_KEY, **body: Any) -> httpx.Response:
    return post(gw, {"model": model, "messages": [{"role": "user", "content": "hi"}], **body}, key)


def text(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


def test_every_path_stays_in_the_keys_regions(gw: GatewayServer, ups: dict[str, FakeUpstream]) -> None:
    before = {n: calls(u) for n, u in ups.items()}
    # A chain whose first deployment is outside; a pool whose cheapest one is.
    assert text(ask(gw, "chain")) == "from chain_eu"
    assert text(ask(gw, "pool")) == "from pool_eu"
    assert text(ask(gw, "pool", key=GATEWAY_KEY)) == "from pool_us"  # (anywhere: the cheapest)
    # A similar-capability fallback: the chain is down, the cheapest twin is outside.
    ups["solo_eu"].script = lambda body, rec: Error(503, {"error": {"message": "down"}})
    assert ask(gw, "solo", key=GATEWAY_KEY).status_code >= 500  # opens the breaker
    r = ask(gw, "solo")
    assert text(r) == "from twin_eu" and "similar-capability fallback" in r.headers["x-clasp-route"]
    # A long answer: continued in the region, and a cut tool call retried only there.
    ups["long_eu"].script = lambda body, rec: Text("part ", finish_reason="length", usage=(5, 50))
    r = ask(gw, "long", max_tokens=4000)
    assert text(r) == "part part part " and r.headers["x-clasp-continued"] == "2"
    assert text(ask(gw, "long", key=GATEWAY_KEY, max_tokens=4000)) == "from long_us"  # (anywhere: room first)
    ups["long_eu"].script = lambda body, rec: ToolCalls([("write", '{"a": "')], finish_reason="length", usage=(5, 50))
    tools = [{"type": "function", "function": {"name": "write", "parameters": {"type": "object"}}}]
    r = ask(gw, "long", max_tokens=4000, tools=tools)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"  # honest: no room inside
    # Context fallbacks and the summariser.
    r = post(gw, {"model": "fitme", "max_tokens": 100, "messages": history()})
    assert text(r) == "from fit_eu" and r.headers["x-clasp-context"].endswith("by=summ-eu")
    # Every round of a server-tool loop.
    assert text(ask(gw, "tools")) == "it is noon"
    # An experiment's split arm and its shadow copies.
    assert text(ask(gw, "exp")) == "from exp_eu"
    assert text(ask(gw, "shadowed")) == "from shadow_eu"
    after = {n: calls(u) for n, u in ups.items()}
    leaked = {n: after[n] - before[n] for n in NAMES if n.endswith("_us") and after[n] != before[n]}
    assert leaked == {"pool_us": 1, "long_us": 1}, leaked  # only the unrestricted key's own calls
    assert after["tools_eu"] - before["tools_eu"] == 2 and after["long_eu"] - before["long_eu"] == 4
    assert after["summ_eu"] - before["summ_eu"] == 1


def test_the_split_and_the_shadow_do_reach_the_candidate_for_an_unrestricted_key(
        gw: GatewayServer, ups: dict[str, FakeUpstream]) -> None:
    """(So the test above proves something: the candidates are live.)"""
    assert text(ask(gw, "exp", key=GATEWAY_KEY)) == "from exp_us"
    before = calls(ups["shadow_us"])
    assert text(ask(gw, "shadowed", key=GATEWAY_KEY)) == "from shadow_eu"
    ups["shadow_us"].wait_for(before + 1, timeout=5)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_model_only_served_outside_the_regions_is_refused_saying_so(
        gw: GatewayServer, ups: dict[str, FakeUpstream], path: str) -> None:
    r = post(gw, {"model": "us-only", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}, path=path)
    assert r.status_code == 403
    message = r.json()["error"]["message"]
    assert "regions (eu-west-1)" in message and "us-east-1" in message
    assert calls(ups["only_us"]) == 0

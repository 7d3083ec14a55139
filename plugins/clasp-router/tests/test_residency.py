"""Residency over every path the gateway chooses deployments on: the chain, the
similar-capability fallback (test_routing), context fallbacks and the context
summariser and every round of a server-tool loop (here). A key restricted to eu-west-1 never reaches a us-east-1 upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from clasp_gateway import hookimpl
from clasp_gateway.testing import FakeUpstream, GatewayServer, Text, ToolCalls, config_from

EU_KEY = "sk-clasp-eu-only-key-0123456789abcdef"


def history(turns: int = 14) -> list[dict[str, str]]:
    """A conversation far over a 3000-token window, ending with a question."""
    out: list[dict[str, str]] = []
    for i in range(turns):
        out.append({"role": "user", "content": f"step {i}: " + "please look at this code again " * 40})
        out.append({"role": "assistant", "content": f"done with step {i}: " + "it looks fine to me " * 40})
    out.append({"role": "user", "content": "and now?"})
    return out


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeUpstream]]:
    names = ("small", "long_us", "summ_us", "summ_eu")
    with FakeUpstream("openai") as a, FakeUpstream("openai") as b, FakeUpstream("openai") as c, \
            FakeUpstream("openai") as d:
        found = dict(zip(names, (a, b, c, d), strict=True))
        for name, up in found.items():
            up.script = (lambda n: lambda body, rec: Text(f"from {n}"))(name)
        yield found


@pytest.fixture(scope="module")
def gw(start: Callable[..., Any], fakes: dict[str, FakeUpstream], kit: Any) -> Any:
    d = kit.deployment
    return start({
        "fitme": {"deployments": [d(fakes["small"], "small", region="eu-west-1", max_input_tokens=3000,
                                    max_output_tokens=512)],
                  "context_fallback": ["long-us"],
                  "context": {"summarize_with": "summ", "summary_max_tokens": 100}},
        "long-us": [d(fakes["long_us"], "long-us", region="us-east-1", max_input_tokens=200000)],
        "summ": [d(fakes["summ_us"], "summ-us", region="us-east-1"), d(fakes["summ_eu"], "summ-eu", region="eu-west-1")],
    })


def calls(up: FakeUpstream) -> int:
    return sum(1 for r in up.requests if r.path.endswith("/chat/completions"))


def test_context_fallback_and_summariser_stay_in_the_regions(gw: Any, fakes: dict[str, FakeUpstream]) -> None:
    before = {n: calls(u) for n, u in fakes.items()}
    r = gw.post("/v1/chat/completions", {"model": "fitme", "max_tokens": 100, "messages": history()}, EU_KEY)
    assert gw.text(r) == "from small", r.headers
    assert r.headers["x-clasp-context"].startswith("summarized;") and r.headers["x-clasp-context"].endswith(
        "by=summ-eu"), r.headers["x-clasp-context"]
    after = {n: calls(u) for n, u in fakes.items()}
    assert after["long_us"] == before["long_us"] and after["summ_us"] == before["summ_us"]
    assert after["summ_eu"] == before["summ_eu"] + 1


def test_an_unrestricted_key_takes_the_larger_window_anywhere(gw: Any, fakes: dict[str, FakeUpstream]) -> None:
    r = gw.post("/v1/chat/completions", {"model": "fitme", "max_tokens": 100, "messages": history()})
    assert gw.text(r) == "from long_us"
    assert r.headers["x-clasp-context"] == "rerouted; to=long-us"


class Clock:
    """A server tool the model calls once (each round of the loop is routed again)."""

    @hookimpl
    def register_tools(self, register: Callable[..., None]) -> None:
        register("clock", "The time", {"type": "object", "properties": {}}, lambda arguments, ctx: "noon")


def test_every_round_of_a_server_tool_loop_stays_in_the_regions(kit: Any) -> None:
    def script(body: dict[str, Any], rec: Any) -> Any:
        done = any(m.get("role") == "tool" for m in body.get("messages") or [])
        return Text("it is noon") if done else ToolCalls([("clock", {})])

    with FakeUpstream("openai") as us, FakeUpstream("openai") as eu:
        us.script = script
        eu.script = script
        config = config_from({
            "keys": [{"key": EU_KEY, "name": "eu", "regions": ["eu-west-1"]}],
            "models": {"m": [kit.deployment(us, "us", region="us-east-1"), kit.deployment(eu, "eu", region="eu-west-1")]},
            "server_tools": {"enabled": ["clock"]},
        })
        with GatewayServer(config, plugins=[Clock()]) as server:
            r = httpx.post(server.base_url + "/v1/chat/completions", headers={"x-api-key": EU_KEY}, timeout=10,
                           json={"model": "m", "messages": [{"role": "user", "content": "time?"}]})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == "it is noon"
    assert calls(eu) == 2 and calls(us) == 0  # both rounds in eu-west-1

"""A client cannot steer an upstream call (issue 7, defect 12).

Tried as an attacker with a valid gateway key would: every keyword argument
``litellm.completion`` accepts (its signature, LiteLLM's ``all_litellm_params``,
and the names its ``main.py``/``utils.py`` read from ``kwargs``), plus unknown keys,
each with a hostile value (a URL of a second fake server that records whether it
is ever called, attacker keys, header dicts, large retry counts, fallbacks, mock
answers, callables as strings...), sent on every path (direct, transform,
``litellm.acompletion``, the Anthropic pass-through) through both client APIs.

Against a clean request to the same deployment, the upstream URL, the key it
carries, its headers, its body's keys and the number of upstream calls never
change; the second server is never called; and the answer is the normal one or a
clean 4xx (never a 5xx).
"""

from __future__ import annotations

import inspect
import json
import os
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import clasp_claude  # noqa: E402
import litellm  # noqa: E402  (once per test process; the gateway imports it anyway)
from clasp_claude.passthrough import ANTHROPIC_PARAMS  # noqa: E402
from litellm.types.utils import all_litellm_params  # noqa: E402

from clasp_gateway.plugins import PluginManager  # noqa: E402
from clasp_gateway.shell.app import create_app  # noqa: E402
from clasp_gateway.testing import GATEWAY_KEY, Error, FakeUpstream, GatewayServer, config_from  # noqa: E402
from clasp_gateway.testing.fakes.record import Recorded  # noqa: E402
from clasp_gateway.wire.params import UPSTREAM_PARAMS  # noqa: E402

OPENAI_KEY = "sk-upstream-Wq8ZrT4mLx0vKp3N"
GEMINI_KEY = "AIzaUpstreamGemini7Hd2Kq9Xw4Rt"
ANTHROPIC_KEY = "sk-ant-upstream-Jf6Tq1Vz8Bn3Cx5M"
ATTACKER_KEY = "sk-attacker-0000000000000000000000"

# Names LiteLLM reads from **kwargs in main.py / utils.py (1.110.2: grep for
# `kwargs.get("` / `kwargs.pop("` / `kwargs["`), beyond its signature and
# all_litellm_params.
KWARGS_READ = (
    "_arealtime _is_litellm_internal_call _skip_mcp_handler _skip_responses_api_bridge acompletion "
    "acreate_batch additional_drop_params aembedding aimg_generation allowed_openai_params api_base api_key "
    "assistant_continue_message azure azure_ad_token azure_ad_token_provider azure_password azure_scope "
    "azure_username base_model bos_token cache caching callbacks client client_id client_secret config "
    "context_window_fallback_dict cooldown_time cost_per_second custom_llm_provider drop_params engine "
    "ensure_alternating_roles eos_token extra_body extra_headers failure_callback fallbacks final_prompt_value "
    "force_timeout headers hf_model_name id initial_prompt_value input_cost_per_second input_cost_per_token "
    "litellm_call_id litellm_credential_name litellm_logging_obj litellm_metadata litellm_session_id "
    "litellm_system_prompt litellm_trace_id logger_fn max_retries merge_reasoning_content_in_choices metadata "
    "mock_delay mock_response mock_timeout mock_tool_calls model_file_id_mapping model_info no-log num_retries "
    "organization original_function output_cost_per_second output_cost_per_token preset_cache_key "
    "prompt_id prompt_label prompt_variables prompt_version provider_specific_header proxy_server_request "
    "retry_policy retry_strategy roles rpm secret_fields session_id shared_session ssl_verify stream_timeout "
    "success_callback supports_system_message tags tenant_id text_completion tpm use_litellm_proxy "
    "use_xai_oauth user_continue_message verbose complete_response top_n_tokens aspeech atranscription"
).split()

_rng = random.Random(20261206)
UNKNOWN = [
    "".join(_rng.choice(string.ascii_letters + "_-") for _ in range(_rng.randint(3, 24))) for _ in range(20)
] + ["__proto__", "constructor", "", " ", "API_BASE", "apiBase", "base-url", "x-api-key", "Authorization",
     "$where", "api_base ", "x" * 1000]

ATTACK_NAMES = sorted(
    ({*inspect.signature(litellm.completion).parameters, *all_litellm_params, *KWARGS_READ, *UNKNOWN}
     - {"kwargs", "self"}) - UPSTREAM_PARAMS
)
"""Every name a client could try; the canonical parameters are tested on their own."""

DANGEROUS = [
    "api_base", "base_url", "api_key", "fallbacks", "extra_headers", "headers", "organization", "num_retries",
    "max_retries", "mock_response", "deployment_id", "model_list", "client", "extra_body", "custom_llm_provider",
    "api_version", "timeout", "metadata", "context_window_fallback_dict", "logger_fn", "litellm_logging_obj",
    "azure_ad_token", "mock_tool_calls", "shared_session",
]

EVIL_URL = ""  # set once the second server listens (module fixture)


def hostile(name: str) -> Any:
    """The most harmful value for ``name`` an attacker would try."""
    header_dict = {"X-Evil": "1", "Authorization": f"Bearer {ATTACKER_KEY}", "x-api-key": ATTACKER_KEY,
                   "api-key": ATTACKER_KEY, "x-goog-api-key": ATTACKER_KEY}
    specific: dict[str, Any] = {
        "extra_headers": header_dict, "headers": header_dict, "provider_specific_header": {
            "custom_llm_provider": "openai", "extra_headers": header_dict},
        "fallbacks": [{"model": "openai/gpt-4o", "api_base": EVIL_URL, "api_key": None}, "openai/gpt-4o"],
        "context_window_fallback_dict": {"openai/gpt-4o": "openai/gpt-4o-mini"},
        "model_list": [{"model_name": "x", "litellm_params": {"model": "openai/gpt-4o", "api_base": EVIL_URL}}],
        "num_retries": 20, "max_retries": 20, "max_fallbacks": 20, "max_parallel_requests": 0,
        "retry_policy": {"InternalServerErrorRetries": 20}, "rpm": 0, "tpm": 0,
        "mock_response": "pwned", "mock_tool_calls": [{"id": "x", "type": "function",
                                                       "function": {"name": "pwn", "arguments": "{}"}}],
        "mock_timeout": True, "mock_delay": 30,
        "deployment_id": "evil-deployment", "organization": "org-evil", "custom_llm_provider": "openai",
        "api_version": "2099-01-01", "timeout": 1e-9, "stream_timeout": 1e-9, "request_timeout": 1e-9,
        "metadata": {"headers": header_dict, "api_base": EVIL_URL, "user_api_key": ATTACKER_KEY},
        "litellm_metadata": {"api_base": EVIL_URL},
        "extra_body": {"api_base": EVIL_URL, "model": "evil", "extra_headers": header_dict},
        "client": f"openai.OpenAI(base_url='{EVIL_URL}', api_key='{ATTACKER_KEY}')",
        "shared_session": "aiohttp.ClientSession()", "logger_fn": "os.system",
        "callbacks": ["os.system"], "success_callback": ["os.system"], "failure_callback": ["os.system"],
        "litellm_logging_obj": "os.system", "ssl_verify": False, "drop_params": False,
        "allowed_openai_params": ["api_base"], "additional_drop_params": ["messages"],
        "use_litellm_proxy": True, "cache": {"no-cache": True}, "caching": True,
        "input_cost_per_token": 0, "output_cost_per_token": 0,
    }
    if name in specific:
        return specific[name]
    lowered = name.lower()
    if any(w in lowered for w in ("url", "base", "endpoint", "host", "server")):
        return EVIL_URL
    if any(w in lowered for w in ("key", "token", "secret", "password", "credential")):
        return ATTACKER_KEY
    if "retries" in lowered or "retry" in lowered:
        return 20
    return EVIL_URL


@dataclass(frozen=True)
class Route:
    """One path through the gateway: a public model name, a client API, a fake."""

    model: str
    api: str  # "anthropic" or "openai"
    upstream: str  # which fake answers


ROUTES = [
    Route("direct", "anthropic", "openai"), Route("direct", "openai", "openai"),
    Route("transform", "anthropic", "gemini"), Route("transform", "openai", "gemini"),
    Route("litellm", "anthropic", "litellm"), Route("litellm", "openai", "litellm"),
    Route("anthropic", "anthropic", "anthropic"),  # the pass-through
    Route("anthropic", "openai", "anthropic"),  # LiteLLM's Anthropic transform
]


def credential(rec: Recorded) -> str | None:
    return rec.bearer or rec.headers.get("x-api-key") or rec.headers.get("api-key") or rec.headers.get(
        "x-goog-api-key") or rec.query.get("key")


@dataclass
class Seen:
    """What one upstream request looked like."""

    method: str
    path: str
    query: dict[str, str]
    key: str | None
    headers: dict[str, str]
    body_keys: frozenset[str]

    @classmethod
    def of(cls, rec: Recorded) -> Seen:
        headers = {k.lower(): v for k, v in rec.headers.items() if k.lower() not in ("content-length",)}
        return cls(rec.method, rec.path, dict(rec.query), credential(rec), headers, frozenset(rec.json))


class Stack:
    """Four fakes, a second ("evil") server, and one gateway serving every path."""

    def __init__(self, fakes: dict[str, FakeUpstream], evil: FakeUpstream, gateway: GatewayServer) -> None:
        self.fakes = fakes
        self.evil = evil
        self.gateway = gateway
        self.clean: dict[tuple[Route, bool], tuple[list[Seen], str]] = {}

    def reset(self) -> None:
        for fake in (*self.fakes.values(), self.evil):
            fake.reset()

    def send(self, route: Route, stream: bool, extra: dict[str, Any],
             headers: dict[str, str] | None = None) -> httpx.Response:
        messages = [{"role": "user", "content": "hi"}]
        body = {"model": route.model, "max_tokens": 50, "messages": messages, "stream": stream}
        body.update(extra)
        hdrs = {"anthropic-version": "2023-06-01", **(headers or {})}
        if route.api == "anthropic":
            url = self.gateway.base_url + "/v1/messages"
            hdrs["x-api-key"] = GATEWAY_KEY
        else:
            url = self.gateway.base_url + "/v1/chat/completions"
            hdrs["authorization"] = f"Bearer {GATEWAY_KEY}"
        return httpx.post(url, content=json.dumps(body), headers={**hdrs, "content-type": "application/json"},
                          timeout=60)

    def upstream(self, route: Route) -> FakeUpstream:
        return self.fakes[route.upstream]


def answer_text(api: str, stream: bool, response: httpx.Response) -> str:
    """The assistant's text, or an AssertionError when the answer is not a whole one."""
    if not stream:
        data = response.json()
        if api == "anthropic":
            return "".join(b.get("text", "") for b in data["content"])
        return str(data["choices"][0]["message"]["content"])
    text = response.text
    if api == "anthropic":
        assert "event: error" not in text and "event: message_stop" in text, text[-500:]
        parts = []
        for line in text.splitlines():
            if line.startswith("data: "):
                payload = json.loads(line[6:])
                if payload.get("type") == "content_block_delta" and payload["delta"].get("type") == "text_delta":
                    parts.append(payload["delta"]["text"])
        return "".join(parts)
    assert text.rstrip().endswith("data: [DONE]"), text[-500:]
    parts = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            payload = json.loads(line[6:])
            assert "error" not in payload, payload
            for choice in payload.get("choices") or ():
                parts.append((choice.get("delta") or {}).get("content") or "")
    return "".join(parts)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    global EVIL_URL
    with FakeUpstream("openai", require_key=OPENAI_KEY) as openai_up, \
            FakeUpstream("openai", require_key=OPENAI_KEY) as litellm_up, \
            FakeUpstream("gemini", require_key=GEMINI_KEY) as gemini_up, \
            FakeUpstream("anthropic", require_key=ANTHROPIC_KEY) as anthropic_up, \
            FakeUpstream("openai", require_key=False) as evil:
        EVIL_URL = evil.base_url
        config = config_from({"models": {
            "direct": [{"model": "openai/gpt-4o", "api_base": openai_up.base_url, "api_key": OPENAI_KEY}],
            "transform": [{"model": "gemini/gemini-2.5-flash", "api_base": gemini_up.base_url,
                           "api_key": GEMINI_KEY}],
            "litellm": [{"model": "openai/gpt-4o", "api_base": litellm_up.base_url, "api_key": OPENAI_KEY,
                         "mode": "litellm"}],
            "anthropic": [{"model": "anthropic/claude-sonnet-4-5-20250929", "api_base": anthropic_up.base_url,
                           "api_key": ANTHROPIC_KEY}],
        }})
        # The core and the Claude plugin only: one attempt per request (no fallback
        # plugin retrying), so every upstream call is accounted for.
        pm = PluginManager()
        pm.load(entry_points=False)
        pm.register(clasp_claude, name="claude")
        with GatewayServer(config, create_app(config, pm)) as gateway:
            s = Stack({"openai": openai_up, "litellm": litellm_up, "gemini": gemini_up,
                       "anthropic": anthropic_up}, evil, gateway)
            for route in ROUTES:
                for stream in (False, True):
                    s.reset()
                    r = s.send(route, stream, {})
                    assert r.status_code == 200, (route, stream, r.text)
                    seen = [Seen.of(rec) for rec in s.upstream(route).requests]
                    assert len(seen) == 1 and seen[0].key not in (None, ATTACKER_KEY), (route, seen)
                    s.clean[(route, stream)] = (seen, answer_text(route.api, stream, r))
            yield s


def check_unchanged(stack: Stack, route: Route, stream: bool, response: httpx.Response, what: str) -> None:
    """The attack changed nothing upstream, and the client got the normal answer or a clean 4xx."""
    clean, clean_text = stack.clean[(route, stream)]
    where = f"{what} on {route.model} via the {route.api} API (stream={stream})"
    assert not stack.evil.requests, f"{where}: the second server was called: {stack.evil.requests[0].path}"
    seen = [Seen.of(rec) for rec in stack.upstream(route).requests]
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        body = response.json()
        if route.api == "anthropic":
            assert body.get("type") == "error" and body["error"]["message"], f"{where}: {body}"
        else:
            assert body["error"]["message"], f"{where}: {body}"
        assert "Traceback" not in response.text and "litellm." not in response.text, f"{where}: {response.text}"
        assert len(seen) <= len(clean), f"{where}: {len(seen)} upstream calls for a refused request"
    else:
        assert answer_text(route.api, stream, response) == clean_text, f"{where}: {response.text[:500]}"
        assert len(seen) == len(clean), f"{where}: {len(seen)} upstream calls instead of {len(clean)}"
    for got, want in zip(seen, clean, strict=False):
        assert (got.method, got.path, got.query) == (want.method, want.path, want.query), f"{where}: URL changed"
        assert got.key == want.key, f"{where}: the upstream call carried another key"
        assert got.headers == want.headers, f"{where}: headers changed: {set(got.headers.items()) ^ set(want.headers.items())}"
        # Only parameters of the client's own API may add to the body (the pass-through
        # forwards Anthropic's, e.g. ``metadata``), never anything else.
        legit = ANTHROPIC_PARAMS if (route.api, route.upstream) == ("anthropic", "anthropic") else frozenset()
        assert got.body_keys - want.body_keys <= legit, f"{where}: body keys changed: {got.body_keys ^ want.body_keys}"
        assert want.body_keys <= got.body_keys, f"{where}: body keys lost: {want.body_keys - got.body_keys}"


HOSTILE_HEADERS = {"OpenAI-Organization": "org-evil", "X-Forwarded-Host": "evil.example", "api-key": ATTACKER_KEY,
                   "x-goog-api-key": ATTACKER_KEY, "x-litellm-api-key": ATTACKER_KEY}


def attack(stack: Stack, names: list[str], what: str, *, both_streams: bool = False, offset: int = 0) -> None:
    for i, route in enumerate(ROUTES):
        for stream in (False, True) if both_streams else ((i + offset) % 2 == 0,):
            stack.reset()
            extra = {name: hostile(name) for name in names}
            response = stack.send(route, stream, extra, HOSTILE_HEADERS)
            check_unchanged(stack, route, stream, response, what)


def test_the_attack_list_is_complete() -> None:
    """The list covers LiteLLM's whole surface (so an upgrade that adds a kwarg is covered)."""
    assert len(ATTACK_NAMES) > 400
    for name in ("api_base", "base_url", "api_key", "fallbacks", "extra_headers", "headers", "num_retries",
                 "mock_response", "deployment_id", "model_list", "client", "extra_body", "organization"):
        assert name in ATTACK_NAMES


def test_every_litellm_kwarg_at_once(stack: Stack) -> None:
    attack(stack, ATTACK_NAMES, "all LiteLLM kwargs at once", both_streams=True)


@pytest.mark.parametrize("name", DANGEROUS)
def test_one_dangerous_kwarg(stack: Stack, name: str) -> None:
    attack(stack, [name], repr(name), offset=DANGEROUS.index(name))


CHUNK = 30


@pytest.mark.parametrize("start", range(0, len(ATTACK_NAMES), CHUNK),
                         ids=lambda start: f"{ATTACK_NAMES[start]}..")
def test_litellm_kwargs_in_groups(stack: Stack, start: int) -> None:
    names = ATTACK_NAMES[start:start + CHUNK]
    attack(stack, names, f"kwargs {names[0]}..{names[-1]}", offset=start // CHUNK)


# Canonical parameters do go upstream; hostile values in them must still steer
# nothing (and a wrong type is a clean 400 on the OpenAI API, not a crash).
CANONICAL_HOSTILE: dict[str, list[Any]] = {
    "temperature": [EVIL_URL or "http://127.0.0.1:9/v1", {"api_base": "x"}],
    "top_p": ["x", [1]],
    "top_k": ["x", 1.5],
    "n": [5, "x"],
    "stop": [{"api_base": "x"}, [1, 2]],
    "max_tokens": ["x", -1, 1.5],
    "max_completion_tokens": ["x", 0],
    "presence_penalty": ["x"],
    "frequency_penalty": [{"a": 1}],
    "logit_bias": ["x", {"api_base": "http://127.0.0.1:9/v1"}],
    "user": [{"api_key": ATTACKER_KEY}, "http://127.0.0.1:9/v1"],
    "response_format": ["json", {"type": "text", "api_base": "http://127.0.0.1:9/v1"}],
    "seed": ["x", 2**70, 1.5],
    "tools": ["x", [{"type": "mcp", "server_url": "litellm_proxy/mcp/x"}], [1]],
    "tool_choice": [5, {"type": "function", "function": {"name": "x"}, "api_base": "http://127.0.0.1:9/v1"}],
    "parallel_tool_calls": ["yes"],
    "reasoning_effort": [{"api_base": "x"}],
    "logprobs": ["x"],
    "top_logprobs": ["x"],
    "stream_options": ["x", {"include_usage": True, "api_base": "http://127.0.0.1:9/v1"}],
}


def test_canonical_parameter_list_is_covered() -> None:
    assert set(CANONICAL_HOSTILE) == UPSTREAM_PARAMS - {"model", "messages", "stream"}


@pytest.mark.parametrize("name", sorted(CANONICAL_HOSTILE))
def test_hostile_values_of_canonical_parameters(stack: Stack, name: str) -> None:
    for value in CANONICAL_HOSTILE[name]:
        for i, route in enumerate(ROUTES):
            stream = i % 2 == 0
            stack.reset()
            response = stack.send(route, stream, {name: value})
            check_unchanged_target(stack, route, stream, response, f"{name}={value!r}")


def check_unchanged_target(stack: Stack, route: Route, stream: bool, response: httpx.Response, what: str) -> None:
    """A canonical parameter may reach the body, but never the URL, key, headers or call count."""
    clean, _ = stack.clean[(route, stream)]
    where = f"{what} on {route.model} via the {route.api} API (stream={stream})"
    assert not stack.evil.requests, where
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        assert "Traceback" not in response.text and "litellm." not in response.text, f"{where}: {response.text}"
    seen = [Seen.of(rec) for rec in stack.upstream(route).requests]
    assert len(seen) <= len(clean), f"{where}: {len(seen)} upstream calls"
    for got, want in zip(seen, clean, strict=False):
        assert (got.method, got.path, got.query) == (want.method, want.path, want.query), f"{where}: URL changed"
        assert got.key == want.key, f"{where}: another key"
        assert got.headers == want.headers, f"{where}: headers changed"


# --------------------------------------------------------------------------------------
# LiteLLM's own retries: the fallback policy is the only one
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 429, 503])
def test_litellm_makes_one_upstream_call_per_attempt(stack: Stack, status: int) -> None:
    """A failing ``mode: litellm`` deployment gets exactly one call per gateway attempt
    (no fallback plugin here: one attempt), not LiteLLM's or the openai SDK's retries."""
    up = stack.fakes["litellm"]
    for api in ("anthropic", "openai"):
        for stream in (False, True):
            stack.reset()
            up.queue(*[Error(status)] * 30)
            response = stack.send(Route("litellm", api, "litellm"), stream, {})
            assert response.status_code >= 400, response.text
            assert len(up.requests) == 1, f"{api} stream={stream}: {len(up.requests)} upstream calls for one attempt"
            assert "Traceback" not in response.text and "litellm." not in response.text, response.text

"""No secret, and no fragment of one, leaves the gateway (issue 7, defect 15).

Fake upstreams echo the key they were sent (in JSON errors, a mid-stream error
event, an HTML page, masked as OpenAI masks it) on every path: direct, transform,
``litellm.acompletion`` and the Anthropic pass-through. The client's answer and
every log record (all loggers, LiteLLM's included, tracebacks included) are scanned
for each secret and its 4+-character ends. LiteLLM's error text reaches a client
as the provider's status and a clean message, never its class names or a
traceback. (The end-to-end scan of a served gateway, ``clasp check`` and
``/health/providers`` is ``test_credentials.py::test_secrets_never_reach_logs_errors_plugins_or_check_output``.)
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import clasp_claude  # noqa: E402

from clasp_gateway.plugins import PluginManager  # noqa: E402
from clasp_gateway.redact import install_redaction, key_id, redact, register_secret  # noqa: E402
from clasp_gateway.shell.app import create_app  # noqa: E402
from clasp_gateway.testing import GATEWAY_KEY, Error, FakeUpstream, GatewayServer, Raw, Text, config_from, free_port  # noqa: E402
from clasp_gateway.testing.fakes.anthropic import anthropic_error  # noqa: E402
from clasp_gateway.testing.fakes.record import Recorded  # noqa: E402
from clasp_gateway.wire.litellm_adapter import LiteLLMAdapter  # noqa: E402

OPENAI_KEY = "sk-proj-Qz7Xw9Lm2Np4Rt6VyME42"
LITELLM_KEY = "sk-proj-Hb5Kd8Fs1Gj3Vn0QpZT7"
GEMINI_KEY = "AIzaSyR4nD0mK3yQ7wX1vB9cE2fG6hJ8kL5pNW"
ANTHROPIC_KEY = "sk-ant-api03-Tx4Rw8Qe2Ys6Ui0OpLKJ"
SECRETS = [OPENAI_KEY, LITELLM_KEY, GEMINI_KEY, ANTHROPIC_KEY, GATEWAY_KEY]


def fragments(secret: str) -> list[str]:
    """The secret, its last 4 characters, and its shortest "own" prefix (from the first
    digit or capital on: ``sk-proj-Q``); a leak of any 4+-character end contains one."""
    first = next((i for i, c in enumerate(secret) if c.isdigit() or c.isupper()), len(secret) - 1)
    return [secret, secret[-4:], secret[: max(4, first + 1)]]


def assert_no_secret(text: str, where: str, secrets: list[str] = SECRETS) -> None:
    for secret in secrets:
        for piece in fragments(secret):
            assert piece not in text, f"{where}: {piece!r} (from a secret) leaked:\n{text[-3000:]}"


def masked(key: str) -> str:
    """How OpenAI echoes a key it refuses."""
    return key[:5] + "*" * (len(key) - 9) + key[-4:]


# --------------------------------------------------------------------------------------
# redact() itself
# --------------------------------------------------------------------------------------


def test_secrets_their_ends_and_masked_echoes_are_redacted() -> None:
    register_secret(OPENAI_KEY)
    for text in (
        f"Incorrect API key provided: {masked(OPENAI_KEY)}. You can find it",
        f"key ****{OPENAI_KEY[-4:]} is invalid", f"key …{OPENAI_KEY[-6:]}", f"key ...{OPENAI_KEY[-4:]}",
        f"{OPENAI_KEY[:10]}…{OPENAI_KEY[-4:]}", f"Bearer {OPENAI_KEY}", f"inner {OPENAI_KEY[9:20]} part",
        "-H 'Authorization: Be****42'",
    ):
        cleaned = redact(text)
        assert_no_secret(cleaned, text, [OPENAI_KEY])
        assert "**" not in cleaned.replace("***", ""), cleaned
    # Plain words stay: a key's format prefix and unrelated words are not secrets.
    assert redact("model gpt-4o via sk-proj keys, clasp check, port 4000") == (
        "model gpt-4o via sk-proj keys, clasp check, port 4000")


def test_a_key_is_named_by_a_short_non_reversible_id() -> None:
    ident = key_id(OPENAI_KEY)
    assert len(ident) == 8 and ident not in OPENAI_KEY and key_id(OPENAI_KEY) == ident
    assert key_id(LITELLM_KEY) != ident


# --------------------------------------------------------------------------------------
# Logs: every handler, tracebacks included
# --------------------------------------------------------------------------------------


def test_every_handler_gets_a_redacted_record_and_traceback() -> None:
    register_secret(OPENAI_KEY)
    install_redaction()
    out = io.StringIO()
    library = logging.getLogger("some.library.with.its.own.handler")
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    library.addHandler(handler)  # what LiteLLM does at import: not the gateway's handler
    library.propagate = False
    try:
        library.warning("calling with key %s", OPENAI_KEY)
        library.warning("refused: %s", masked(OPENAI_KEY))
        try:
            raise RuntimeError(f"upstream said: Incorrect API key provided: {OPENAI_KEY}")
        except RuntimeError:
            library.exception("call failed")
        library.warning("stack", stack_info=True, extra={"k": OPENAI_KEY})
    finally:
        library.removeHandler(handler)
    text = out.getvalue()
    assert "Traceback (most recent call last)" in text and "RuntimeError: upstream said" in text
    assert_no_secret(text, "a library's own handler", [OPENAI_KEY])


def test_litellm_logs_through_the_gateway_and_redacted(caplog: pytest.LogCaptureFixture,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    register_secret(LITELLM_KEY)
    LiteLLMAdapter().ensure_loaded()
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
        logger = logging.getLogger(name)
        assert logger.handlers == [] and logger.propagate, name
    caplog.set_level(logging.DEBUG)
    logging.getLogger("LiteLLM").warning("POST Request Sent from LiteLLM: -H 'Authorization: Bearer %s'", LITELLM_KEY)
    logging.getLogger("LiteLLM").debug("masked: %s", masked(LITELLM_KEY))
    captured = capfd.readouterr()
    assert "POST Request Sent" in caplog.text
    assert_no_secret(caplog.text + captured.out + captured.err, "LiteLLM's logger", [LITELLM_KEY])


def test_setup_logging_redacts_every_logger_and_traceback(tmp_path: Any) -> None:
    """``clasp serve``'s logging, in a fresh process: its handler, LiteLLM's (imported
    before and after set-up), tracebacks and the uvicorn loggers."""
    script = f"""
import logging, os
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
from clasp_gateway.redact import register_secret
register_secret({OPENAI_KEY!r})
from clasp_gateway.cli import setup_logging
setup_logging("debug")
from clasp_gateway.wire.litellm_adapter import LiteLLMAdapter
LiteLLMAdapter().ensure_loaded()
logging.getLogger("LiteLLM").debug("-H 'Authorization: Bearer {OPENAI_KEY}' and {masked(OPENAI_KEY)}")
logging.getLogger("LiteLLM Router").error("router: %s", {OPENAI_KEY!r})
logging.getLogger("uvicorn.error").error("uvicorn: %s", {OPENAI_KEY!r})
try:
    raise ValueError("Incorrect API key provided: {OPENAI_KEY}")
except ValueError:
    logging.getLogger("clasp.test").exception("failed")
setup_logging("info")  # again, with LiteLLM already imported
logging.getLogger("LiteLLM").warning("again %s", {OPENAI_KEY!r})
print("done")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    text = done.stdout + done.stderr
    assert done.returncode == 0 and "done" in done.stdout, text
    assert "Traceback (most recent call last)" in text and "ValueError: Incorrect API key provided: ***" in text
    assert "router: ***" in text and "uvicorn: ***" in text and "again ***" in text
    assert text.count("again") == 1, text  # LiteLLM's records come out once, through the gateway's handler
    assert_no_secret(text, "clasp serve's logs", [OPENAI_KEY])


# --------------------------------------------------------------------------------------
# Through the gateway: upstreams that echo the key, on every path
# --------------------------------------------------------------------------------------


def echoing_openai(key: str) -> Any:
    """An OpenAI-compatible upstream that quotes the key it was sent (masked, then in full)."""

    def script(body: dict[str, Any], rec: Recorded) -> Any:
        user = json.dumps(body.get("messages"))
        if "masked" in user:
            return Error(401, body={"error": {"message": f"Incorrect API key provided: {masked(rec.bearer or '')}.",
                                              "type": "invalid_request_error", "param": None,
                                              "code": "invalid_api_key"}})
        if "html" in user:
            return Raw(body=f"<html><body>Bad gateway for key {rec.bearer}</body></html>".encode(), status=502,
                       content_type="text/html")
        if "midstream" in user:
            event = {"error": {"message": f"overloaded; your key {rec.bearer}", "type": "server_error"}}
            first = {"id": "c", "object": "chat.completion.chunk", "model": "m",
                     "choices": [{"index": 0, "delta": {"content": "partial "}, "finish_reason": None}]}
            return Raw(events=[f"data: {json.dumps(first)}\n\n".encode(), f"data: {json.dumps(event)}\n\n".encode()],
                       chunk_delay=0.01)
        return Error(500, body={"error": {"message": f"internal error for key {rec.bearer}", "type": "server_error"}})

    return script


def echoing_gemini(body: dict[str, Any], rec: Recorded) -> Any:
    key = rec.headers.get("x-goog-api-key") or ""
    return Error(400, body={"error": {"code": 400, "message": f"API key not valid: {key} ({masked(key)})",
                                      "status": "INVALID_ARGUMENT"}})


def echoing_anthropic(body: dict[str, Any], rec: Recorded) -> Any:
    key = rec.headers.get("x-api-key") or ""
    user = json.dumps(body.get("messages"))
    if "midstream" in user:
        start = {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}}
        error = anthropic_error(529, f"Overloaded (key {key}, {masked(key)})")
        return Raw(events=[f"event: message_start\ndata: {json.dumps(start)}\n\n".encode(),
                           f"event: error\ndata: {json.dumps(error)}\n\n".encode()], chunk_delay=0.01)
    if "early" in user:
        error = anthropic_error(529, f"Overloaded (key {key})")
        return Raw(events=[f"event: error\ndata: {json.dumps(error)}\n\n".encode()])
    if "html" in user:
        return Raw(body=f"<html><body>500 for {key}</body></html>".encode(), status=500, content_type="text/html")
    if "typed" in user:
        return Raw(body=json.dumps(anthropic_error(500, f"bad key {key}")).encode(), content_type="application/json")
    return Error(401, body=anthropic_error(401, f"invalid x-api-key {key} ({masked(key)})"))


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[GatewayServer, dict[str, FakeUpstream]]]:
    for secret in SECRETS:
        register_secret(secret)
    closed = f"http://127.0.0.1:{free_port()}/v1"
    with FakeUpstream("openai", require_key=False) as openai_up, FakeUpstream("openai", require_key=False) as lite, \
            FakeUpstream("gemini", require_key=False) as gemini, \
            FakeUpstream("anthropic", require_key=False) as anthropic:
        openai_up.script = echoing_openai(OPENAI_KEY)
        lite.script = echoing_openai(LITELLM_KEY)
        gemini.script = echoing_gemini
        anthropic.script = echoing_anthropic
        config = config_from({"server": {"log_level": "debug"}, "models": {
            "direct": [{"model": "openai/gpt-4o", "api_base": openai_up.base_url, "api_key": OPENAI_KEY}],
            "litellm": [{"model": "openai/gpt-4o", "api_base": lite.base_url, "api_key": LITELLM_KEY,
                         "mode": "litellm"}],
            "litellm-down": [{"model": "openai/gpt-4o-mini", "api_base": closed, "api_key": LITELLM_KEY,
                              "mode": "litellm"}],
            "transform": [{"model": "gemini/gemini-2.5-flash", "api_base": gemini.base_url, "api_key": GEMINI_KEY}],
            "anthropic": [{"model": "anthropic/claude-sonnet-4-5-20250929", "api_base": anthropic.base_url,
                           "api_key": ANTHROPIC_KEY}],
        }})
        pm = PluginManager()
        pm.load(entry_points=False)
        pm.register(clasp_claude, name="claude")
        with GatewayServer(config, create_app(config, pm)) as gateway:
            yield gateway, {"openai": openai_up, "litellm": lite, "gemini": gemini, "anthropic": anthropic}


def ask(gateway: GatewayServer, api: str, model: str, prompt: str, stream: bool) -> httpx.Response:
    body = {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": prompt}], "stream": stream}
    if api == "anthropic":
        return httpx.post(gateway.base_url + "/v1/messages", json=body, timeout=60,
                          headers={"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"})
    return httpx.post(gateway.base_url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"authorization": f"Bearer {GATEWAY_KEY}"})


CASES = [
    (model, prompt)
    for model, prompts in {
        "direct": ["masked", "html", "midstream", "plain"],
        "litellm": ["masked", "html", "midstream", "plain"],
        "litellm-down": ["plain"],
        "transform": ["plain"],
        "anthropic": ["midstream", "early", "html", "typed", "plain"],
    }.items()
    for prompt in prompts
]


@pytest.mark.parametrize(("model", "prompt"), CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_echoed_keys_never_reach_the_client_or_the_logs(
    stack: tuple[GatewayServer, dict[str, FakeUpstream]], model: str, prompt: str,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    gateway, _ = stack
    caplog.set_level(logging.DEBUG)
    answers = []
    for api in ("anthropic", "openai"):
        for stream in (False, True):
            response = ask(gateway, api, model, prompt, stream)
            where = f"{model}/{prompt} via {api} (stream={stream})"
            answers.append((where, response))
            assert_no_secret(response.text, f"the answer to {where}")
            assert "Traceback" not in response.text and "litellm." not in response.text, response.text
            assert "Exception" not in response.text and "Error:" not in response.text, response.text
            if response.status_code == 200:
                assert prompt == "midstream" and stream, f"{where}: {response.text[:300]}"
                assert ("event: error" if api == "anthropic" else '"error"') in response.text
            else:
                assert 400 <= response.status_code < 600
                error = response.json()["error"]
                assert error["message"] and error["type"]
    captured = capfd.readouterr()
    assert_no_secret(caplog.text + captured.out + captured.err, f"the logs of {model}/{prompt}")
    # The provider's status and message survive, cleaned.
    if model in ("direct", "litellm") and prompt == "masked":
        for where, response in answers:
            assert "Incorrect API key provided: ***" in response.text, where
    if model == "anthropic" and prompt == "midstream":
        streamed = [r for w, r in answers if "stream=True" in w and "via anthropic" in w][0]
        error_line = [line for line in streamed.text.splitlines() if line.startswith("data:") and "error" in line][-1]
        assert json.loads(error_line[5:])["error"]["type"] == "overloaded_error", error_line


def test_litellm_answers_still_work(stack: tuple[GatewayServer, dict[str, FakeUpstream]]) -> None:
    gateway, fakes = stack
    fakes["litellm"].queue(Text("fine"), Text("fine"))
    for api in ("anthropic", "openai"):
        response = ask(gateway, api, "litellm", "hello", False)
        assert response.status_code == 200 and "fine" in response.text, response.text

"""Prompts and answers never reach the gateway's log, at any level, unless a team or
key opts in (clasp_gateway/content_log.py): a real ``clasp serve`` at DEBUG, its whole
output searched for each request's unique markers."""

from __future__ import annotations

import uuid

import httpx

from clasp_gateway.content_log import RequestContent
from clasp_gateway.testing import UPSTREAM_KEY, Error, FakeUpstream, GatewayProcesses, Text, openai_models

OPS_KEY = "clasp-ops-key-0123456789"
LOGGED_KEY = "clasp-logged-key-0123456789"


def test_markers_stay_out_of_a_debug_log_unless_opted_in(fake_upstream: FakeUpstream) -> None:
    config = {
        "server": {"log_level": "debug"},
        "keys": [{"key": OPS_KEY, "name": "ops", "team": "platform"},
                 {"key": LOGGED_KEY, "name": "research", "team": "research"}],
        "models": openai_models(fake_upstream.base_url),
        "logging": {"teams": {"research": True}},
    }
    hidden = [f"PROMPT-{uuid.uuid4().hex}" for _ in range(3)]
    answer_marker = f"ANSWER-{uuid.uuid4().hex}"
    shown, shown_answer = f"SHOWN-{uuid.uuid4().hex}", f"SHOWN-ANSWER-{uuid.uuid4().hex}"
    secret_in_prompt = "sk-proj-" + "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0Pp9Oo8Nn7"
    with GatewayProcesses(config, env={"CLASP_LOAD_PLUGINS": "", "CLASP_PERMISSION_PROBES": "off",
                                       "LITELLM_LOG": "DEBUG"}) as gateways:
        gateway = gateways[0]
        url = gateway.base_url + "/v1/chat/completions"
        ops = {"authorization": f"Bearer {OPS_KEY}"}
        fake_upstream.queue(Text(f"here you go: {answer_marker}"))
        ok = httpx.post(url, headers=ops, json={"model": "gpt-4o", "messages": [
            {"role": "system", "content": f"system {hidden[0]}"}, {"role": "user", "content": hidden[1]}]})
        assert ok.status_code == 200 and answer_marker in ok.text
        # An upstream error that quotes the prompt, and a long prompt quoted in part.
        long_prompt = "please review this file: " + "x = compute(y)  # " * 40 + hidden[2] + " end of file" * 10
        fake_upstream.queue(Error(400, {"error": {"message": f"invalid content near '{long_prompt[300:]}'",
                                                  "type": "invalid_request_error"}}))
        refused = httpx.post(url, headers=ops, json={"model": "gpt-4o", "messages": [
            {"role": "user", "content": long_prompt}]})
        assert refused.status_code == 400
        fake_upstream.queue(Text(shown_answer))
        logged = httpx.post(url, headers={"authorization": f"Bearer {LOGGED_KEY}"}, json={
            "model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": f"{shown} {secret_in_prompt}"}]})
        assert logged.status_code == 200
        gateway.stop()
        text = gateway.log_text()
    assert "attempt 1 on openai/gpt-4o failed" in text  # the failure is logged, its quote is not
    for marker in (*hidden, answer_marker):
        assert marker not in text
    content = [line for line in text.splitlines() if "clasp.content" in line]
    assert len(content) == 1 and shown in content[0] and shown_answer in content[0]
    assert secret_in_prompt not in text and UPSTREAM_KEY not in text


def test_scrub_replaces_any_quoted_piece() -> None:
    prompt = "".join(f"line {i}: the quick brown fox jumps over {i * 7919}\n" for i in range(50))
    content = RequestContent([prompt, "short secret plan"], opted_in=False)
    quoted = "upstream said: bad input at '" + prompt[1234:1300] + "' (400)"
    cleaned = content.scrub(quoted)
    assert prompt[1234:1300] not in cleaned and "[content]" in cleaned
    assert cleaned.startswith("upstream said: bad input")  # (up to a window around a piece goes with it)
    assert content.scrub("the short secret plan leaked") == "the [content] leaked"
    assert content.scrub("nothing of the request here") == "nothing of the request here"

"""``server.log_format: json``: every line a real ``clasp serve`` writes is one JSON
object with a time, level, logger, message and request id; access lines carry their
fields; errors and uvicorn's own lines too; secrets redacted."""

from __future__ import annotations

import json
import sys

import httpx

from clasp_gateway.testing import GATEWAY_KEY, UPSTREAM_KEY, FakeUpstream, GatewayProcesses, openai_models


def test_every_line_of_a_real_run_is_one_json_object(fake_upstream: FakeUpstream) -> None:
    config = {
        "server": {"log_format": "json", "log_level": "debug"},
        "keys": [{"key": GATEWAY_KEY, "name": "tests", "team": "qa"}],
        "models": openai_models(fake_upstream.base_url),
    }
    with GatewayProcesses(config, env={"CLASP_LOAD_PLUGINS": "", "CLASP_PERMISSION_PROBES": "off"}) as gateways:
        gateway = gateways[0]
        headers = {"x-api-key": GATEWAY_KEY}
        ok = httpx.post(gateway.base_url + "/v1/chat/completions", headers=headers,
                        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        refused = httpx.post(gateway.base_url + "/v1/chat/completions", headers={"x-api-key": "wrong-key-123456"},
                             json={"model": "gpt-4o", "messages": []})
        invalid = httpx.post(gateway.base_url + "/v1/chat/completions", headers=headers, content=b"{not json")
        assert (ok.status_code, refused.status_code, invalid.status_code) == (200, 401, 400)
        gateway.stop()
        text = gateway.log_text()
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) >= 5
    records = []
    for line in lines:
        record = json.loads(line)  # every line, uvicorn's included
        assert isinstance(record, dict)
        assert {"time", "level", "logger", "message", "request_id"} <= set(record)
        assert record["time"].endswith("Z") and "T" in record["time"]
        records.append(record)
    loggers = {r["logger"] for r in records}
    assert "uvicorn.error" in loggers and "clasp.access" in loggers
    access = [r for r in records if r["logger"] == "clasp.access"]
    by_id = {r["request_id"]: r for r in access}
    assert by_id[ok.headers["request-id"]]["status"] == 200
    assert by_id[ok.headers["request-id"]]["key"] == "tests" and by_id[ok.headers["request-id"]]["team"] == "qa"
    assert by_id[ok.headers["request-id"]]["deployment"] == "openai/gpt-4o"
    assert by_id[refused.headers["request-id"]]["status"] == 401
    assert by_id[invalid.headers["request-id"]]["status"] == 400
    for r in access:
        assert {"method", "path", "api", "model", "attempts", "input_tokens", "output_tokens", "cost_usd", "ms"} <= set(r)
    # Lines written while a request was served name it, whichever logger wrote them.
    during = [r for r in records if r["request_id"] == refused.headers["request-id"] and r["logger"] != "clasp.access"]
    assert all(r["request_id"] for r in during)
    assert GATEWAY_KEY not in text and UPSTREAM_KEY not in text and "wrong-key-123456" not in text
    assert any(r["logger"] == "uvicorn.error" and "Application startup complete" in r["message"] for r in records)


def test_an_unexpected_error_is_one_json_line_with_its_traceback() -> None:
    import logging

    from clasp_gateway.logs import JsonFormatter, request_id_var

    formatter = JsonFormatter()
    token = request_id_var.set("req_test")
    try:
        try:
            raise RuntimeError("bad thing\nwith a second line")
        except RuntimeError:
            record = logging.getLogger("clasp.app").makeRecord(
                "clasp.app", logging.ERROR, __file__, 1, "failed %s", ("here",), exc_info=sys.exc_info())
        line = formatter.format(record)
    finally:
        request_id_var.reset(token)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["request_id"] == "req_test" and parsed["level"] == "ERROR"
    assert parsed["message"] == "failed here" and "RuntimeError: bad thing" in parsed["exc"]

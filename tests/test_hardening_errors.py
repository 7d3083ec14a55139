"""Issue 7, defects 6 and 10: every unexpected error is a shaped 500 carrying the
request id (the traceback only in the log), ``GET /-/plugins`` needs a key, and every
request, whatever its outcome, leaves exactly one access line."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from clasp_gateway import hookimpl
from clasp_gateway.testing import GATEWAY_KEY, Cut, Error, FakeUpstream, Text
from tests.hardening import APIS, Witness, call, chain, serving

SECRET_DETAIL = "db-password=hunter2"


async def _boom(request: Request) -> Response:
    raise RuntimeError(f"unexpected: {SECRET_DETAIL}")


class Explodes:
    """Routes that raise, and a routing hook that raises for one model name."""

    @hookimpl
    def register_routes(self, register: Callable[..., None]) -> None:
        register("/x-boom", _boom, methods=["GET"])
        register("/v1/embeddings", _boom, methods=["POST"])

    @hookimpl
    def resolve_route(self, ctx: Any, request: Any, candidates: list[Any]) -> Any:
        if ctx.public_model == "explodes":
            raise ZeroDivisionError(SECRET_DETAIL)
        return None


class AsyncDefers:
    @hookimpl
    async def authenticate(self, api_key: str | None, headers: dict[str, str], config: Any) -> Any:
        return None


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as up:
        up.script = lambda body, rec: Text("fine", usage=(40, 10))
        yield up


def _assert_shaped_500(response: httpx.Response, shape: str) -> None:
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/json")
    request_id = response.headers["request-id"]
    body = response.json()
    assert SECRET_DETAIL not in response.text and "Traceback" not in response.text
    if shape == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "api_error"
        assert body["request_id"] == request_id
    else:
        assert body["error"]["type"] == "api_error" and body["error"]["code"] == "api_error"
    assert request_id in body["error"]["message"]


def test_an_unexpected_error_is_a_shaped_500_with_the_request_id(
    upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with serving({**chain(upstream.base_url), "explodes": chain(upstream.base_url)["chain"]}, Explodes()) as server:
        _assert_shaped_500(httpx.get(server.base_url + "/x-boom"), "anthropic")
        _assert_shaped_500(httpx.post(server.base_url + "/v1/embeddings", json={}), "openai")
        for api in APIS:
            for stream in (False, True):
                response = call(server, api, model="explodes", stream=stream)
                _assert_shaped_500(response, api)
                # The traceback is in the log, under the request id; logged once.
                logged = [r for r in caplog.records if r.exc_info and response.headers["request-id"] in r.getMessage()]
                assert len(logged) == 1 and SECRET_DETAIL in str(logged[0].exc_info[1])
        assert upstream.requests == []


def test_a_failing_asgi_wrapper_is_answered_too(upstream: FakeUpstream) -> None:
    class BrokenWrapper:
        @hookimpl
        def asgi_wrapper(self, config: Any) -> Any:
            def wrap(app: Any) -> Any:
                async def wrapped(scope: Any, receive: Any, send: Any) -> None:
                    if scope.get("path") == "/v1/chat/completions":
                        raise RuntimeError(SECRET_DETAIL)
                    await app(scope, receive, send)

                return wrapped

            return wrap

    with serving(chain(upstream.base_url), BrokenWrapper()) as server:
        _assert_shaped_500(call(server, "openai"), "openai")
        assert call(server, "anthropic").status_code == 200


def test_plugins_listing_needs_a_key() -> None:
    with serving({}, AsyncDefers()) as server:
        url = server.base_url + "/-/plugins"
        for headers in ({}, {"x-api-key": "wrong-key-0123456789"}):
            response = httpx.get(url, headers=headers)
            assert response.status_code == 401, response.text
            assert response.json()["error"]["type"] == "authentication_error"
        response = httpx.get(url, headers={"x-api-key": GATEWAY_KEY})
        assert response.status_code == 200 and "clasp_gateway.defaults" in {p["name"] for p in response.json()}


# --- defect 10: one access line for every outcome ------------------------------------------------


def _line(caplog: pytest.LogCaptureFixture, response: httpx.Response) -> str:
    from tests.hardening import access_lines

    lines = access_lines(caplog, response.headers["request-id"])
    assert len(lines) == 1, lines
    return lines[0]


def _fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


@pytest.mark.parametrize("api", APIS)
def test_every_outcome_leaves_exactly_one_access_line(api: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clasp.access")
    witness = Witness()
    prices = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.002}
    with FakeUpstream("openai") as primary, FakeUpstream("openai") as secondary:
        primary.script = lambda body, rec: Text("fine", usage=(40, 10))
        models = {"chain": [
            {"id": "primary", "model": "openai/gpt-4o-mini", "api_base": primary.base_url,
             "api_key": "sk-upstream-test-1234567890", **prices},
            {"id": "secondary", "model": "openai/gpt-4o-mini", "api_base": secondary.base_url,
             "api_key": "sk-upstream-test-1234567890", **prices},
        ]}
        with serving(models, witness) as server:
            # Success, JSON and stream: key name, team, deployment, tokens and cost.
            for stream in (False, True):
                response = call(server, api, stream=stream)
                assert response.status_code == 200
                line = _line(caplog, response)
                f = _fields(line)
                assert line.split()[1:4] == [api, "POST", "/v1/messages" if api == "anthropic" else "/v1/chat/completions"]
                assert (f["key"], f["team"], f["deployment"], f["status"]) == ("tests", "qa", "primary", "200")
                assert (f["in"], f["out"], f["cost"]) == ("40", "10", "0.060000")
                assert float(f["ms"]) >= 0 and not line.endswith(" cut")

            # A refused key: no key name (and never the key itself).
            response = call(server, api, key="wrong-key-0123456789")
            f = _fields(_line(caplog, response))
            assert (f["status"], f["key"], f["team"], f["deployment"]) == ("401", "-", "-", "-")

            # An invalid body: the caller is known.
            response = call(server, api, raw=b"{not json")
            f = _fields(_line(caplog, response))
            assert (f["status"], f["key"], f["team"]) == ("400", "tests", "qa")

            # An unknown model reached the pipeline: a line and a request event.
            response = call(server, api, model="no-such-model")
            f = _fields(_line(caplog, response))
            assert (f["status"], f["model"], f["key"]) == ("404", "no-such-model", "tests")
            assert witness.kind("request")[-1]["status"] == 404

            # Every deployment failed: the last one tried is named.
            primary.queue(Error(500))
            secondary.queue(Error(500))
            response = call(server, api)
            assert response.status_code == 500
            f = _fields(_line(caplog, response))
            assert (f["status"], f["deployment"], f["attempts"], f["cost"]) == ("500", "secondary", "2", "0.000000")
            event = witness.kind("request")[-1]
            assert event["status"] == 500 and [a["ok"] for a in event["attempts"]] == [False, False]

            # A stream cut after its first words: marked ``cut``, with the deployment.
            primary.queue(Cut(Text("the beginning of an answer that is cut"), after_chunks=4))
            response = call(server, api, stream=True)
            line = _line(caplog, response)
            f = _fields(line)
            assert line.endswith(" cut") and f["deployment"] == "primary" and f["status"] != "200"

            # Routes outside the APIs are logged too (404 for an unknown path).
            response = httpx.get(server.base_url + "/v1/nothing-here")
            assert _fields(_line(caplog, response))["status"] == "404"
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert GATEWAY_KEY not in text and "wrong-key-0123456789" not in text
    assert "sk-upstream-test-1234567890" not in text

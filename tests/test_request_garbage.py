"""A finished request leaves no reference cycle behind: its whole object graph (the
context, the parsed request, the answer's state) is freed by reference counting the
moment it ends, not by the cyclic collector later.

One cycle anywhere in that graph keeps all of it alive until a collection walks it.
Before these tests, the streamed response's disconnect watcher (two closures calling
each other) made one per streamed request, and every failed attempt another (its
error's traceback holds the frames it passed through, which hold the context, which
holds the attempt, which holds the error). In a `clasp serve` under the benchmark,
each young collection then freed ~5,000 objects and took ~5 ms: a pause in some
requests' latency, and ~0.1 ms of CPU per request on average
(`bench/README.md`)."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from clasp_gateway.testing import GATEWAY_KEY, Cut, Error, FakeUpstream, Hang, Text
from tests.hardening import APIS, answer_text, call, chain, ended_cleanly, serving


def _ours(thing: Any) -> bool:
    """Whether ``thing`` is the gateway's or a bundled plugin's (an instance of one of
    their classes, or one of their functions)."""
    module = getattr(thing, "__module__", None) if callable(thing) and not isinstance(thing, type) else None
    module = module or type(thing).__module__
    return isinstance(module, str) and module.startswith("clasp")


@contextmanager
def cyclic_garbage() -> Iterator[list[Any]]:
    """The gateway's own objects among what the cyclic collector finds from now until
    the block ends (kept instead of freed, then let go); the collector as it was
    afterwards. Enter it once the server is up: start-up makes garbage of its own.

    Everything that exists when the block starts is frozen (``gc.freeze``) until it ends:
    the collection at the end walks only what the block made (garbage among older
    objects, start-up's, is not the block's), not the whole test process's heap twice
    (with LiteLLM imported, most of a second per test)."""
    gc.freeze()
    found: list[Any] = []
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        time.sleep(0.3)  # the server ends a request (its record hooks) just after the last byte
        gc.collect()
        found.extend(o for o in gc.garbage if _ours(o))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.unfreeze()


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("api", APIS)
def test_a_request_is_freed_as_soon_as_it_ends(api: str, stream: bool) -> None:
    with FakeUpstream("openai") as up:
        up.script = lambda body, rec: Text("an answer in a few chunks", chunk_size=3)
        with serving(chain(up.base_url)) as server:
            assert call(server, api, stream=stream).status_code == 200  # warm: lazy set-up is not a request's
            with cyclic_garbage() as found:
                for _ in range(4):
                    response = call(server, api, stream=stream)
                    assert response.status_code == 200
                    assert ended_cleanly(api, response) if stream else "an answer" in response.text
    assert found == []


@pytest.mark.parametrize("api", APIS)
def test_a_request_whose_client_left_mid_stream_is_freed_too(api: str) -> None:
    with FakeUpstream("openai") as up:
        up.script = lambda body, rec: (Hang(30.0, reply=Text("never finished", chunk_size=2), after_chunks=2)
                                       if body.get("stream") else Text("warm"))
        with serving(chain(up.base_url)) as server:
            path = "/v1/messages" if api == "anthropic" else "/v1/chat/completions"
            auth = {"x-api-key": GATEWAY_KEY} if api == "anthropic" else {"authorization": f"Bearer {GATEWAY_KEY}"}
            body = {"model": "chain", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 64}
            assert call(server, api).status_code == 200  # warm (not streamed: answered at once)
            with cyclic_garbage() as found:
                for _ in range(3):
                    with httpx.Client(base_url=server.base_url, timeout=10) as client, \
                            client.stream("POST", path, json=body, headers=auth) as response:
                        assert response.status_code == 200
                        next(response.iter_raw())  # the answer started; then the client leaves
    assert found == []


@pytest.mark.parametrize("fault", ["error", "cut"])
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("api", APIS)
def test_a_request_that_failed_over_is_freed_too(api: str, stream: bool, fault: str) -> None:
    with FakeUpstream("openai") as bad, FakeUpstream("openai") as good:
        bad.script = lambda body, rec: Error(500) if fault == "error" else Cut(Text("never sent"), after_chunks=0)
        good.script = lambda body, rec: Text("from the second deployment")
        with serving(chain(bad.base_url, good.base_url)) as server:
            assert call(server, api, stream=stream).status_code == 200  # warm
            with cyclic_garbage() as found:
                for _ in range(3):
                    response = call(server, api, stream=stream)
                    assert response.status_code == 200
                    assert answer_text(api, stream, response) == "from the second deployment"
    assert found == []


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("api", APIS)
def test_a_request_that_failed_on_every_deployment_is_freed_too(api: str, stream: bool) -> None:
    with FakeUpstream("openai") as first, FakeUpstream("openai") as second:
        first.script = lambda body, rec: Error(500)
        second.script = lambda body, rec: Error(503)
        with serving(chain(first.base_url, second.base_url)) as server:
            assert call(server, api, stream=stream).status_code >= 500  # warm
            with cyclic_garbage() as found:
                for _ in range(3):
                    assert call(server, api, stream=stream).status_code >= 500
    assert found == []

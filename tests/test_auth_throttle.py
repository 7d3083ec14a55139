"""Failed key attempts are slowed down per client address (issue 7, defect 16).

Unit tests pin how the client address is found (peer, or X-Forwarded-For read from the
right only through trusted proxies) and the throttle's arithmetic and memory bound;
the gateway tests guess keys against a real server started with the options
``clasp serve`` uses (uvicorn must not rewrite the client address from the header).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from clasp_gateway.config import ConfigError, ServerConfig
from clasp_gateway.errors import RateLimitError
from clasp_gateway.shell.app import create_app
from clasp_gateway.shell.guard import AuthThrottle, client_address, parse_trusted_proxies
from clasp_gateway.shell.server import uvicorn_options
from clasp_gateway.testing import GATEWAY_KEY, config_from, free_port

PROXIES = parse_trusted_proxies(["10.0.0.0/8", "192.168.1.1", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        # Not a trusted proxy: its X-Forwarded-For is the client's own claim, ignored.
        ("203.0.113.9", "1.1.1.1", "203.0.113.9"),
        # A trusted proxy: the hop it appended names the client; hops left of it are
        # the client's own (spoofed) claims.
        ("10.0.0.5", "1.1.1.1, 198.51.100.7", "198.51.100.7"),
        ("10.0.0.5", "198.51.100.7", "198.51.100.7"),
        # Several trusted proxies in a row are skipped from the right.
        ("10.0.0.5", "1.1.1.1, 198.51.100.7, 192.168.1.1, 10.9.9.9", "198.51.100.7"),
        ("10.0.0.5", "198.51.100.7:51234", "198.51.100.7"),
        ("10.0.0.5", None, "10.0.0.5"),
        ("10.0.0.5", "10.1.1.1, 10.2.2.2", "10.1.1.1"),  # all trusted: the left-most
        # IPv6 clients are one per /64; an IPv4-mapped peer is its IPv4 address.
        ("2001:db8:1:2:aaaa::1", None, "2001:db8:1:2::/64"),
        ("10.0.0.5", "[2001:db8:1:2::9]:443", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.9", "1.1.1.1", "203.0.113.9"),
        (None, "1.1.1.1", None),
    ],
)
def test_client_address(peer: str | None, forwarded: str | None, expected: str | None) -> None:
    assert client_address(peer, forwarded, PROXIES) == expected


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_trusted_proxies(["10.0.0.0/8", "the load balancer"], "clasp.yaml")
    assert caught.value.problems == [
        "server.trusted_proxies.1: expected an IP address or CIDR (e.g. 10.0.0.0/8), got 'the load balancer'"
    ]


def _throttle(limit: int, now: list[float], **kw: Any) -> AuthThrottle:
    return AuthThrottle(ServerConfig(auth_failures_per_minute=limit), clock=lambda: now[0], **kw)


def test_the_limit_th_failure_within_a_minute_slows_the_address_down() -> None:
    now = [1000.0]
    throttle = _throttle(3, now)
    for _ in range(3):
        throttle.admit("1.2.3.4")
        throttle.failed("1.2.3.4")
    with pytest.raises(RateLimitError) as caught:
        throttle.admit("1.2.3.4")
    assert caught.value.status == 429 and caught.value.headers["retry-after"] == "20"
    throttle.admit("5.6.7.8")  # other addresses are not concerned
    # It may try again at the allowed rate: one attempt per 60/3 s.
    now[0] += 20
    throttle.admit("1.2.3.4")
    throttle.failed("1.2.3.4")
    with pytest.raises(RateLimitError):
        throttle.admit("1.2.3.4")
    # Failures age out.
    now[0] += 60
    throttle.admit("1.2.3.4")


def test_the_table_of_addresses_is_bounded() -> None:
    now = [0.0]
    throttle = _throttle(3, now, max_addresses=100)
    for i in range(10_000):
        throttle.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(throttle) == 100
    # The most recent failures are the ones kept.
    for _ in range(2):
        throttle.failed("10.0.39.15")
    with pytest.raises(RateLimitError):
        throttle.admit("10.0.39.15")


# --- through a real server ---------------------------------------------------------------------------


class Served:
    """The gateway app on uvicorn with ``clasp serve``'s options, in a thread."""

    def __init__(self, server: dict[str, Any]) -> None:
        self.config = config_from({"server": server, "models": {}})
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        options = uvicorn_options(self.config.server)
        self._server = uvicorn.Server(uvicorn.Config(
            create_app(self.config), host="127.0.0.1", port=self.port, log_config=None, lifespan="on",
            loop="asyncio", timeout_graceful_shutdown=2, **options,
        ))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> Served:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def models(self, key: str, forwarded_for: str | None = None) -> httpx.Response:
        headers = {"x-api-key": key}
        if forwarded_for:
            headers["x-forwarded-for"] = forwarded_for
        return httpx.get(self.base_url + "/v1/models", headers=headers, timeout=30)

    def messages(self, key: str, forwarded_for: str) -> httpx.Response:
        return httpx.post(self.base_url + "/v1/messages", timeout=30,
                          headers={"x-api-key": key, "x-forwarded-for": forwarded_for},
                          json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture
def direct() -> Iterator[Served]:
    with Served({"auth_failures_per_minute": 3}) as served:
        yield served


def test_guessing_keys_is_slowed_down_and_spoofing_the_address_does_not_help(
    direct: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="clasp.guard")
    assert [direct.models(f"guess-{i}", f"198.51.100.{i}").status_code for i in range(3)] == [401] * 3
    # A fourth guess, from a "new" address it claims: still the same peer, 429.
    refused = direct.messages("guess-4", "198.51.100.99")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"
    # The key is not even looked at: a valid one from that address waits too.
    assert direct.models(GATEWAY_KEY).status_code == 429
    openai = httpx.post(direct.base_url + "/v1/chat/completions", headers={"authorization": "Bearer nope"},
                        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert openai.status_code == 429 and openai.json()["error"]["type"] == "rate_limit_error"
    assert any("failed authentication" in r.getMessage() for r in caplog.records)


def test_successful_requests_are_never_throttled(direct: Served) -> None:
    assert {direct.models(GATEWAY_KEY).status_code for _ in range(20)} == {200}


def test_behind_a_trusted_proxy_each_client_is_counted_apart() -> None:
    with Served({"auth_failures_per_minute": 3, "trusted_proxies": ["127.0.0.1"]}) as proxied:
        for _ in range(3):
            assert proxied.models("guess", "198.51.100.1").status_code == 401
        assert proxied.models("guess", "198.51.100.1").status_code == 429
        assert proxied.models(GATEWAY_KEY, "198.51.100.1").status_code == 429
        # Another client behind the same proxy is not concerned.
        assert proxied.models("guess", "198.51.100.2").status_code == 401
        assert proxied.models(GATEWAY_KEY, "198.51.100.2").status_code == 200
        # A client that prepends the throttled address to its own is still itself.
        assert proxied.models(GATEWAY_KEY, "198.51.100.1, 198.51.100.3").status_code == 200
        # Two X-Forwarded-For lines are one list: the proxy's hop (last) counts.
        response = httpx.get(proxied.base_url + "/v1/models", timeout=30, headers=[
            ("x-api-key", GATEWAY_KEY), ("x-forwarded-for", "198.51.100.3"), ("x-forwarded-for", "198.51.100.1"),
        ])
        assert response.status_code == 429

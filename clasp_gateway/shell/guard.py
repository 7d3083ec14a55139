"""Slowing down repeated failed key attempts from one client address.

Without it a client could try about 400 keys a second. :class:`AuthThrottle` counts
failed authentications per client address: after ``server.auth_failures_per_minute``
failures within a minute, that address gets a ``429`` with ``retry-after`` and its key
is not even looked at (looking would tell the guesser when it found one); it may try
again at that rate (one attempt every 60/N seconds) until its failures age out.
A valid key does not reset the count (a client holding one key could otherwise keep
guessing others), and an address that never fails is never slowed down.

The client address is the connection's peer, unless the peer is one of
``server.trusted_proxies`` (a load balancer, an ingress): then ``X-Forwarded-For``
is read from the right, skipping trusted proxies, and the first address that is not
one is the client. Addresses further left were written by the client itself and are
ignored, so spoofing the header gains nothing, and a proxy in front does not make
every client one address. IPv6 clients are counted per /64 (one host's usual share).

Memory is bounded: at most :data:`MAX_ADDRESSES` addresses are tracked (least
recently failed dropped first), each a float.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from ..config import ConfigError, ServerConfig
from ..errors import RateLimitError
from .limits import LimitLog

__all__ = ["MAX_ADDRESSES", "AuthThrottle", "client_address", "parse_trusted_proxies"]

log = logging.getLogger("clasp.guard")

MAX_ADDRESSES = 65_536
"""Addresses tracked at most (~100 bytes each)."""

WINDOW = 60.0

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted_proxies(values: Sequence[str], source: str = "clasp.yaml") -> list[_Network]:
    """``server.trusted_proxies`` as networks (an address is a /32 or /128);
    :class:`ConfigError` names any entry that is neither."""
    networks: list[_Network] = []
    problems: list[str] = []
    for i, value in enumerate(values):
        try:
            networks.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            problems.append(f"server.trusted_proxies.{i}: expected an IP address or CIDR (e.g. 10.0.0.0/8), got {value!r}")
    if problems:
        raise ConfigError(source, problems)
    return networks


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address from a peer or an X-Forwarded-For hop (``1.2.3.4``, ``1.2.3.4:5678``,
    ``[::1]:5678``, ``::1``), or None."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, proxies: Sequence[_Network]) -> bool:
    return address is not None and any(address in network for network in proxies)


def client_address(peer: str | None, forwarded_for: str | None, proxies: Sequence[_Network]) -> str | None:
    """The client's address, as the module docstring explains; None without a peer."""
    if peer is None:
        return None
    if ":" not in peer and (not forwarded_for or not proxies):
        return peer  # the common case (an IPv4 peer, nothing to read through): no parsing
    address = _ip(peer)
    if not forwarded_for or not _trusted(address, proxies):
        return _key(address, peer)
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        hop_address = _ip(hop)
        if not _trusted(hop_address, proxies):
            # Written by the trusted proxy to its right: what that proxy saw.
            return _key(hop_address, hop)
    return _key(_ip(hops[0]), hops[0]) if hops else _key(address, peer)


def _key(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, text: str) -> str:
    if address is None:
        return text[:64]  # unparsable, but written by a trusted proxy
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class AuthThrottle:
    """Failed-key attempts per client address (GCRA: one float per address).

    Each address has a "theoretical arrival time": every failure pushes it
    ``60 / limit`` seconds further; the address is slowed down while it lies more
    than ``60 - 60 / limit`` seconds ahead, that is after ``limit`` failures in a
    minute, and ``retry-after`` is the time until it no longer does.
    """

    __slots__ = ("limit", "proxies", "max_addresses", "_interval", "_table", "_clock", "_log")

    def __init__(
        self,
        server: ServerConfig,
        *,
        source: str = "clasp.yaml",
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = server.auth_failures_per_minute
        self.proxies = parse_trusted_proxies(server.trusted_proxies, source)
        self.max_addresses = max_addresses
        self._interval = WINDOW / self.limit
        self._table: OrderedDict[str, float] = OrderedDict()
        self._clock = clock
        self._log = LimitLog(log)

    def __len__(self) -> int:
        return len(self._table)

    def trusts(self, peer: str | None) -> bool:
        """Whether ``peer`` is one of ``server.trusted_proxies`` (its forwarded headers count)."""
        return peer is not None and _trusted(_ip(peer), self.proxies)

    def address(self, peer: str | None, headers: dict[str, str]) -> str | None:
        """The client address of a request (see :func:`client_address`)."""
        return client_address(peer, headers.get("x-forwarded-for"), self.proxies)

    def admit(self, address: str | None) -> None:
        """Raise a 429 :class:`RateLimitError` if ``address`` is being slowed down."""
        if address is None:
            return
        tat = self._table.get(address)
        if tat is None:
            return
        ahead = tat - self._clock()
        wait = ahead - (WINDOW - self._interval)
        if wait <= 0:
            return
        seconds = max(1, math.ceil(wait))
        self._log.hit("failed authentication",
                      f"{address} made {self.limit} failed key attempts within a minute; answered 429")
        raise RateLimitError(
            f"too many failed authentication attempts from your address; retry in {seconds}s",
            headers={"retry-after": str(seconds)},
        )

    def failed(self, address: str | None) -> None:
        """Count one failed authentication from ``address``."""
        if address is None:
            return
        now = self._clock()
        table = self._table
        tat = table.pop(address, None)
        table[address] = max(tat if tat is not None else now, now) + self._interval
        while len(table) > self.max_addresses:
            table.popitem(last=False)  # the least recently failed

"""Flavors defined outside :mod:`clasp_gateway.testing.fakes.server`: one module per provider.

A provider module (``gemini.py``, ``cohere.py``, ``anthropic.py``,
``openai_compat.py``) describes its API with a :class:`FlavorSpec` and calls
:func:`register_flavor`; :class:`~clasp_gateway.testing.fakes.server.FakeUpstream` then serves it
like a built-in flavor: same replies, faults, recording and delivery, with the
provider's own paths, credentials, request checks, wire format and error bodies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .record import Recorded
    from .replies import Reply
    from .wire import Ctx, Wire

__all__ = ["EXTRA_FLAVORS", "FlavorSpec", "register_flavor"]


@dataclass(frozen=True)
class FlavorSpec:
    """How a fake provider behaves at the HTTP level.

    ``route(method, path)`` names the endpoint (``"chat"`` for the chat endpoint,
    another name for an endpoint :attr:`info` answers, ``None`` for a 404).
    ``credential(recorded)`` is the key the request carries (``None``: none).
    ``unauthorized(recorded, given)`` is ``(status, body)`` for a missing or wrong
    key. ``adjust(recorded, ctx)`` fixes the request context where the body does not
    tell (Gemini names the model and streaming in the path). ``check(recorded,
    ctx)`` refuses a request the real API refuses (an :class:`Error` reply), or
    returns ``None``.
    """

    name: str
    wire: Callable[[str | None], Wire]
    route: Callable[[str, str], str | None]
    credential: Callable[[Recorded], str | None]
    unauthorized: Callable[[Recorded, str | None], tuple[int, Any]]
    base_path: str = ""
    """Appended to the origin to make ``FakeUpstream.base_url``."""
    requires_key: bool = True
    """Default of ``require_key=None``."""
    models: tuple[str, ...] = ()
    adjust: Callable[[Recorded, Ctx], Ctx] | None = None
    check: Callable[[Recorded, Ctx], Reply | None] | None = None
    not_found: Callable[[Recorded], tuple[int, Any]] | None = None
    info: Callable[[str, list[str]], tuple[int, Any]] | None = None
    """Answers for non-chat routes: ``info(route, models) -> (status, body)``."""
    extra: dict[str, Any] = field(default_factory=dict)


EXTRA_FLAVORS: dict[str, FlavorSpec] = {}
"""Registered flavors by name."""


def register_flavor(spec: FlavorSpec) -> FlavorSpec:
    """Make ``FakeUpstream(spec.name)`` serve ``spec``."""
    EXTRA_FLAVORS[spec.name] = spec
    return spec

"""What a plugin keeps from one configuration to the next in this process (reloads).

A reload (``POST /admin/reload``, SIGHUP: :mod:`clasp_gateway.shell.reload`) builds a
new app beside the running one, and each plugin's ``startup`` hook builds its objects
again. For most objects that is right (they follow the new file), but some must not
start from nothing: an in-process cache would come back empty, and Prometheus counters
back at zero (a counter that goes backwards reads as a reset to ``rate()``).

:class:`Handover` is the gateway's answer, one per process, handed from each
configuration's :class:`~clasp_gateway.pipeline.Gateway` to the next
(``gateway.handover``). A plugin asks for such an object with :meth:`Handover.adopt`,
giving a *fingerprint*: the settings that shape the object. While the fingerprint is
equal (``==``) to the one it was built with, every configuration gets the same object;
when it differs, a new one is built and replaces it (the replaced one is handed to
``replaced``, e.g. to drop a cache's entries at once). At shutdown the plugin calls
:meth:`Handover.release`, which says whether the caller was the object's last user,
so the object is closed once, by the last configuration that used it.

A reload that fails to start is undone whole: :class:`~clasp_gateway.shell.reload.ServingApp`
calls :meth:`Handover.begin` before the new configuration starts, then
:meth:`Handover.commit` once it serves (only then are replaced objects handed to
``replaced``) or :meth:`Handover.rollback` (the running configuration's objects are
kept again, untouched).

A gateway not served by ``clasp serve`` (tests, two apps in one process) has its own
handover: nothing is shared between apps that were not reloaded from one another.
Everything runs on the event loop (start-up and shutdown hooks): no lock is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Handover"]

T = TypeVar("T")


@dataclass(slots=True)
class _Kept:
    fingerprint: Any
    value: Any
    users: int


class Handover:
    """Objects kept across reloads by name (see the module docstring)."""

    def __init__(self) -> None:
        self._kept: dict[str, _Kept] = {}
        self._saved: dict[str, _Kept] | None = None
        self._replaced: list[tuple[Callable[[Any], None], Any]] = []

    def adopt(self, name: str, fingerprint: Any, build: Callable[[], T], *,
              replaced: Callable[[T], None] | None = None) -> T:
        """The object kept under ``name`` when it was built with an equal ``fingerprint``;
        otherwise ``build()``, kept from now on (and ``replaced(old)`` called on the one
        it replaces, which its previous users still hold until they release it).

        ``name``: the plugin's own, e.g. ``clasp_cache.memory``. Each call must be paired
        with one :meth:`release` (in the plugin's ``shutdown``)."""
        kept = self._kept.get(name)
        if kept is not None and kept.fingerprint == fingerprint:
            kept.users += 1
            return kept.value  # type: ignore[no-any-return]
        value = build()
        self._kept[name] = _Kept(fingerprint, value, 1)
        if kept is not None and replaced is not None:
            if self._saved is not None:
                self._replaced.append((replaced, kept.value))  # once the new configuration serves
            else:
                replaced(kept.value)
        return value

    def release(self, name: str, value: object) -> bool:
        """One user of ``value`` (adopted under ``name``) is done with it. True when it
        was the last (or ``value`` was replaced since): the caller closes it."""
        kept = self._kept.get(name)
        if kept is None or kept.value is not value:
            return True
        kept.users -= 1
        if kept.users > 0:
            return False
        del self._kept[name]
        return True

    def begin(self) -> None:
        """A configuration starts beside the running one: remember what is kept now."""
        self._saved = {name: _Kept(k.fingerprint, k.value, k.users) for name, k in self._kept.items()}
        self._replaced = []

    def commit(self) -> None:
        """The new configuration serves: hand the objects it replaced to ``replaced``."""
        replaced, self._replaced, self._saved = self._replaced, [], None
        for callback, value in replaced:
            callback(value)

    def rollback(self) -> None:
        """The new configuration failed to start: keep what the running one uses, as it was."""
        if self._saved is not None:
            self._kept = self._saved
        self._saved, self._replaced = None, []

    def __contains__(self, name: str) -> bool:
        return name in self._kept

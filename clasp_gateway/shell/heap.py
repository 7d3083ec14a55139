"""The garbage collector of a serving process (``clasp serve``, each worker).

CPython's cyclic collector runs a young collection every 700 net allocations of
container objects. A streamed request keeps several hundred alive while it is served
(its context, translator, chunks), so with the default threshold nearly every request
paid one young collection (~70 µs on the benchmark's 200-chunk stream), and what
those collections found alive was promoted until a full collection walked the whole
heap: every module, the configuration and the plugins' objects, again and again
(~100 µs per request with claude and fallback, more with the team plugins, whose
heap is twice the size). Both costs grow with the number of plugins loaded, not with
what a request does.

So once the app has started, :func:`settle_heap` collects once, freezes what is left
(``gc.freeze``: the start-up heap is never walked again; it is still freed by
reference counting, and only a cycle among those objects would stay) and raises the
young threshold to :data:`YOUNG_THRESHOLD`, above what one request keeps alive, so
collections find real garbage instead of requests in flight. Memory stays bounded:
cycles are still collected, a few thousand allocations later.

A reload (``shell/reload.py``) retires a whole generation of objects that were
frozen at start-up: :func:`thaw_and_settle` makes them collectable again once it has
shut down.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 7000
"""Net container allocations between two young collections while serving (CPython's
default: 700). Measured on the 200-chunk stream: young collections went from ~0.9 to
~0.004 per request; the older generations' thresholds are left as they are."""


def settle_heap() -> None:
    """After start-up (the plugins loaded, the gateway started): one full collection,
    the survivors frozen, the young threshold raised (module docstring)."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    if 0 < young < YOUNG_THRESHOLD:  # 0: collection is disabled; leave it so
        gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def thaw_and_settle() -> None:
    """After a replaced configuration shut down: make the frozen start-up heap (the
    old generation's objects among it) collectable, then settle again."""
    gc.unfreeze()
    settle_heap()

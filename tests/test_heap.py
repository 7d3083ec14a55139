"""The serving process's garbage collector settings (``clasp_gateway.shell.heap``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from clasp_gateway.shell.heap import YOUNG_THRESHOLD, settle_heap, thaw_and_settle


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """The test process's collector as it was, whatever the test did to it."""
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_settling_freezes_the_start_up_heap_and_raises_only_the_young_threshold(restored_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    settle_heap()
    assert gc.get_freeze_count() > 0  # the start-up heap is no longer walked by collections
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1  # cycles made after start-up are still collected


def test_a_retired_configuration_is_thawed_then_settled_again(restored_gc: None) -> None:
    settle_heap()
    retired: list[object] = []
    retired.append(retired)  # made before the next settle: frozen with it
    thaw_and_settle()
    before = gc.get_freeze_count()
    del retired  # garbage now: the next thaw lets a collection find it
    gc.unfreeze()
    assert gc.collect() >= 1
    assert before > 0


def test_a_disabled_threshold_is_left_alone(restored_gc: None) -> None:
    gc.set_threshold(0, 10, 10)
    settle_heap()
    assert gc.get_threshold() == (0, 10, 10)

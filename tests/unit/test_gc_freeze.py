"""The start-up heap is frozen out of the collector's way, and later garbage is still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from streamscore.gc_freeze import freeze_startup_heap, thaw_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    thaw_heap()


@pytest.mark.usefixtures("unfrozen")
def test_objects_alive_at_start_up_are_skipped_by_later_collections() -> None:
    survivor = _Node()
    frozen = freeze_startup_heap()
    assert frozen > 0
    tracked = gc.get_objects()
    assert not any(o is survivor for o in tracked), "a start-up object is still walked"


@pytest.mark.usefixtures("unfrozen")
def test_cycles_made_after_the_freeze_are_still_collected() -> None:
    freeze_startup_heap()
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None


def test_thawed_objects_are_collected_again() -> None:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    freeze_startup_heap()
    del a, b
    gc.collect()
    assert gone() is not None, "a frozen cycle is kept while frozen"
    thaw_heap()
    gc.collect()
    assert gone() is None

"""Keeps the cyclic garbage collector out of the scoring loop's latency.

By the time the loop starts, the interpreter holds ~120k GC-tracked objects that live for
the whole run: the modules of river, pydantic, kafka-python and their dependencies. Every
full collection walks all of them, 70-80 ms on the 2-core benchmark machine, and at 5k
events/s one lands every few seconds, in the middle of a batch: those pauses were the
p99 latency (``python -m bench latency``'s anatomy shows them per batch). Frozen, they are
skipped by every later collection; objects created afterwards are collected as usual.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect once, then exempt every surviving object from future collections.

    Call after start-up (imports, clients, restored models) and before the loop, and
    ``thaw_heap`` after it. Frozen objects that become cyclic garbage are not reclaimed
    until thawed, so this is done once per run, not periodically. Returns how many objects
    were frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def thaw_heap() -> None:
    """Hand frozen objects back to the collector once the loop is over.

    A process that runs the scorer more than once (tests, a notebook calling ``replay``)
    would otherwise keep every earlier run's pipeline that ended up in a reference cycle.
    """
    gc.unfreeze()
